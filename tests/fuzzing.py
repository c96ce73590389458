"""The guard's invariants on hostile input, and the inputs that attack them.

Shared by the short fuzz run in `make test` (`tests/test_fuzz.py`), the long one in
`make fuzz` (Hypothesis, and atheris in `tests/fuzz_atheris.py` when installed), and the
replay of saved regression cases in `tests/hostile/`.

A fuzz case is what the live job sees: the raw bytes of one event, plus the raw bytes of
consent records already read from `privacy.consent` for the event's account. `check_case`
runs them through the job's own path (state tables → snapshot → `decode_json` → `decide`)
and asserts the invariants:

- `decide` never raises, gives one decision per partner in rule order, the same twice (P5, P7);
- a block has reasons and no record; a forward has a record of only the rule's fields;
- every forward passes the leak scan again, holds none of the planted forbidden tokens,
  and none of the event's raw identifiers (P1, P6);
- every forward respects the opt-outs an independent reading of the raw JSON finds —
  every value of a duplicated key counts (P3, P4); limit-ad-tracking never sends an ad id,
  nor does an ad id that is zero in any spelling; a stored ad-cookie denial stops every
  event whose platform, however spelled, is not an app's;
- planted values stay found when disguised the ways a reader does not see (invisible
  characters, look-alike letters, another script's full stops, fullwidth, percent-encoding):
  forwards are checked against an independent reader's reading of them; no forward carries
  an unkeyed digest (hex or base64) of the person's ids, nor a pseudonym of an event id
  that names the person (P10);
- in `make fuzz`, each record is decided within `PARTNER_GUARD_FUZZ_MAX_MS` of CPU time.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import string
import time
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import orjson
import regex
from confusable_homoglyphs import confusables
from hypothesis import strategies as st

from streams.core.codec import decode_json
from streams.core.decide import decide
from streams.core.models import Decision, Event
from streams.core.rules.ruleset import Ruleset
from streams.gen.signals import encode_gpp, encode_tc_string, encode_usnat
from streams.runtime.state.tables import ConsentTable, SignupStatusTable, snapshot_for
from tests.hostile import FORBIDDEN_TOKENS, base_event, forbidden_scalar

HOSTILE_DIR = Path(__file__).resolve().parent / "hostile"
ACCOUNT = "acct-000123"
CONSENT_KEY = f"account:{ACCOUNT}".encode()
GRANTED = orjson.dumps(
    {
        "subject": f"account:{ACCOUNT}",
        "interest_based_ads": "granted",
        "ad_cookies": "granted",
        "do_not_sell_or_share": False,
        "matched_identifier_opt_out": False,
        "jurisdiction": "US",
    }
)
SIGNUP = orjson.dumps({"account_id": ACCOUNT, "status": "prospect"})
RAW_IDENTIFIERS = (ACCOUNT, f"{ACCOUNT}-p1", f"dev-{ACCOUNT}")
PERSON_DIGESTS = frozenset(
    hashlib.new(algorithm, text.encode()).hexdigest()
    for algorithm in ("sha256", "sha1", "md5")
    for text in ("person@example.com", "+16505551212", "16505551212")
)
AD_ID = "6D92078A-8246-4BA4-AE5B-76104861E7DC"
# Unkeyed digests of the person's ids, hex and base64, as letters and digits only (lower case).
ID_DIGESTS = frozenset(
    form
    for algorithm in ("sha256", "sha1", "md5")
    for text in (*RAW_IDENTIFIERS, AD_ID, AD_ID.lower())
    for digest in [hashlib.new(algorithm, text.encode()).digest()]
    for form in (digest.hex(), "".join(filter(str.isalnum, base64.b64encode(digest).decode().lower())))
)
APP_PLATFORMS = ("ios", "android", "tv")
PERMISSIVE_RULE = """\
partner: permissive
jurisdictions: [US, CA]
consent: {interest_based_ads: required, ad_cookies_on_web: not_required}
events:
""" + "".join(
    f"""\
  {event_type}:
    fields:
      event_id: {{from: event_id, transform: pseudonym}}
      campaign_id: {{from: properties.campaign_id, pattern: '(?s).{{0,1000}}'}}
      install_source: {{from: properties.install_source, pattern: '(?s).{{0,1000}}'}}
      step: {{from: properties.step, pattern: '(?s).{{0,1000}}'}}
      plan: {{from: properties.plan, pattern: '(?s).{{0,1000}}'}}
      platform: {{from: device.platform, pattern: '(?s).{{0,1000}}'}}
      country: {{from: context.country, pattern: '(?s).{{0,1000}}'}}
      region: {{from: context.region, pattern: '(?s).{{0,1000}}'}}
