"""Hypothesis: a protected value stays found whatever reader-invisible change is made to it.

Generate a protected value (a catalogue title, a title id, a URL, an IP address, the
person's phone number or account id), apply random transformations a reader does not see
(default-ignorable characters inserted, a letter swapped for a look-alike from another
script, a dot written as another script's full stop, fullwidth forms, case, a percent-
encoded character, the phone's separators changed), and assert the scan still finds it.

The look-alikes come from the Unicode confusables data (`confusable_homoglyphs`), the
invisible characters from the Unicode property `Default_Ignorable_Code_Point` (`regex`):
the same sources the scan reads, but drawn here independently of its folding code.
"""

from __future__ import annotations

import string
import unicodedata
from functools import cache
from typing import Any

import regex
from confusable_homoglyphs import confusables
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.core.decide import sensitive_values
from streams.core.leakscan import LeakScanner
from streams.core.models import Event
from streams.core.rules.ruleset import Ruleset

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
PHONE_DIGITS = ("650", "555", "1212")
EVENT = Event.model_validate(
    {
        "event_id": "ev-fuzz-1",
        "event_type": "app_install",
        "event_time": 1,
        "account_id": "acct-000123",
        "device": {"device_id": "dev-9f3a21", "platform": "ios"},
        "user": {"phone": "(650) 555-1212", "email": "person@example.com"},
        "context": {"ip": "203.0.113.195", "country": "US"},
    }
)
WHATWG_DOTS = ["\u3002", "\uff0e", "\uff61"]


@cache
def invisible_characters() -> list[str]:
    """Every assigned Default_Ignorable_Code_Point outside the tag/unassigned planes' bulk,
    plus a sample of those (they are as invisible)."""
    ignorable = regex.compile(r"\p{Default_Ignorable_Code_Point}")
    chars = [chr(c) for c in range(0x30000) if ignorable.match(chr(c))]
    return chars + [chr(c) for c in (0xE0001, 0xE0020, 0xE007F, 0xE0100, 0xE01EF, 0xE0FFF)]


@cache
def look_alikes() -> dict[str, list[str]]:
    """ASCII letter -> letters of other scripts the Unicode confusables data says look like it.

    Left out: digits and marks (a digit is read as a digit), and compatibility characters
    whose NFKC form is another script's letter (NFKC is applied before the skeleton)."""
    out: dict[str, list[str]] = {}
    for letter in string.ascii_letters:
        for entry in confusables.confusables_data.get(letter, []):
            char = str(entry["c"]).replace("\u200e", "")
            if len(char) != 1 or char.isascii() or not unicodedata.category(char).startswith("L"):
                continue
            folded = unicodedata.normalize("NFKC", char)
            if folded != char and not folded.isascii():
                continue
            if folded.isascii() and folded.lower() != letter.lower():
                continue  # NFKC makes it another ASCII letter: what a reader sees is that one
            out.setdefault(letter, []).append(char)
    return out


@st.composite
def invisible_change(draw: st.DrawFn, value: str) -> str:
    """Insert 1-3 default-ignorable characters anywhere."""
    chars = list(value)
    for _ in range(draw(st.integers(1, 3))):
        at = draw(st.integers(0, len(chars)))
        chars.insert(at, draw(st.sampled_from(invisible_characters())))
    return "".join(chars)


@st.composite
def look_alike_change(draw: st.DrawFn, value: str) -> str:
    """Swap 1-2 ASCII letters for look-alikes from another script."""
    chars = list(value)
    swappable = [i for i, c in enumerate(chars) if c in look_alikes()]
    for _ in range(min(len(swappable), draw(st.integers(1, 2)))):
        at = draw(st.sampled_from(swappable))
        chars[at] = draw(st.sampled_from(look_alikes()[value[at]]))
    return "".join(chars)


