"""Hostile input (P3, P5): no record crashes, costs unbounded memory, or says two things at once.

Each test names the class it closes; every one of them failed before the fix.
"""

from __future__ import annotations

import contextlib
import copy
import json
import subprocess
import sys
import tracemalloc
from collections.abc import Callable
from functools import partial
from typing import Any

import orjson
import pytest

from streams.audit.replay import verify_one
from streams.audit.rulesets import RulesetLibrary
from streams.core.codec import decode_json
from streams.core.models import Decision, Event, Malformed
from streams.core.rules.ruleset import Ruleset
from streams.core.signals.bits import SignalError
from streams.core.signals.gpp import decode_gpp, decode_usnat
from streams.core.signals.tcf import decode_tc_string
from streams.core.signals.usprivacy import us_privacy_opted_out
from streams.gen.signals import BitWriter, encode_gpp, encode_tc_string, encode_usnat
from streams.offline.cases import decide_case, decide_line, decision_json
from streams.runtime.formats.payload import PayloadProtector
from streams.runtime.formats.records import (
    CONTAINED_ERROR_DETAIL,
    SourceRef,
    Withheld,
    blocked_input,
    blocked_record,
    partner_views,
)
from streams.runtime.state.tables import ConsentTable, SignupStatusTable
from tests.conftest import RULES_DIR

ACCOUNT = "acct-000123"
GRANTED = {"subject": f"account:{ACCOUNT}", "interest_based_ads": "granted", "ad_cookies": "granted"}


def _case(event_changes: dict[str, Any] | None = None, consent: list[dict[str, Any]] | None = None) -> Any:
    event: dict[str, Any] = {
        "event_id": "ev-1",
        "event_type": "app_install",
        "event_time": "2026-11-28T10:42:17Z",
        "account_id": ACCOUNT,
        "device": {"device_id": "dev-1", "platform": "ios", "ad_id": "6D92078A-8246-4BA4-AE5B-76104861E7DC"},
        "context": {"country": "US"},
        "user": {"kids_profile": False, "age_band": "adult"},
        "properties": {"campaign_id": "spring", "install_source": "app_store"},
    }
    for path, value in (event_changes or {}).items():
        *parents, leaf = path.split(".")
        node = event
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return {"event": event, "consent": consent if consent is not None else [GRANTED]}


def _install(ruleset: Ruleset, case: Any) -> Any:
    """The install-attribution decision for one case (decided exactly as `decide` does)."""
    decisions = decide_case(case, b"{}", ruleset)  # the raw bytes matter only for malformed cases
    assert [d.partner for d in decisions] == list(ruleset.partners)
    return decisions[0]


def test_the_baseline_case_forwards(ruleset: Ruleset) -> None:
    assert _install(ruleset, _case()).forwarded


# -- 1. no record can stop the job -----------------------------------------------------------


@pytest.mark.parametrize(
    "event_time",
    [
        "0001-01-01T00:00:00+01:00",  # year 1 with a positive offset: before year 1 in UTC
        "9999-12-31T23:59:59-01:00",  # year 9999 with a negative offset: after year 9999 in UTC
        10**30,  # epoch milliseconds beyond any datetime
        -(10**20),
        True,  # a boolean where a time is expected (was read as 1970)
        "20261128T104217Z",  # ISO 8601 basic form: not RFC 3339, parsers disagree
        "2026-11-28T10:42:17",  # no offset
        "２０２６-11-28T10:42:17Z",  # digits that are not ASCII
    ],
)
def test_event_times_outside_the_datetime_range_are_malformed(ruleset: Ruleset, event_time: Any) -> None:
    for decision in decide_case(_case({"event_time": event_time}), b"{}", ruleset):
        assert decision.reasons == ("malformed",)


