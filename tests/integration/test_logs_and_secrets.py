"""Logs and secrets: the guard runs with real partner keys from files, encrypted blocked
payloads and a revocation mid-stream; no log line, metric or output header may carry a value
from an input payload or any key material."""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import orjson
import pytest

from streams.broker.embedded import EmbeddedBroker
from streams.gen.traffic import KeyedRecord
from streams.runtime.formats.payload import Keyring, PayloadProtector
from streams.runtime.formats.records import partner_views
from tests.integration.kafka_helpers import KEY_ENV, PARTNERS, read_topic
from tests.integration.reliability import TIMEOUT_S, Scenario, consent_record, guard_env, installs

pytestmark = pytest.mark.integration
# Event fields whose values are a small public vocabulary (they may well appear in a metric).
VOCABULARY_FIELDS = {
    "event_type",
    "platform",
    "country",
    "region",
    "age_band",
    "ad_cookies",
    "interest_based_ads",
    "jurisdiction",
    "status",
}


def _payload_values(value: Any, field: str = "") -> Iterator[str]:
    """Every distinctive value in an input payload, at any depth."""
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from _payload_values(inner, key)
    elif isinstance(value, list):
        for inner in value:
            yield from _payload_values(inner, field)
    elif isinstance(value, str) and len(value) >= 6 and field not in VOCABULARY_FIELDS:
        yield value
    elif isinstance(value, int) and not isinstance(value, bool) and value >= 10**9:
        yield str(value)


def _needles(records: list[KeyedRecord]) -> set[str]:
    found: set[str] = set()
    for record in records:
        try:
            found.update(_payload_values(orjson.loads(record.value or b"")))
        except orjson.JSONDecodeError:
            found.add((record.value or b"").decode("utf-8", "replace")[:40])
        found.add((record.key or b"").decode("utf-8", "replace"))
    return {n for n in found if len(n) >= 6}


@pytest.mark.timeout(TIMEOUT_S)
def test_no_payload_value_or_key_in_logs_metrics_or_headers(broker: EmbeddedBroker, tmp_path: Path) -> None:
    bootstrap = broker.bootstrap
    scenario = Scenario.seed(bootstrap, tmp_path, "secrets", 300, 61)
    grant = consent_record("secret-revoked", "granted", "2026-11-01T00:00:00Z")
    revoke = consent_record("secret-revoked", "denied", "2026-11-02T00:00:00Z")
    scenario.produce("privacy.consent", [grant])

    keys_dir = tmp_path / "keys"
    keys_dir.mkdir()
    partner_keys = {p: secrets.token_hex(32).encode() for p in PARTNERS}
    for partner, key in partner_keys.items():
        (keys_dir / f"{partner}.key").write_bytes(key + b"\n")
    aes_key = secrets.token_bytes(32)
    payload_keys = tmp_path / "payload.keys"
    payload_keys.write_text(f"k1:{base64.b64encode(aes_key).decode()}\n")
    env = guard_env(
        PARTNER_GUARD_KEYS_DIR=str(keys_dir),
        PARTNER_GUARD_BLOCKED_PAYLOAD="encrypted",
        PARTNER_GUARD_PAYLOAD_KEYS_FILE=str(payload_keys),
        **dict.fromkeys(KEY_ENV, ""),  # the keys come from the files, not the test constants
    )
    before = [*scenario.generate(3000), *installs("secret-revoked", 10, "secret-before")]
    after = [*installs("secret-revoked", 10, "secret-after"), *scenario.generate(1000)]
    events = scenario.events
    guard = scenario.start(env, transactional_id="secrets-0")
    try:
        guard.wait_ready()
        scenario.send(before)
        scenario.wait_all_committed(guards=[guard])
        scenario.produce("privacy.consent", [revoke])
        scenario.send(after)
        scenario.wait_all_committed(guards=[guard])
        metrics = guard.metrics()
    finally:
        assert guard.stop() == 0
    log = guard.log_path.read_text(errors="replace")
    assert "state loaded" in log and "stopped" in log  # the whole log, start to finish

    topics = [*(f"partner.{p}.events" for p in PARTNERS), "guard.blocked"]
    with ThreadPoolExecutor(len(topics)) as pool:  # the reads overlap
        read_back = dict(zip(topics, pool.map(lambda t: read_topic(bootstrap, t), topics), strict=True))
    outputs = [h for records in read_back.values() for _, _, h in records]
    header_text = {
        f"{name}={value.decode('utf-8', 'replace')}" for headers in outputs for name, value in headers
    }
    log_lines = {line.split('"level"', 1)[-1] for line in log.splitlines()}  # without the timestamps
    haystacks = {"log": "\n".join(log_lines), "metrics": metrics, "headers": "\n".join(sorted(header_text))}
    needles = _needles([*events, grant, revoke])
    key_material = {
        *(k.decode() for k in partner_keys.values()),
        *(base64.b64encode(k).decode() for k in partner_keys.values()),
        base64.b64encode(aes_key).decode(),
        aes_key.hex(),
    }
    print(
        f"\nscanned {len(needles)} payload values and {len(key_material)} key forms in "
        f"{len(log.splitlines())} log lines, {len(metrics.splitlines())} metric lines, "
        f"{len(outputs)} outputs' headers"
    )
    for where, text in haystacks.items():
        found = sorted(n for n in needles if n in text)
        assert found == [], (where, found[:5])
        assert not [k for k in key_material if k in text], where

    protector = PayloadProtector("encrypted", Keyring.parse(payload_keys.read_text()))
    after_ids = {protector.identifier(f"secret-after-{i}") for i in range(10)}  # hashed in this mode
    blocked_values = [orjson.loads(value or b"") for _, value, _ in read_back["guard.blocked"]]
    views = [view for value in blocked_values for view in partner_views(value)]
    revoked = [b for b in views if b["partner"] == "install-attribution" and b["event_id"] in after_ids]
    assert len(revoked) == 10, len(revoked)
    assert all("consent_interest_based_ads_denied" in b["reasons"] for b in revoked), revoked[0]["reasons"]
    before_revocation, after_revocation = events[: -len(after)], events[-len(after) :]
    allowed = scenario.seeded.allowed(before_revocation, [grant])
    for partner, ids in scenario.seeded.allowed(after_revocation, [grant, revoke]).items():
        allowed[partner] |= ids
    scenario.conclude(
        "logs and secrets",
        allowed,
        "real keys from files, encrypted blocked payloads, a revocation mid-stream",
        keys=partner_keys,
        blocked_id=protector.identifier,
    )
