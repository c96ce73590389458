"""Hypothesis: a protected value stays found whatever reader-invisible change is made to it.

Generate a protected value (a catalogue title, a title id, a URL, an IP address, the
person's phone number or account id), apply random transformations a reader does not see
(default-ignorable characters inserted, a letter swapped for a look-alike from another
script, a dot written as another script's full stop, fullwidth forms, case, a percent-
encoded character, the phone's separators changed), and assert the scan still finds it.

The changes are `make fuzz`'s (`tests.fuzzing.reader_invisible`): look-alikes from the
Unicode confusables data (`confusable_homoglyphs`), invisible characters from the Unicode
property `Default_Ignorable_Code_Point` (`regex`), the same sources the scan reads, but
drawn there independently of its folding code.
"""

from __future__ import annotations

import unicodedata
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streams.core.decide import sensitive_values
from streams.core.leakscan import LeakScanner
from streams.core.models import Event
from streams.core.rules.ruleset import Ruleset
from tests.fuzzing import reader_invisible

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


# Any characters but digits, also once NFKC-folded (`㍘` is `0点`: a reader sees a digit);
# lone surrogates never decode (JSON and Avro input refuse them).
separators = st.text(
    alphabet=st.characters(exclude_categories=["Nd", "No", "Nl", "Cs"], exclude_characters="0123456789"),
    min_size=0,
    max_size=3,
).filter(lambda text: not any(c.isdigit() for c in unicodedata.normalize("NFKC", text)))


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