"""
    for event_type in ("app_install", "app_open", "signup_started", "site_visit")
)
_B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


@dataclass(frozen=True, slots=True)
class FuzzCase:
    """One input as the job sees it: event bytes, and stored consent records for its account."""

    event: bytes
    consent: tuple[bytes, ...] = ()

    def dumps(self) -> bytes:
        """The saved form: JSON with the bytes as latin-1 text (lossless, readable for ASCII)."""
        return orjson.dumps(
            {
                "event": self.event.decode("latin-1"),
                "consent": [c.decode("latin-1") for c in self.consent],
            },
            option=orjson.OPT_INDENT_2,
        )

    @classmethod
    def loads(cls, data: bytes) -> FuzzCase:
        """Read a saved case."""
        obj = orjson.loads(data)
        return cls(obj["event"].encode("latin-1"), tuple(c.encode("latin-1") for c in obj["consent"]))

    def save(self, directory: Path = HOSTILE_DIR, prefix: str = "fuzz") -> Path:
        """Save as a regression case named by its content."""
        data = self.dumps()
        path = directory / f"{prefix}-{hashlib.sha256(data).hexdigest()[:16]}.json"
        directory.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data + b"\n")
        return path


# --- the invariants ----------------------------------------------------------------------


class _Pairs(list[tuple[str, Any]]):
    """A JSON object as all its (key, value) pairs: duplicate keys kept."""


def _all_values(node: Any, path: tuple[str, ...]) -> Iterator[Any]:
    """Every value at `path`, through every duplicate of every key on the way."""
    if not path:
        yield node
        return
    if isinstance(node, _Pairs):
        for key, value in node:
            if key == path[0]:
                yield from _all_values(value, path[1:])


def _independent_reading(raw: bytes) -> _Pairs | None:
    """The raw JSON read by another parser, keeping every duplicate; None when it cannot."""
    try:
        parsed = json.loads(raw, object_pairs_hook=_Pairs)
    except (ValueError, RecursionError, UnicodeDecodeError):
        return None
    return parsed if isinstance(parsed, _Pairs) else None


def _readable(text: str) -> str:
    out = text.lower()
    for _ in range(4):
        out = unquote(out)
    return out.replace("-", " ").replace("_", " ")


# An independent reader (the oracle; not `streams.core.reading`): NFKC, no invisible
# characters or marks, WHATWG full stops as `.`, every script's digits as ASCII, letters the
# Unicode confusables data says look like an ASCII letter read as that letter.
_UNSEEN = regex.compile(r"[\p{Default_Ignorable_Code_Point}\p{Cf}\p{M}]")
_WHATWG_DOTS = str.maketrans({"\u3002": ".", "\uff0e": ".", "\uff61": "."})


@cache
def ascii_look_alikes() -> dict[str, list[str]]:
    """ASCII letter -> letters of other scripts the Unicode confusables data says look like it
    (letters only: a digit is read as a digit; and only those NFKC leaves alone or makes
    that same letter)."""
    out: dict[str, list[str]] = {}
    for letter in string.ascii_letters:
        for entry in confusables.confusables_data.get(letter, []):
            char = str(entry["c"]).replace("\u200e", "")
            if len(char) != 1 or char.isascii() or not unicodedata.category(char).startswith("L"):
                continue
            folded = unicodedata.normalize("NFKC", char)
            if folded == char or folded.lower() == letter.lower():
                out.setdefault(letter, []).append(char)
    return out


@cache
def _as_ascii() -> dict[int, str]:
    return {ord(c): letter.lower() for letter, chars in ascii_look_alikes().items() for c in chars}


def reader_text(text: str) -> str:
    """What a reader takes a text for (lower case), read independently of the guard's code."""
    out = unicodedata.normalize("NFD", unicodedata.normalize("NFKC", unquote(unquote(text))))
    out = _UNSEEN.sub("", out.translate(_WHATWG_DOTS)).translate(_as_ascii())
    out = "".join(str(unicodedata.decimal(c)) if c.isdecimal() else c for c in out)
    return _readable(out)


