"""Republish picks the genuine copy of a blocked record, whatever order copies are read in."""

from __future__ import annotations

import base64
import hashlib
import itertools
from typing import Any

from streams.audit.replay import Outcome
from streams.audit.republish import RepublishResult, choose_originals

SOURCE = {"topic": "events.web", "partition": 1, "offset": 42}


def _blocked(original: bytes, source: dict[str, Any] = SOURCE) -> Outcome:
    blocked = {
        "partner": "install-attribution",
        "source": source,
        "payload_mode": "full",
        "original_b64": base64.b64encode(original).decode(),
        "original_sha256": hashlib.sha256(original).hexdigest(),
        "original_size": len(original),
    }
    return Outcome(blocked=blocked, status="match")


def test_a_forged_copy_read_first_does_not_hide_the_genuine_record() -> None:
    genuine_bytes = b'{"event_id":"e-1"}'
    genuine, copy = _blocked(genuine_bytes), _blocked(genuine_bytes)
    forged = _blocked(b'{"event_id":"planted-by-hand"}')  # self-consistent, other bytes
    elsewhere = _blocked(genuine_bytes, {**SOURCE, "offset": 10**9})  # nothing at that offset
    originals: dict[tuple[str, int, int], bytes | None] = {("events.web", 1, 42): genuine_bytes}
    for order in itertools.permutations([genuine, copy, forged, elsewhere]):
        result = RepublishResult()
        chosen = choose_originals(list(order), originals, None, result)
        assert [raw for _, raw in chosen] == [genuine_bytes]
        assert chosen[0][0] in (genuine, copy)
        assert (result.source_mismatch, result.duplicates) == (2, 1)
