"""P12 in the core: an opt-out or deletion never reaches a partner that received nothing about
the person, even when that partner takes notices; the one that received something gets only
its own identifiers. Kills the promise mutant `p12-notice-recipient-filter`
(tests/mutants/catalogue.py), which the single-partner cases of test_notices.py let survive.
"""

from __future__ import annotations

from typing import Literal

import pytest

from streams.core.notices import ConsentChange, Marker, NoticePlan, decide_notices

DAY = 24 * 3600 * 1000
NOW = 1_800_000_000_000
KINDS = frozenset({"opt_out", "deletion"})
PLANS = {p: NoticePlan(p, f"partner.{p}.optouts", KINDS, {}) for p in ("received", "nothing", "later")}
MARKERS = {
    "received": Marker(NOW, {"external_id": "pseudonym"}, {"external_id": "person"}, {"external_id": ("pa",)})
}


@pytest.mark.parametrize("kind", ["update", "deletion"])
def test_only_the_partner_that_received_data_is_told(kind: Literal["update", "deletion"]) -> None:
    choices = frozenset({"do_not_sell_or_share"}) if kind == "update" else frozenset()
    change = ConsentChange("account:acct-1", kind, NOW, choices)
    out = decide_notices(change, None, MARKERS, PLANS, "sha256:test", NOW, 396 * DAY, DAY)
    assert [(n.partner, dict(n.identifiers)) for n in out.notices] == [("received", {"external_id": ("pa",)})]