def _compact(text: str) -> str:
    return "".join(filter(str.isalnum, text.lower()))


def _names_the_person(event_id: Any) -> bool:
    """An event id equal to, or holding, one of the person's ids (any spelling)."""
    compact = _compact(str(event_id))
    return any(_compact(raw) in compact for raw in (*RAW_IDENTIFIERS, AD_ID))


def _zero(ad_id: Any) -> bool:
    """An ad id that is zero, in any spelling (hyphens, braces, URN prefix, case, width)."""
    if not isinstance(ad_id, str):
        return False
    text = unicodedata.normalize("NFKC", ad_id).lower().removeprefix("urn:uuid:")
    digits = "".join(c for c in text if c in "0123456789abcdef")
    return len(digits) == 32 and set(digits) == {"0"} and len(text.strip(" {}-0")) == 0


def _platform(value: Any) -> str | None:
    """A platform as the standard compares it (case-, width- and white-space-insensitive)."""
    if not isinstance(value, str):
        return None
    return _UNSEEN.sub("", unicodedata.normalize("NFKC", value)).strip().casefold()


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from _strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)
    elif value is not None and not isinstance(value, bool):
        yield str(value)


def _opt_outs(reading: _Pairs) -> list[str]:
    """Signals in the raw event that must stop every forward (any duplicate counts)."""
    found = []
    if any(v is True for v in _all_values(reading, ("context", "consent", "gpc"))):
        found.append("gpc")
    if any(v is True for v in _all_values(reading, ("user", "kids_profile"))):
        found.append("kids_profile")
    if any(v == "minor" for v in _all_values(reading, ("user", "age_band"))):
        found.append("minor")
    if any(v == "denied" for v in _all_values(reading, ("context", "consent", "ad_cookies"))):
        found.append("ad_cookies")
    for usp in _all_values(reading, ("context", "consent", "us_privacy")):
        if isinstance(usp, str) and len(usp) == 4 and usp[0] == "1" and usp[2] == "Y":
            found.append("us_privacy")
    return found


def _check_forward(decision: Decision, ruleset: Ruleset, event: Event, reading: _Pairs | None) -> None:
    rule = ruleset.rule(decision.partner)
    record = decision.record
    assert record is not None and not decision.reasons, decision
    assert event.event_type in rule.events, decision
    assert set(record) <= {f.name for f in rule.events[event.event_type].fields}, decision
    for value in record.values():
        assert isinstance(value, str | int | float | bool), decision
    assert ruleset.leak_scanner.scan(record) == [], decision  # the scan agrees with itself
    hashing = {f.name for f in rule.events[event.event_type].fields if f.spec.transform.startswith("sha256")}
    for name, value in record.items():
        if name not in hashing:  # the person's hashed email or phone leaves only as that field
            assert str(value).lower() not in PERSON_DIGESTS, (decision.partner, name, value)
    for text in _strings(record):
        compact = "".join(filter(str.isalnum, text.lower()))
        for raw in RAW_IDENTIFIERS:  # ids in any spelling: `acct_000123`, `ACCT000123`
            assert "".join(filter(str.isalnum, raw)) not in compact, (decision.partner, text, raw)
        for digest in ID_DIGESTS:  # unkeyed digests of the person's ids: partners could join on them
            assert digest not in compact, (decision.partner, text, "digest of an id")
        if len(text) == 64 and all(c in "0123456789abcdef" for c in text):
            continue  # a hash or pseudonym: random hex holds digit runs like `7946` by chance
        readable, seen = _readable(text), reader_text(text)
        for token in FORBIDDEN_TOKENS:
            assert _readable(token) not in readable, (decision.partner, text, token)
            assert _readable(token) not in seen, (decision.partner, text, token, "as a reader sees it")
        for raw in RAW_IDENTIFIERS:
            assert raw not in text.lower(), (decision.partner, text, raw)
    if reading is not None:
        blocked_by = _opt_outs(reading)
        assert not blocked_by, (decision.partner, blocked_by, record)
        event_types = set(_all_values(reading, ("event_type",)))
        assert event_types <= set(rule.events), (decision.partner, event_types)  # no two answers
        ad_ids = list(_all_values(reading, ("device", "ad_id")))
        if any(v is True for v in _all_values(reading, ("device", "limit_ad_tracking"))) or any(
            _zero(v) for v in ad_ids
        ):
            assert all("ad" not in name.split("_") for name in record), decision
        if any(_names_the_person(v) for v in _all_values(reading, ("event_id",))):
            assert "event_id" not in record, (
                decision.partner,
                "a pseudonym of an event id naming the person",
            )