def test_the_decide_cli_path_survives_every_crash_class(ruleset: Ruleset) -> None:
    lines = [
        orjson.dumps(_case({"event_time": "0001-01-01T00:00:00+01:00"})),
        orjson.dumps(_case(consent=[{**GRANTED, "updated_at": "0001-01-01T00:00:00+01:00"}])),
        orjson.dumps(_case(consent=[{**GRANTED, "updated_at": 10**19}])),
        b'{"event": {"event_id": "e", "event_type": "app_open", "event_time": 1, "properties": {"n": '
        + b"9" * 40
        + b"}}}",
        b'{"event": ' + b"[" * 150 + b"]" * 150 + b"}",
        b'{"event": {}, "consent": 5}',
        b'{"event": {}, "consent": {"subject": "account:x"}}',
    ]
    for line in lines:
        decisions = decide_line(line, ruleset)
        assert len(decisions) == len(ruleset.partners)
        for decision in decisions:
            orjson.dumps(decision_json(decision, explain=True))  # the CLI can write every one


def test_a_number_too_large_for_the_partner_serializer_is_dropped_not_raised(ruleset: Ruleset) -> None:
    decision = _install(ruleset, _case({"properties.campaign_id": 2**70}))
    assert decision.forwarded and "campaign_id" not in (decision.record or {})
    assert "campaign_id: out_of_range" in decision.stripped
    orjson.dumps(decision.record)


def test_unreadable_state_records_are_counted_and_stored_fail_closed() -> None:
    table = ConsentTable()
    bad = [
        b'{"subject": "account:a", "updated_at": "0001-01-01T00:00:00+01:00", "ad_cookies": "granted"}',
        b'{"subject": "account:a", "updated_at": 100000000000000000000000000000, "ad_cookies": "granted"}',
        b'{"subject": "account:a", "updated_at": true, "interest_based_ads": "granted"}',
        b'{"subject": "account:a", "interest_based_ads": "granted", "interest_based_ads": "denied"}',
        b'{"subject": "account:a", "interest_based_ads": "granted", "jurisdiction": "\xff"}',
        b'{"subject": "account:a\\u200b", "interest_based_ads": "granted"}',
    ]
    for value in bad:
        table.apply(b"account:a", value)
        stored = table.get(b"account:a")
        assert stored is not None and stored.interest_based_ads == "denied" and stored.do_not_sell_or_share
    assert table.invalid_records == len(bad)
    statuses = SignupStatusTable()
    statuses.apply(b"a", b'{"account_id": "a", "status": "member"}')
    statuses.apply(b"a", b'{"account_id": "a", "status": "member", "updated_at": 1e400}')
    statuses.apply(b"a", b'{"account_id": "a", "status": "member", "status": "prospect"}')
    assert statuses.get("a") is None and statuses.invalid_records == 2  # unknown: blocks


