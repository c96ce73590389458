"""The notice shell without a broker: forward markers, consent records, layers and aborts."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import orjson

from streams.core.codec import decode_json
from streams.core.decide import decide
from streams.core.models import Event, StateSnapshot
from streams.core.notices import Marker, NoticeState, decode_state, plans_of
from streams.core.rules.ruleset import Ruleset
from streams.runtime.pipeline.notices import ForwardTracker, OptoutNotifier
from streams.runtime.state.tables import ConsentTable, ForwardedTable, SignupStatusTable, snapshot_for

NOW_S = 1_800_000_000.0
LOOKBACK = timedelta(days=396)


def _clock() -> float:
    return NOW_S


def _consent(account: str, at_ms: int, **choices: object) -> bytes:
    value = {"subject": f"account:{account}", "updated_at": at_ms, "interest_based_ads": "granted"}
    return orjson.dumps(value | choices)


class Sent:
    """A sink that keeps what was sent."""

    def __init__(self) -> None:
        self.records: list[tuple[str, bytes | None, bytes]] = []

    def __call__(self, topic: str, value: bytes | None, key: bytes) -> None:
        self.records.append((topic, value, key))

    def notices(self) -> list[dict[str, object]]:
        return [orjson.loads(v or b"") for t, v, _ in self.records if t.endswith(".optouts")]


def _forward(ruleset: Ruleset, table: ForwardedTable) -> tuple[list[tuple[bytes, bytes]], dict[str, object]]:
    """Decide an app install that install-attribution receives; its marker writes and record."""
    consent, status = ConsentTable(clock=_clock), SignupStatusTable(clock=_clock)
    consent.apply(b"account:a-1", _consent("a-1", int(NOW_S * 1000) - 10_000, jurisdiction="US"))
    event = decode_json(
        orjson.dumps(
            {
                "event_id": "e-1",
                "event_type": "app_install",
                "event_time": "2026-11-28T10:00:00Z",
                "account_id": "a-1",
                "device": {
                    "platform": "ios",
                    "ad_id": "6d92078a-8246-4ba4-ae5b-76104861e7dc",
                    "device_id": "d-1",
                },
                "context": {"country": "US"},
            }
        )
    )
    assert isinstance(event, Event)
    snapshot: StateSnapshot = snapshot_for(event, consent, status, False)
    decision = decide(event, snapshot, ruleset)[0]
    assert decision.forwarded and decision.record is not None, decision
    tracker = ForwardTracker(plans_of(ruleset), table, "guard.forwarded", LOOKBACK, _clock)
    return tracker.markers(event, decision), decision.record


def test_a_forward_marks_every_subject_and_a_revoke_notifies_in_the_received_identifiers(
    ruleset: Ruleset,
) -> None:
    table = ForwardedTable()
    writes, record = _forward(ruleset, table)
    assert [k for k, _ in writes] == [
        b"f|install-attribution|account:a-1",
        b"f|install-attribution|device:d-1",
    ]
    table.open_layer()
    for key, value in writes:
        table.stage(key, value)
    notifier = OptoutNotifier(plans_of(ruleset), ruleset.digest, table, "guard.forwarded", LOOKBACK, _clock)
    sent, counted = Sent(), Counter[tuple[str, str]]()
    revoke = _consent("a-1", int(NOW_S * 1000), do_not_sell_or_share=True)
    notifier.on_record(b"account:a-1", revoke, None, counted, sent)
    assert [n["identifiers"] for n in sent.notices()] == [{"ad_id": [record["ad_id"]]}]
    assert counted == {("install-attribution", "opt_out"): 1}
    again = Sent()
    notifier.on_record(b"account:a-1", revoke, None, counted, again)  # the same record: nothing
    assert again.records == []


def test_an_aborted_batch_forgets_its_notice_state_so_the_replay_notifies_again(ruleset: Ruleset) -> None:
    table = ForwardedTable()
    writes, _ = _forward(ruleset, table)
    for key, value in writes:
        table.stage(key, value)  # committed earlier: straight into the table
    notifier = OptoutNotifier(plans_of(ruleset), ruleset.digest, table, "guard.forwarded", LOOKBACK, _clock)
    revoke = _consent("a-1", int(NOW_S * 1000), interest_based_ads="denied")
    layer = table.open_layer()
    first = Sent()
    notifier.on_record(b"account:a-1", revoke, None, Counter(), first)
    assert len(first.notices()) == 1 and table.notice_state("account:a-1") is not None
    table.drop_layers()  # the transaction aborted: the record is read again
    assert table.notice_state("account:a-1") is None
    replay = Sent()
    table.open_layer()
    notifier.on_record(b"account:a-1", revoke, None, Counter(), replay)
    assert replay.notices() == first.notices()  # the same notice, same id
    table.fold(table._layers[-1])  # committed this time
    assert layer not in table._layers
    assert table.notice_state("account:a-1") == NoticeState(
        int(NOW_S * 1000), frozenset({"interest_based_ads_denied"})
    )


def test_hostile_consent_records_never_raise(ruleset: Ruleset) -> None:
    table = ForwardedTable()
    for key, value in _forward(ruleset, table)[0]:
        table.stage(key, value)
    notifier = OptoutNotifier(plans_of(ruleset), ruleset.digest, table, "guard.forwarded", LOOKBACK, _clock)
    hostile: list[tuple[bytes | None, bytes | None, int | None]] = [
        (b"account:a-1", None, 10**18),  # a tombstone stamped far in the future
        (b"account:a-1", None, -5),
        (b"account:a-1", b"{not json", None),
        (b"account:a-1", b'{"subject": "account:a-1", "subject": "account:a-2"}', None),
        (b"account:a-1", b'{"subject": "account:zz", "request": "deletion"}', None),
        (b"\xff\xfe", b"{}", None),
        (None, None, None),
        (b"account:" + b"x" * 5000, None, None),
    ]
    for hostile_key, hostile_value, stamp in hostile:
        notifier.on_record(hostile_key, hostile_value, stamp, Counter(), Sent())


def test_an_unreadable_record_fails_closed_and_a_deletion_request_deletes(ruleset: Ruleset) -> None:
    table = ForwardedTable()
    for key, value in _forward(ruleset, table)[0]:
        table.stage(key, value)
    notifier = OptoutNotifier(plans_of(ruleset), ruleset.digest, table, "guard.forwarded", LOOKBACK, _clock)
    garbled = Sent()
    notifier.on_record(b"account:a-1", b"[1, 2", int(NOW_S * 1000), Counter(), garbled)
    assert [n["kind"] for n in garbled.notices()] == ["opt_out"]  # read as every opt-out
    deletion = Sent()
    request = orjson.dumps({"subject": "account:a-1", "request": "deletion", "updated_at": int(NOW_S * 1000)})
    notifier.on_record(b"account:a-1", request, None, Counter(), deletion)
    assert [n["kind"] for n in deletion.notices()] == ["deletion"]
    assert table.marker("install-attribution", "account:a-1") is None
    assert table.marker("install-attribution", "device:d-1") is not None  # another subject: kept


def test_the_forwarded_table_reads_records_in_any_order() -> None:
    table = ForwardedTable()
    newer = NoticeState(20, frozenset({"do_not_sell_or_share"})).encode()
    older = NoticeState(10, frozenset()).encode()
    table.apply(b"n|account:a", newer)
    table.apply(b"n|account:a", older)  # read back late: ignored
    raw = table._store[b"n|account:a"]
    assert decode_state(raw).seen_ms == 20
    one = Marker(5, {"em": "sha256_email"}, {"em": "person"}, {"em": ("x",)})
    two = Marker(9, {"em": "sha256_email"}, {"em": "person"}, {"em": ("y",)})
    table.apply(b"f|p|account:a", two.encode())
    table.apply(b"f|p|account:a", one.encode())
    merged = table.marker("p", "account:a")
    assert merged is not None and merged.at_ms == 9 and set(merged.values["em"]) == {"x", "y"}
    table.apply(b"f|p|account:a", None)
    assert table.marker("p", "account:a") is None
    table.apply(b"p|privacy.consent|0", b'{"next_offset": 3}')
    table.apply(b"zz", b"{}")
    table.apply(b"f|p|account:b", b"garbage")
    assert table.invalid_records == 2 and len(table) == 1