def _max_ms() -> float | None:
    value = os.environ.get("PARTNER_GUARD_FUZZ_MAX_MS")
    return float(value) if value else None


def check_case(case: FuzzCase, ruleset: Ruleset) -> list[Decision]:
    """Run one case through the job's path and assert every invariant; return the decisions."""
    consent, status = ConsentTable(), SignupStatusTable()
    consent.apply(CONSENT_KEY, GRANTED)
    for value in case.consent:
        consent.apply(CONSENT_KEY, value)
    status.apply(ACCOUNT.encode(), SIGNUP)
    started = time.process_time()  # CPU time: other processes on the machine do not count
    record = decode_json(case.event)
    snapshot = snapshot_for(record, consent, status, False)
    decisions = decide(record, snapshot, ruleset)
    elapsed_ms = (time.process_time() - started) * 1000
    assert [d.partner for d in decisions] == list(ruleset.partners)
    assert decide(record, snapshot, ruleset) == decisions  # P7
    reading = _independent_reading(case.event) if any(d.forwarded for d in decisions) else None
    denied_cookies = any(b'"ad_cookies":"denied"' in stored.replace(b" ", b"") for stored in case.consent)
    for decision in decisions:
        assert decision.verdict in ("forward", "block"), decision
        if decision.forwarded:
            assert isinstance(record, Event), decision
            _check_forward(decision, ruleset, record, reading)
            if denied_cookies and reading is not None:  # a stored denial: only app events may pass
                platforms = [_platform(v) for v in _all_values(reading, ("device", "platform"))]
                assert platforms and all(p in APP_PLATFORMS for p in platforms), (decision, platforms)
        else:
            assert decision.reasons and decision.record is None, decision
    limit = _max_ms()
    if limit is not None:  # only in `make fuzz`: the test suite has no timed assertions
        assert elapsed_ms <= limit, f"decided in {elapsed_ms:.0f} ms of CPU (bound {limit:.0f} ms)"
    return decisions


# --- the inputs --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Raw:
    """A JSON token written as is (`1e999`, `-0`, `NaN`, an unpaired surrogate escape)."""

    text: str


@dataclass(frozen=True, slots=True)
class Dup:
    """A JSON object written with all its pairs, duplicate keys included."""

    pairs: list[tuple[str, Any]] = field(default_factory=list)


def render(value: Any) -> bytes:
    """JSON text for `value`, which may hold `Raw` tokens and `Dup` objects."""
    out: list[str] = []
    _render(value, out)
    return "".join(out).encode("utf-8", "surrogatepass")