def test_more_distinct_jurisdictions_than_the_table_can_intern_never_raise() -> None:
    table = ConsentTable()
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    for i in range(70_000):
        region = letters[i % 26] + letters[i // 26 % 26] + letters[i // 676 % 26]
        jurisdiction = f"U{letters[i // 17_576 % 26]}-{region}"
        table.apply(
            f"device:d{i}".encode(), orjson.dumps({"subject": f"device:d{i}", "jurisdiction": jurisdiction})
        )
    last = table.get(b"device:d69999")
    assert last is not None and last.interest_based_ads == "denied"  # past the limit: fail closed
    assert table.invalid_records > 0


def test_replay_never_raises_on_a_blocked_record_it_cannot_read(ruleset: Ruleset) -> None:
    library = RulesetLibrary([RULES_DIR])
    unreadable: list[dict[str, Any]] = [
        {"original_b64": "!!!", "ruleset_digest": ruleset.digest, "partner": "install-attribution"},
        {"original_b64": None, "payload_mode": "encrypted", "ciphertext_b64": 5, "key_id": []},
        {"snapshot": {"consent": "x"}, "original_b64": "e30="},
        {"original_b64": "e30=", "source": "not an object"},
        {"original_b64": "e30=", "snapshot": None, "reasons": 5, "ruleset_digest": ruleset.digest},
    ]
    for blocked in unreadable:
        assert verify_one(blocked, library, None).status in ("mismatch", "unverifiable", "invalid_record")


# -- 2. bounded cost per record --------------------------------------------------------------


def _gpp_header(entries: list[tuple[int, int | None]]) -> str:
    writer = BitWriter()
    writer.write(3, 6)
    writer.write(1, 6)
    writer.write(len(entries), 12)
    for offset, span in entries:
        writer.write(int(span is not None), 1)
        writer.write_fibonacci(offset)
        if span is not None:
            writer.write_fibonacci(span)
    return writer.render()


_SEXTET = {c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")}
VENDORS_OFFSET = 213  # where the vendor consent section starts in every TC string
RESTRICTIONS_OFFSET = VENDORS_OFFSET + 2 * (16 + 1 + 12)  # after two empty range-encoded sections


def _bits_of(text: str) -> list[int]:
    return [int(b) for c in text for b in format(_SEXTET[c], "06b")]


def _tc_prefix(offset: int) -> BitWriter:
    """A writer holding the first `offset` bits of a TC string granting purposes 1 and 7, no vendors."""
    writer = BitWriter()
    writer.bits = _bits_of(encode_tc_string({1, 7}, set()))[:offset]
    return writer


def _tc_with_restrictions(restrictions: list[tuple[int, int, list[tuple[int, int]]]]) -> str:
    """A TC string (no vendor consents) with the given (purpose, type, vendor ranges)."""
    writer = _tc_prefix(RESTRICTIONS_OFFSET)
    writer.write(len(restrictions), 12)
    for purpose, kind, ranges in restrictions:
        writer.write(purpose, 6)
        writer.write(kind, 2)
        writer.write(len(ranges), 12)
        for start, end in ranges:
            writer.write(1, 1)
            writer.write(start, 16)
            writer.write(end, 16)
    return writer.render()


def _announcing(writer: BitWriter, count: int, width: int, filler_bits: int) -> str:
    writer.write(count, width)
    writer.bits.extend([1] * filler_bits)
    return writer.render()


def _gpp_prefix() -> BitWriter:
    writer = BitWriter()
    writer.write(3, 6)
    writer.write(1, 6)
    return writer


def _peak_bytes(work: Callable[[], object]) -> int:
    tracemalloc.start()
    with contextlib.suppress(SignalError):
        work()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


WORST_STRINGS: dict[str, tuple[Callable[[str], object], str]] = {
    # a 24-character header announcing a range of 10^8 sections
    "gpp_range_1e8": (decode_gpp, _gpp_header([(1, 10**8)])),
    # 4095 entries announced, bits for one
    "gpp_entries_4095": (decode_gpp, _announcing(_gpp_prefix(), 4095, 12, 30)),
    # every entry a range as wide as the Fibonacci limit allows
    "gpp_wide_ranges": (decode_gpp, _gpp_header([(1, 2**40)] * 50)),
    # many restrictions, each vendor range spanning 1..65535 (the spec allows one per purpose and type)
    "tcf_restrictions_repeated": (
        decode_tc_string,
        _tc_with_restrictions([(7, 1, [(1, 65535)] * 60)] * 60),
    ),
    # 4095 restriction ranges announced in a short string
    "tcf_restriction_count": (decode_tc_string, _announcing(_tc_prefix(RESTRICTIONS_OFFSET), 4095, 12, 60)),
    # 4095 vendor ranges announced in a short string
    "tcf_vendor_range_count": (
        decode_tc_string,
        _announcing(_tc_prefix(VENDORS_OFFSET + 17), 4095, 12, 60),
    ),
    # a string far longer than any consent string
    "tcf_too_long": (decode_tc_string, "C" + "A" * 200_000),
    "gpp_many_sections": (decode_gpp, "DBABMA" + "~x" * 100_000),
    "usp_long": (us_privacy_opted_out, "1" + "Y" * 100_000),
    "usnat_many_subsections": (decode_usnat, encode_usnat() + ".Y" * 50_000),
    "tcf_many_segments": (decode_tc_string, encode_tc_string({1}, {1}) + ".I" * 50_000),
}


@pytest.mark.parametrize("name", sorted(WORST_STRINGS))
def test_worst_consent_strings_are_refused_within_a_memory_bound(ruleset: Ruleset, name: str) -> None:
    decoder, text = WORST_STRINGS[name]
    peak = _peak_bytes(lambda: decoder(text))
    assert peak < 2 * len(text) + 512 * 1024, f"{name}: {peak} bytes"
    with pytest.raises(SignalError):
        decoder(text)
    field = {decode_gpp: "gpp", decode_tc_string: "tcf", us_privacy_opted_out: "us_privacy"}.get(decoder)
    if field is None:  # usnat is reached through GPP
        field, text = "gpp", encode_gpp({7: text})
    decision = _install(ruleset, _case({f"context.consent.{field}": text}))
    assert not decision.forwarded and "consent_unparseable" in decision.reasons


def test_valid_but_maximal_tc_strings_decode_in_bounded_memory() -> None:
    widest = _tc_with_restrictions([(p, k, [(1, 65535)] * 100) for p in range(1, 25) for k in range(3)])
    writer = _tc_prefix(VENDORS_OFFSET)
    for _ in range(2):  # consent and LI: full 65,535-vendor bitfields
        writer.write(65535, 16)
        writer.write(0, 1)
        writer.bits.extend([1] * 65535)
    writer.write(0, 12)
    full_bitfields = writer.render()
    for text in (widest, full_bitfields):
        assert _peak_bytes(partial(decode_tc_string, text)) < 2 * len(text) + 512 * 1024
    tc = decode_tc_string(widest)
    assert len(tc.restrictions) == 72 and not tc.allows(65535, 7)
    assert 65535 in decode_tc_string(full_bitfields).vendor_consent


# -- 3. the most restrictive signal wins -----------------------------------------------------

GDPR_GRANT = encode_tc_string({1, 7}, {755})
GDPR_DENY = encode_tc_string(set(), set())


def test_a_tc_string_inside_gpp_that_denies_blocks_despite_a_granting_tcf(ruleset: Ruleset) -> None:
    granting = _case({"context.country": "DE", "context.consent.tcf": GDPR_GRANT})
    assert _install(ruleset, granting).forwarded
    both = copy.deepcopy(granting)
    both["event"]["context"]["consent"]["gpp"] = encode_gpp({2: GDPR_DENY})
    assert _install(ruleset, both).reasons == ("consent_tcf_denied",)
    reversed_roles = _case({"context.country": "DE", "context.consent.tcf": GDPR_DENY})
    reversed_roles["event"]["context"]["consent"]["gpp"] = encode_gpp({2: GDPR_GRANT})
    assert _install(ruleset, reversed_roles).reasons == ("consent_tcf_denied",)


def test_a_repeated_gpc_subsection_counts_if_any_says_yes(ruleset: Ruleset) -> None:
    section = encode_usnat(gpc=True) + "." + encode_usnat(gpc=False).split(".")[1]
    assert decode_usnat(section).gpc
    decision = _install(ruleset, _case({"context.consent.gpp": encode_gpp({7: section})}))
    assert decision.reasons == ("consent_gpc",)


def test_every_matching_stored_jurisdiction_counts(ruleset: Ruleset) -> None:
    device_in_germany = {"subject": "device:dev-1", "jurisdiction": "DE"}
    # the event says US; the device record says DE: the GDPR applies, so TCF is required
    install = _install(ruleset, _case(consent=[GRANTED, device_in_germany]))
    assert install.reasons == ("consent_missing",) and "consent_missing: tcf" in install.details
    with_tcf = _case({"context.consent.tcf": GDPR_GRANT}, consent=[GRANTED, device_in_germany])
    assert _install(ruleset, with_tcf).forwarded
    outside = _case(consent=[GRANTED, {"subject": "profile:p", "jurisdiction": "BR"}])
    outside["event"]["profile_id"] = "p"
    assert _install(ruleset, outside).reasons == ("jurisdiction_out_of_scope",)


def _usnat_with(field_index: int, value: int) -> str:
    writer = BitWriter()
    writer.write(2, 6)
    values = [1] * 6 + [2, 2, 2] + [0] * 16 + [0, 0, 0] + [0, 2, 0, 0]
    values[field_index] = value
    for v in values:
        writer.write(v, 2)
    return writer.render()


@pytest.mark.parametrize("field_index", [0, 6, 7, 8, 9, 25, 28, 30])
def test_usnat_values_outside_their_enumeration_are_unparseable(ruleset: Ruleset, field_index: int) -> None:
    decode_usnat(_usnat_with(field_index, 2))  # the same section with a defined value decodes
    with pytest.raises(SignalError):
        decode_usnat(_usnat_with(field_index, 3))
    decision = _install(ruleset, _case({"context.consent.gpp": encode_gpp({7: _usnat_with(field_index, 3)})}))
    assert decision.reasons == ("consent_unparseable",)


def test_usnat_undefined_values_and_subsections() -> None:
    with pytest.raises(SignalError):
        decode_usnat(_usnat_with(29, 0))  # MSPA covered transaction: 1 yes, 2 no, nothing else
    with pytest.raises(SignalError):
        decode_usnat(encode_usnat() + ".w")  # subsection type 3 is undefined


def test_tcf_undefined_restriction_types_and_purposes_are_unparseable(ruleset: Ruleset) -> None:
    assert decode_tc_string(_tc_with_restrictions([(7, 2, [(1, 10)])])).restrictions
    for bad in ([(7, 3, [(1, 10)])], [(0, 1, [(1, 10)])], [(25, 1, [(1, 10)])]):
        with pytest.raises(SignalError):
            decode_tc_string(_tc_with_restrictions(bad))
    with pytest.raises(SignalError):
        decode_tc_string(encode_tc_string({1}, {1}) + ".g")  # segment type 4 is undefined
    with pytest.raises(SignalError):
        decode_tc_string(encode_tc_string({1}, {1}) + ".I.I")  # DisclosedVendors twice
    decision = _install(
        ruleset,
        _case({"context.country": "DE", "context.consent.tcf": _tc_with_restrictions([(7, 3, [(1, 9)])])}),
    )
    assert decision.reasons == ("consent_unparseable",)


@pytest.mark.parametrize("offset", [108, 114, 201, 207])  # consent language, publisher country
def test_tcf_letters_outside_a_to_z_are_unparseable(offset: int) -> None:
    writer = BitWriter()
    writer.bits = _bits_of(encode_tc_string({1, 7}, {755}))
    writer.bits[offset : offset + 6] = [1, 1, 1, 1, 1, 1]  # 63: no letter
    with pytest.raises(SignalError):
        decode_tc_string(writer.render())
    writer.bits[offset : offset + 6] = [0, 1, 1, 0, 0, 1]  # 25: Z
    decode_tc_string(writer.render())


def test_restrictions_requiring_both_bases_need_both() -> None:
    core_bits = _tc_with_restrictions([(7, 1, [(755, 755)]), (7, 2, [(755, 755)])])
    tc = decode_tc_string(core_bits)
    assert not tc.allows(755, 7)  # no vendor consent and no vendor LI in this string
    assert {r.restriction_type for r in tc.restrictions} == {1, 2}


@pytest.mark.parametrize("text", ["1YXN", "1yyn", " 1YYN", "1YYN ", "2YNN", "1YY", "1ＹYN"])
def test_us_privacy_undefined_characters_are_unparseable(ruleset: Ruleset, text: str) -> None:
    with pytest.raises(SignalError):
        us_privacy_opted_out(text)
    assert _install(ruleset, _case({"context.consent.us_privacy": text})).reasons == ("consent_unparseable",)


# -- 4. strict input -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b'{"event_id": "e", "event_type": "app_open", "event_type": "search", "event_time": 1}',
        b'{"event_id": "e", "event_type": "app_open", "event_time": 1, "user": {"kids_profile": true, '
        b'"kids_profile": false}}',
        b'{"event_id": "e", "event_type": "app_open", "event_time": 1, "properties": {"a": {"b": 1, "b": 2}}}'
        b"",
    ],
)
def test_duplicate_keys_are_malformed(raw: bytes) -> None:
    decoded = decode_json(raw)
    assert isinstance(decoded, Malformed) and decoded.error == "duplicate key in a JSON object"