@st.composite
def width_and_case_change(draw: st.DrawFn, value: str) -> str:
    """Change the case of some letters and write some characters fullwidth."""
    out = []
    for char in value:
        if char.isalpha() and draw(st.booleans()):
            char = char.swapcase()
        if "!" <= char <= "~" and draw(st.integers(0, 3)) == 0:
            char = chr(ord(char) + 0xFEE0)
        out.append(char)
    return "".join(out)


@st.composite
def dot_change(draw: st.DrawFn, value: str) -> str:
    """Write each dot as another script's full stop (what WHATWG URL parsing reads as `.`)."""
    return "".join(draw(st.sampled_from([".", *WHATWG_DOTS])) if c == "." else c for c in value)


@st.composite
def percent_change(draw: st.DrawFn, value: str) -> str:
    """Percent-encode one character (UTF-8), as a URL would carry it."""
    at = draw(st.integers(0, len(value) - 1))
    encoded = "".join(f"%{b:02X}" for b in value[at].encode("utf-8"))
    return value[:at] + encoded + value[at + 1 :]


def reader_invisible(value: str) -> st.SearchStrategy[str]:
    """One to three reader-invisible changes, applied in turn."""

    @st.composite
    def changed(draw: st.DrawFn) -> str:
        out = value
        kinds = draw(
            st.lists(
                st.sampled_from(["invisible", "look", "width", "dot", "percent"]), min_size=1, max_size=3
            )
        )
        for kind in kinds:
            if kind == "invisible":
                out = draw(invisible_change(out))
            elif kind == "look":
                out = draw(look_alike_change(out))
            elif kind == "width":
                out = draw(width_and_case_change(out))
            elif kind == "dot":
                out = draw(dot_change(out))
            elif "%" not in out:
                out = draw(percent_change(out))
        return out

    return changed()


def protected(ruleset: Ruleset) -> st.SearchStrategy[str]:
    titles = [t for t in ruleset.vocabulary.title_names if len(t) > 3]
    return st.sampled_from(
        [
            *titles,
            "title/80100172",
            "80100172",
            "tt1234567",
            "https://www.example.com/watch/80100172",
            "netflix.com",
            "www.example.org",
            "203.0.113.195",
            "198.51.100.17",
            "person@example.com",
            "acct-000123",
        ]
    )


def _raw(scanner: LeakScanner, ruleset: Ruleset) -> frozenset[str]:
    return sensitive_values(EVENT, ruleset.tags) | scanner.spellings(EVENT)


def test_a_protected_value_is_found_whatever_a_reader_does_not_see(ruleset: Ruleset) -> None:
    scanner = ruleset.leak_scanner
    raw = _raw(scanner, ruleset)

    @SETTINGS
    @given(st.data())
    def check(data: Any) -> None:
        value = data.draw(protected(ruleset))
        assert scanner.scan({"campaign_id": value}, raw), value  # found as it is
        changed = data.draw(reader_invisible(value))
        assert scanner.scan({"campaign_id": changed}, raw), (value, changed, [hex(ord(c)) for c in changed])

    check()


# Any characters but digits (lone surrogates never decode: JSON and Avro input refuse them).
separators = st.text(
    alphabet=st.characters(exclude_categories=["Nd", "No", "Nl", "Cs"], exclude_characters="0123456789"),
    min_size=0,
    max_size=3,
)


def test_the_persons_phone_is_found_whatever_separates_its_digits(ruleset: Ruleset) -> None:
    scanner = ruleset.leak_scanner
    raw = _raw(scanner, ruleset)

    @SETTINGS
    @given(separators, separators, separators, st.booleans())
    def check(before: str, first: str, second: str, country_code: bool) -> None:
        value = ("1" + before if country_code else before) + PHONE_DIGITS[0]
        value += first + PHONE_DIGITS[1] + second + PHONE_DIGITS[2]
        assert scanner.scan({"campaign_id": value}, raw), [hex(ord(c)) for c in value]

    check()