def _render(value: Any, out: list[str]) -> None:
    if isinstance(value, Raw):
        out.append(value.text)
    elif isinstance(value, Dup):
        out.append("{")
        for index, (key, item) in enumerate(value.pairs):
            out.append(("," if index else "") + json.dumps(key) + ":")
            _render(item, out)
        out.append("}")
    elif isinstance(value, dict):
        _render(Dup(list(value.items())), out)
    elif isinstance(value, list | tuple):
        out.append("[")
        for index, item in enumerate(value):
            out.append("," if index else "")
            _render(item, out)
        out.append("]")
    elif isinstance(value, float) and not math.isfinite(value):
        out.append("1e999" if value > 0 else "-1e999")
    else:
        out.append(json.dumps(value))  # escapes unpaired surrogates; ints of any size


def _consent_samples() -> list[str]:
    return [
        encode_tc_string([1, 7], [755]),
        encode_tc_string([1], [755]),
        encode_gpp({7: encode_usnat(2, 2, 2, gpc=False)}),
        encode_gpp({7: encode_usnat(1, 1, 1)}),
        encode_gpp({7: encode_usnat(2, 2, 2, known_child=(1, 1, 1))}),
        "1YNN",
        "1NNN",
        "1---",
    ]


CONSENT_SAMPLES = _consent_samples()
UNICODE_TRICKS = [
    "\u034f",  # combining grapheme joiner: a default-ignorable mark
    "\ufe0f",  # variation selector-16
    "\U000e0100",  # variation selector-17
    "\u3164",  # Hangul filler
    "\u3002",  # ideographic full stop
    "\u200b",  # zero-width space
    "\u202e",  # right-to-left override
    "\u00ad",  # soft hyphen
    "\ufeff",  # byte order mark
    "\u0301",  # combining acute accent
    "Ｓｔｒａｎｇｅｒ　Ｔｈｉｎｇｓ",  # fullwidth
    "Strаnger Things",  # Cyrillic a
    "٦٥٠٥٥٥١٢١٢",  # Arabic-Indic digits
    "\U0001f600",
    "\x00",
]
# the person's own identifiers respelled, and content shapes the first checks missed
PLANTED = [
    "StrangerThings4",
    "squid_game_2",
    "how-to-watch-free",
    "acct_000123",
    "ACCT000123",
    "devacct000123",
    "542d240129883c019e106e3b1b2d3f3cb3537c43c425364de8e951d5a3083345",  # SHA-256 of the email
    "2002:cb00:71c3::",
    "3405803971",
    "6505551212",
    "title-801001",
    # read as readers read them: another script's dots, invisible marks, look-alikes, separators
    "example\u3002com",
    "203\uff610\uff61113\uff61195",
    "Stran\u034fger Things",
    "80100\u034f172",
    "Str\u0430nger Thing\u0455",
    "650x555x1212",
    "650*555*1212",
    # unkeyed digests of the person's ids
    hashlib.sha256(ACCOUNT.encode()).hexdigest(),
    hashlib.md5(f"dev-{ACCOUNT}".encode()).hexdigest().upper(),
    base64.b64encode(hashlib.sha1(f"{ACCOUNT}-p1".encode()).digest()).decode(),
    f"uid_{hashlib.sha256(AD_ID.lower().encode()).hexdigest()[:40]}",
]
ZERO_AD_IDS = [
    "00000000000000000000000000000000",
    "{00000000-0000-0000-0000-000000000000}",
    "URN:UUID:00000000-0000-0000-0000-000000000000",
    "\uff10" * 32,
]
PLATFORM_SPELLINGS = ["WEB", "Web", " web ", "\uff57\uff45\uff42", "w\u200beb", "browser", "IOS", "Android"]
WHATWG_DOTS = ["\u3002", "\uff0e", "\uff61"]


@cache
def invisible_characters() -> list[str]:
    """Every Default_Ignorable_Code_Point below U+30000, and a few of the tag and variation
    selector planes."""
    ignorable = regex.compile(r"\p{Default_Ignorable_Code_Point}")
    chars = [chr(c) for c in range(0x30000) if ignorable.match(chr(c))]
    return chars + [chr(c) for c in (0xE0001, 0xE0020, 0xE007F, 0xE0100, 0xE01EF, 0xE0FFF)]