def test_a_duplicate_key_in_a_decide_line_is_malformed(ruleset: Ruleset) -> None:
    line = orjson.dumps(_case())[:-1] + b', "consent": []}'
    assert [d.reasons for d in decide_line(line, ruleset)] == [("malformed",)] * len(ruleset.partners)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("event_time", True),
        ("event_time", 1.5),
        ("device.limit_ad_tracking", 0),
        ("user.kids_profile", "false"),
        ("context.consent.gpc", 0),
        ("context.consent.gpc", "false"),
        ("account_id", 123),
    ],
)
def test_wrong_types_are_malformed(ruleset: Ruleset, path: str, value: Any) -> None:
    assert _install(ruleset, _case({path: value})).reasons == ("malformed",)


@pytest.mark.parametrize("key", ["user.age", "user.GPC", "context.consent.sec_gpc", "context.consent.GPC"])
def test_unknown_keys_in_signal_sections_block_naming_the_key(ruleset: Ruleset, key: str) -> None:
    decision = _install(ruleset, _case({key: True}))
    assert decision.reasons == ("unknown_signal",)
    assert decision.details == (f"unknown_signal: {key}",)


def test_unknown_keys_in_open_sections_are_reported_not_blocked(ruleset: Ruleset) -> None:
    case = _case({"device.os_version": "18", "context.ua_hints": {"a": 1}, "experiment": "b"})
    assert _install(ruleset, case).forwarded
    event = decode_json(orjson.dumps(case["event"]))
    assert isinstance(event, Event)
    assert sorted(event.undeclared_fields) == ["context.ua_hints", "device.os_version", "experiment"]
    weird = decode_json(orjson.dumps({**case["event"], "user": {"\u200bx" * 100: 1}}))
    assert isinstance(weird, Event)
    (reported,) = weird.unknown_signals
    assert reported.startswith("user.\\u200bx") and len(reported) == len("user.") + 64