@st.composite
def _insert_invisible(draw: st.DrawFn, value: str) -> str:
    chars = list(value)
    for _ in range(draw(st.integers(1, 3))):
        chars.insert(draw(st.integers(0, len(chars))), draw(st.sampled_from(invisible_characters())))
    return "".join(chars)


@st.composite
def _swap_look_alikes(draw: st.DrawFn, value: str) -> str:
    chars = list(value)
    swappable = [i for i, c in enumerate(chars) if c in ascii_look_alikes()]
    for _ in range(min(len(swappable), draw(st.integers(1, 2)))):
        at = draw(st.sampled_from(swappable))
        chars[at] = draw(st.sampled_from(ascii_look_alikes()[value[at]]))
    return "".join(chars)


@st.composite
def _width_and_case(draw: st.DrawFn, value: str) -> str:
    out = []
    for char in value:  # the case of ASCII letters only: another script's capital is another letter
        if char.isascii() and char.isalpha() and draw(st.booleans()):
            char = char.swapcase()
        if "!" <= char <= "~" and draw(st.integers(0, 3)) == 0:
            char = chr(ord(char) + 0xFEE0)  # the fullwidth form
        out.append(char)
    return "".join(out)


@st.composite
def _other_dots(draw: st.DrawFn, value: str) -> str:
    return "".join(draw(st.sampled_from([".", *WHATWG_DOTS])) if c == "." else c for c in value)


@st.composite
def _percent_one(draw: st.DrawFn, value: str) -> str:
    if not value or "%" in value:
        return value
    at = draw(st.integers(0, len(value) - 1))
    return value[:at] + "".join(f"%{b:02X}" for b in value[at].encode("utf-8")) + value[at + 1 :]


_DISGUISES = {
    "invisible": _insert_invisible,
    "look-alike": _swap_look_alikes,
    "width and case": _width_and_case,
    "dots": _other_dots,
    "percent": _percent_one,
}


def reader_invisible(value: str) -> st.SearchStrategy[str]:
    """`value` with one to three changes a reader does not see, in turn: default-ignorable
    characters inserted, letters swapped for look-alikes from another script (Unicode
    confusables), fullwidth forms and case, dots as another script's full stops, a
    percent-encoded character."""

    @st.composite
    def disguised(draw: st.DrawFn) -> str:
        out = value
        kinds = draw(st.lists(st.sampled_from(sorted(_DISGUISES)), min_size=1, max_size=3))
        # percent-encoding last: a look-alike inside an escape (`%4Ꞙ` for `%4F`) is no escape
        for kind in sorted(kinds, key=lambda k: k == "percent"):
            out = draw(_DISGUISES[kind](out))
        return out

    return disguised()


disguised_scalar = forbidden_scalar.flatmap(reader_invisible)
huge_numbers = st.sampled_from(
    [
        10**20,
        -(10**30),
        2**63,
        2**64 + 1,
        10**400,
        1e308,
        -0.0,
        5e-324,
        float("inf"),
        Raw("1e999"),
        Raw("-0"),
        Raw("1E+400"),
        Raw("123456789012345678901234567890.5"),
        Raw("NaN"),
    ]
)
long_strings = st.sampled_from(
    [
        "@" + "a" * 20_000,
        "a" * 70_000,
        "1." * 5_000,
        "%25" * 3_000,
        "word-" * 3_000,
        "\u0666" * 5_000,
        "1:" * 5_000,
    ]
)


@st.composite
def mutated_consent_string(draw: st.DrawFn) -> str:
    """A valid TCF, GPP or US Privacy string with bits flipped, cut or extended."""
    text = draw(st.sampled_from(CONSENT_SAMPLES))
    for _ in range(draw(st.integers(0, 4))):
        index = draw(st.integers(0, len(text) - 1))
        char = text[index]
        if char in _B64URL:
            flipped = _B64URL[_B64URL.index(char) ^ (1 << draw(st.integers(0, 5)))]
            text = text[:index] + flipped + text[index + 1 :]
    how = draw(st.sampled_from(["as is", "cut", "extend", "separators"]))
    if how == "cut":
        text = text[: draw(st.integers(0, len(text)))]
    elif how == "extend":
        text += draw(st.text(alphabet=_B64URL + "~.", max_size=40))
    elif how == "separators":
        text = text.replace("~", draw(st.sampled_from(["~~", "~.~", ".", ""])))
    return text