@pytest.mark.parametrize("key", ["device.os_version", "context.ua_hints", "experiment"])
def test_an_undeclared_key_in_any_one_open_section_is_reported(ruleset: Ruleset, key: str) -> None:
    event = decode_json(orjson.dumps(_case({key: "x"})["event"]))
    assert isinstance(event, Event)
    assert event.undeclared_fields == (key,)


@pytest.mark.parametrize(
    "account_id",
    ["acct-000123\u200b", " acct-000123", "acct-000123\n", "acct\x00-000123", "аcct-000123", "a" * 129, ""],
)
def test_internal_ids_with_invisible_characters_or_out_of_bounds_are_malformed(
    ruleset: Ruleset, account_id: str
) -> None:
    # the account's stored denial must not be missed because of a character nobody sees
    consent = [
        {"subject": f"account:{ACCOUNT}", "interest_based_ads": "denied"},
        {"subject": "device:dev-1", "interest_based_ads": "granted"},
    ]
    case = _case({"account_id": account_id}, consent)
    assert _install(ruleset, case).reasons == ("malformed",)


@pytest.mark.parametrize("field", ["event_id", "profile_id", "device.device_id"])
def test_every_internal_id_is_checked(ruleset: Ruleset, field: str) -> None:
    assert _install(ruleset, _case({field: "x\u2060"})).reasons == ("malformed",)