def nested(depth: int) -> Raw:
    """A list nested `depth` levels deep (as text: deeper than Python's recursion limit)."""
    return Raw("[" * depth + "]" * depth)


def _odd_value(draw: st.DrawFn) -> Any:
    return draw(
        st.one_of(
            huge_numbers,
            long_strings,
            st.sampled_from(UNICODE_TRICKS),
            st.sampled_from(["\ud800", "\udfff"]),  # unpaired surrogates (escaped in JSON)
            st.sampled_from([True, False, None, 0, 1, -1, "", [], {}, "true", "1", "null"]),
            st.sampled_from([nested(64), nested(2_000), nested(100_000), {"a": nested(500)}]),
            forbidden_scalar,
            st.text(max_size=30),
            mutated_consent_string(),
        )
    )


LEAF_PATHS = [
    ("event_id",),
    ("event_type",),
    ("event_time",),
    ("account_id",),
    ("profile_id",),
    ("device", "device_id"),
    ("device", "platform"),
    ("device", "ad_id"),
    ("device", "limit_ad_tracking"),
    ("context", "ip"),
    ("context", "country"),
    ("context", "region"),
    ("context", "consent", "gpc"),
    ("context", "consent", "ad_cookies"),
    ("context", "consent", "tcf"),
    ("context", "consent", "us_privacy"),
    ("context", "consent", "gpp"),
    ("user", "email"),
    ("user", "phone"),
    ("user", "kids_profile"),
    ("user", "age_band"),
    ("properties", "campaign_id"),
    ("properties", "install_source"),
    ("properties", "step"),
    ("properties", "plan"),
]
CONSENT_PATHS = [p for p in LEAF_PATHS if p[:2] == ("context", "consent")]
# one question, two answers: (the answer that must block, the permissive one)
TWO_ANSWERS = {
    ("context", "consent", "gpc"): (True, False),
    ("user", "kids_profile"): (True, False),
    ("user", "age_band"): ("minor", "adult"),
    ("device", "limit_ad_tracking"): (True, False),
    ("context", "consent", "us_privacy"): ("1YYN", "1YNN"),
}


def _set(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = {}
            node[part] = child
        node = child
    node[path[-1]] = value


def _with_duplicate(tree: dict[str, Any], path: tuple[str, ...], first: Any, second: Any) -> Any:
    """`tree` with the key at `path` written twice: `first`, then `second`."""
    if len(path) == 1:
        pairs = [(k, v) for k, v in tree.items() if k != path[0]]
        return Dup([*pairs, (path[0], first), (path[0], second)])
    child = tree.get(path[0])
    child = child if isinstance(child, dict) else {}
    return Dup(
        [(k, v) for k, v in tree.items() if k != path[0]]
        + [(path[0], _with_duplicate(child, path[1:], first, second))]
    )


# Classes of hostile input the guard does not defend yet: the short run in `make test`
# leaves them out (and saved cases named after them are expected to fail) until they are;
# `make fuzz` always includes everything. Empty: duplicate keys and out-of-range times
# (the first classes the fuzzer found) are defended now.
OPEN_CLASSES: frozenset[str] = frozenset()


@st.composite
def structured_case(draw: st.DrawFn, leave_out: frozenset[str] = frozenset()) -> FuzzCase:
    """A valid, forwardable event mutated the ways a hostile or sloppy producer would.

    `leave_out` names classes in `OPEN_CLASSES` not to generate.
    """
    leaf_paths = LEAF_PATHS
    if "time_out_of_range" in leave_out:
        leaf_paths = [p for p in LEAF_PATHS if p != ("event_time",)]
    event_type = draw(st.sampled_from(["app_install", "app_open", "signup_started", "site_visit", "search"]))
    platform = draw(st.sampled_from(["ios", "android", "web"]))
    tree = base_event(event_type, ACCOUNT, platform, "US")
    tree["context"]["consent"] = {"gpc": False}
    document: Any = tree
    for _ in range(draw(st.integers(0, 3))):
        how = draw(
            st.sampled_from(["swap", "swap", "plant", "plant", "respell", "consent", "unknown key", "drop"])
        )
        if how == "plant":  # forwardable fields carrying what must never leave, in any spelling
            name = draw(st.sampled_from(["campaign_id", "install_source", "step", "plan"]))
            planted = st.one_of(forbidden_scalar, st.sampled_from(PLANTED), disguised_scalar)
            _set(tree, ("properties", name), draw(planted))
        elif how == "respell":  # values the guard must read as the standard does
            path, values = draw(
                st.sampled_from(
                    [
                        (("device", "platform"), PLATFORM_SPELLINGS),
                        (("device", "ad_id"), ZERO_AD_IDS),
                        (
                            ("event_id",),
                            [ACCOUNT, ACCOUNT.upper(), f"ev-{ACCOUNT}-1", f"dev-{ACCOUNT}", AD_ID],
                        ),
                        (("context", "country"), ["UK", "XX", "us", "EL"]),
                    ]
                )
            )
            _set(tree, path, draw(st.sampled_from(values)))
        elif how == "swap":
            _set(tree, draw(st.sampled_from(leaf_paths)), _odd_value(draw))
        elif how == "consent":
            _set(tree, draw(st.sampled_from(CONSENT_PATHS)), draw(mutated_consent_string()))
        elif how == "unknown key":
            section = draw(st.sampled_from(["user", "device", "context", "properties"]))
            key = draw(st.sampled_from(["GPC", "sec_gpc", "age", "Kids_Profile", "x" * 300, "\u200bgpc"]))
            _set(tree, (section, key), _odd_value(draw))
        elif how == "drop":
            path = draw(st.sampled_from(LEAF_PATHS))
            parent: Any = tree
            for part in path[:-1]:
                parent = parent.get(part) if isinstance(parent, dict) else None
            if isinstance(parent, dict):
                parent.pop(path[-1], None)
    if "duplicate_keys" not in leave_out and draw(st.booleans()):  # two answers to one question
        path = draw(st.sampled_from(sorted(TWO_ANSWERS)))
        denying, permissive = TWO_ANSWERS[path]
        first, second = (denying, permissive) if draw(st.booleans()) else (permissive, denying)
        document = _with_duplicate(tree, path, first, second)
    consent: tuple[bytes, ...] = ()
    if draw(st.booleans()):
        stored = orjson.loads(GRANTED)
        stored[draw(st.sampled_from(sorted(stored)))] = _odd_value(draw)
        consent = (render(stored),)
    elif draw(st.integers(0, 3)) == 0:  # a stored ad-cookie denial: only app events may pass
        consent = (render(dict(orjson.loads(GRANTED), ad_cookies="denied")),)
    return FuzzCase(render(document), consent)


@st.composite
def byte_case(draw: st.DrawFn) -> FuzzCase:
    """Raw bytes: random, or a valid event's JSON with bytes flipped, inserted or cut."""
    if draw(st.booleans()):
        return FuzzCase(draw(st.binary(max_size=600)))
    data = bytearray(render(base_event("app_install", ACCOUNT, "ios", "US")))
    for _ in range(draw(st.integers(1, 6))):
        index = draw(st.integers(0, len(data) - 1))
        how = draw(st.sampled_from(["flip", "insert", "delete", "cut"]))
        if how == "flip":
            data[index] ^= 1 << draw(st.integers(0, 7))
        elif how == "insert":
            data[index:index] = draw(st.binary(min_size=1, max_size=8))
        elif how == "delete" and len(data) > 1:
            del data[index]
        elif how == "cut":
            del data[index:]
            if not data:
                break
    return FuzzCase(bytes(data))


fuzz_case = st.one_of(structured_case(), byte_case())