def test_the_decide_command_writes_one_line_per_partner_for_every_crash_class() -> None:
    lines = [
        json.dumps(_case({"event_time": "0001-01-01T00:00:00+01:00"})),
        json.dumps(_case({"properties.campaign_id": 2**70})),
        json.dumps(_case(consent=[{**GRANTED, "updated_at": 10**30}])),
        '{"event": {"event_id": "e", "event_id": "f"}}',
        '{"event": ' + "[" * 5000 + "]" * 5000 + "}",
    ]
    result = subprocess.run(
        [sys.executable, "-m", "streams", "decide", "--rules", str(RULES_DIR), "--dev", "--explain"],
        input="\n".join(lines).encode(),
        capture_output=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    outputs = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert len(outputs) == 2 * len(lines)
    assert outputs[0]["reasons"] == ["malformed"] and outputs[6]["reasons"] == ["malformed"]


def test_replay_reports_a_block_the_job_contained_as_unverifiable(ruleset: Ruleset) -> None:
    raw = orjson.dumps(_case()["event"])
    source = SourceRef("internal.events", 0, 7, None, None, "json")
    decision = Decision(
        partner="install-attribution",
        rule_id="install-attribution-v1",
        ruleset_digest=ruleset.digest,
        event_id=None,
        verdict="block",
        reasons=("internal_error",),
        details=(f"{CONTAINED_ERROR_DETAIL}OutputTooLargeError",),
    )
    shared = blocked_input(source, raw, None, None, PayloadProtector("full"))
    _, value, _ = blocked_record([Withheld.of(decision)], shared, source, 900_000)
    outcome = verify_one(partner_views(orjson.loads(value))[0], RulesetLibrary([RULES_DIR]), None)
    assert outcome.status == "unverifiable"


class _RecordingSink:
    """Collects what the decider sends (no broker: this tests the per-record containment)."""

    def __init__(self) -> None:
        self.records: list[tuple[str, bytes | None]] = []

    def __call__(self, topic: str, value: bytes, key: bytes | None, headers: Any) -> None:
        self.records.append((topic, value))


def test_the_job_blocks_an_input_whose_outputs_raise_for_every_partner(
    ruleset: Ruleset, monkeypatch: pytest.MonkeyPatch
) -> None:
    from streams.runtime.config import Settings
    from streams.runtime.pipeline.decider import BatchTally
    from streams.runtime.pipeline.job import GuardJob

    job = GuardJob(Settings(bootstrap_servers="127.0.0.1:1"), ruleset)

    def explode(*args: Any) -> None:
        raise ZeroDivisionError

    monkeypatch.setattr(job.decider, "_build_outputs", explode)
    producer, tally = _RecordingSink(), BatchTally()
    source = SourceRef("internal.events", 0, 7, None, b"k", "json")
    job.decider.emit(orjson.dumps(_case()["event"]), source, False, tally, producer)
    assert [topic for topic, _ in producer.records] == ["guard.blocked"]  # one record lists every partner
    blocked = orjson.loads(producer.records[0][1] or b"")
    assert [d["partner"] for d in blocked["decisions"]] == list(ruleset.partners)
    for decision in blocked["decisions"]:
        assert decision["reasons"] == ["internal_error"]
        assert decision["details"] == [f"{CONTAINED_ERROR_DETAIL}ZeroDivisionError"]
    assert blocked["event_id"] and blocked["original_b64"]
    assert sum(tally.blocked.values()) == len(ruleset.partners)
