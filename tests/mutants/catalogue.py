"""The promise mutants: for every promise (docs/promises.md) and for failing closed, small
source edits that each take one mechanism out, and the tests that must then fail.

A mutant is an exact-text patch of one file: `old` must occur exactly once in it (a test in
`make test`, tests/test_mutants_catalogue.py, checks that every target still does, so a
refactor cannot silently disarm a mutant). `python -m tests.mutants.run` (`make mutants`)
applies each to a copy of the tree and runs its `tests` there; a mutant they do not kill
fails the run. A new promise comes with its mutants here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Every promise of docs/promises.md, and the fail-closed rule of "How hostile input is read".
FAIL_CLOSED = "fail-closed"
PROMISES = (*(f"P{n}" for n in range(1, 13)), FAIL_CLOSED)


@dataclass(frozen=True)
class Mutant:
    """One mechanism taken out: `old` replaced by `new` in `path`; `tests` (pytest arguments:
    files, node ids, `-k` expressions) must fail on the result."""

    id: str
    promise: str
    removes: str
    path: str
    old: str
    new: str
    tests: tuple[str, ...]
    # Why it may not be armable yet: its mechanism is being built elsewhere. It arms itself as
    # soon as its target text is in the tree (once, in `path`).
    pending: str | None = None

    def armed(self, root: Path = ROOT) -> bool:
        """True when the runner applies it: not pending, or its awaited target has landed."""
        if self.pending is None:
            return True
        target = root / self.path
        return target.is_file() and target.read_text().count(self.old) == 1


_PROMISES_PY = "tests/core/test_promises.py"
_FAIL_CLOSED_PY = "tests/core/test_fail_closed.py"
_DECIDE = "streams/core/decide.py"
_CONSENT = "streams/core/consent.py"

MUTANTS: tuple[Mutant, ...] = (
    # -- P1: nothing forbidden leaves ------------------------------------------------------
    Mutant(
        "p1-default-deny-projection",
        "P1",
        "default-deny projection: every unlisted property is copied into the partner record",
        "streams/core/transforms.py",
        '            out.leaks.append(f"{spec.name}: raw_value")\n    return out\n',
        '            out.leaks.append(f"{spec.name}: raw_value")\n'
        "    out.record.update({k: v for k, v in event.properties.items() if k not in out.record})\n"
        "    return out\n",
        (_PROMISES_PY, "tests/core/test_rules_loader.py", "tests/offline/test_rule_authoring.py"),
    ),
    Mutant(
        "p1-leak-scan-verdict",
        "P1",
        "the leak scan's verdict: findings no longer block the record",
        _DECIDE,
        "    if findings:\n"
        "        return _block(rule, ruleset, event.event_id, [Reason.LEAK_DETECTED], findings)",
        "    if findings and False:\n"
        "        return _block(rule, ruleset, event.event_id, [Reason.LEAK_DETECTED], findings)",
        (_PROMISES_PY, "tests/core/test_leakscan.py"),
    ),
    # -- P2: only allowed event types, never content ---------------------------------------
    Mutant(
        "p2-content-event-type-refusal",
        "P2",
        "`rules check` refusing a content event type",
        "streams/core/rules/loader.py",
        "        if event_type in CONTENT_EVENT_TYPES:\n",
        "        if event_type in CONTENT_EVENT_TYPES and False:\n",
        ("tests/core/test_rules_loader.py",),
    ),
    # -- P3: every opt-out honoured, any "no" blocks -----------------------------------------
    Mutant(
        "p3-strictest-grant-merge",
        "P3",
        "the strictest-signal merge of granted/denied answers: the first answer is taken",
        _CONSENT,
        '    seen = {v for v in values if v in ("granted", "denied")}\n'
        '    if "denied" in seen:\n'
        '        return "denied"\n'
        '    return "granted" if seen else None\n',
        '    seen = [v for v in values if v in ("granted", "denied")]\n'
        "    return seen[0] if seen else None\n",
        (_PROMISES_PY, "tests/core/test_hostile_input.py", "tests/core/test_signals.py"),
    ),
    Mutant(
        "p3-strictest-flag-merge",
        "P3",
        "the strictest merge of yes/no opt-outs (do-not-sell, matched identifiers): the first answer",
        _CONSENT,
        "    seen = [v for v in values if v is not None]\n    if any(seen):\n        return True\n",
        "    seen = [v for v in values if v is not None]\n    if seen:\n        return seen[0]\n",
        (_FAIL_CLOSED_PY, _PROMISES_PY, "tests/core/test_hostile_input.py"),
    ),
    Mutant(
        "p3-every-tc-string-must-grant",
        "P3",
        "every TC string must grant: only the first one is read",
        _DECIDE,
        "if not all(tc.allows(vendor, p) for tc in consent.tcf)]",
        "if not consent.tcf[0].allows(vendor, p)]",
        (_PROMISES_PY, "tests/core/test_hostile_input.py", "tests/core/test_signals.py"),
    ),
    Mutant(
        "p3-missing-consent-blocks",
        "P3",
        "missing consent where the rule requires it blocks (consent_missing)",
        _DECIDE,
        '    elif consent.interest_based_ads is None and need.interest_based_ads == "required":',
        '    elif consent.interest_based_ads is None and need.interest_based_ads == "required" and False:',
        (_PROMISES_PY, "tests/core/test_hostile_input.py", "tests/core/test_signals.py"),
    ),
    # -- P4: no kids, no minors ---------------------------------------------------------------
    Mutant(
        "p4-kids-profile",
        "P4",
        "the kids-profile check",
        _DECIDE,
        "    if user and user.kids_profile:\n",
        "    if user and user.kids_profile and False:\n",
        (_PROMISES_PY, "tests/core/test_hostile_input.py"),
    ),
    Mutant(
        "p4-minor",
        "P4",
        "the minor (age band) check",
        _DECIDE,
        '    if user and user.age_band == "minor":\n',
        '    if user and user.age_band == "minor" and False:\n',
        (_PROMISES_PY, "tests/core/test_hostile_input.py"),
    ),
    # -- P5: every input ends forwarded or blocked with reasons --------------------------------
    Mutant(
        "p5-contained-internal-error",
        "P5",
        "containing an exception while an input's outputs are built (internal_error for every partner)",
        "streams/runtime/pipeline/decider.py",
        "            outputs = self._contained_outputs(raw, source, event_id, exc)\n",
        "            raise\n",
        ("tests/core/test_hostile_input.py",),
    ),
    Mutant(
        "p5-withheld-reach-the-blocked-topic",
        "P5",
        "the blocked record of an input's withheld decisions (they would vanish silently)",
        "streams/runtime/pipeline/decider.py",
        "        if outputs.withheld:\n            self._add_blocked(",
        "        if outputs.withheld and False:\n            self._add_blocked(",
        ("tests/runtime/pipeline/test_decider_conservation.py", "tests/core/test_hostile_input.py"),
    ),
    # -- P6: raw identifiers never leave ---------------------------------------------------------
    Mutant(
        "p6-leak-scan-raw-value-compare",
        "P6",
        "the leak scan's compare with the event's own raw values",
        "streams/core/leakscan.py",
        "        if not compact:\n            return False\n        if compact in self.exact:",
        "        if compact or not compact:\n            return False\n        if compact in self.exact:",
        (_PROMISES_PY, "tests/core/test_leakscan.py"),
    ),
    Mutant(
        "p6-pseudonym-transform",
        "P6",
        "the keyed pseudonym: the raw identifier is projected instead",
        "streams/core/transforms.py",
        "        return pseudonym(key, spec.spec.source, value), None\n",
        "        return value, None\n",
        (_PROMISES_PY, "tests/core/test_identifiers.py"),
    ),
    # -- P7: deterministic decisions, replay verifies --------------------------------------------
    Mutant(
        "p7-clock-in-decision",
        "P7",
        "a decision that reads no clock: a block's details carry the time",
        _DECIDE,
        "        details=tuple(details),\n    )\n",
        '        details=(*details, str(__import__("time").perf_counter_ns())),\n    )\n',
        (_PROMISES_PY, "tests/core/test_core_purity.py"),
    ),
    Mutant(
        "p7-republish-verification",
        "P7",
        "republish sends only records whose recorded decision re-decides the same (match)",
        "streams/audit/republish.py",
        '    verified = [o for o in forwarded if o.status == "match"]\n',
        "    verified = list(forwarded)\n",
        ("tests/audit/test_republish_choice.py", "tests/integration/test_replay.py", "-k", "republish"),
    ),
    # -- P8: consume, decide, produce and commit offsets in one transaction ------------------------
    Mutant(
        "p8-offsets-in-transaction",
        "P8",
        "the input offsets sent inside the batch's transaction",
        "streams/runtime/pipeline/transaction.py",
        "            if offsets:  # Step 1\n",
        "            if offsets and False:  # Step 1\n",
        ("tests/runtime/pipeline/test_transaction.py",),
    ),
    # -- P9: read-your-revocation -------------------------------------------------------------------
    Mutant(
        "p9-catch-up-before-batch",
        "P9",
        "the state catch-up after each fetch, before the batch is decided (kafka engine)",
        "streams/runtime/pipeline/job.py",
        "        stale = self.state.catch_up_before_batch(self.clock())\n",
        "        stale = False\n",
        ("tests/integration/test_p9_under_load.py",),
    ),
    Mutant(
        "p9-catch-up-before-batch-faust",
        "P9",
        "the state catch-up after each fetch, before the batch is decided (Faust engine)",
        "streams/engines/faust_app.py",
        "            stale = await asyncio.to_thread(self.state.catch_up_before_batch, time.monotonic())\n",
        "            stale = False\n",
        ("tests/integration/test_faust.py::test_faust_read_your_revocation_100_times",),
    ),
    # -- P10: ad ids never tied to the account ------------------------------------------------------
    Mutant(
        "p10-linkage-refusal",
        "P10",
        "`rules check` refusing a rule that puts an ad id beside a person-derived field",
        "streams/core/rules/linkage.py",
        "        if ad_ids and person:\n",
        "        if ad_ids and person and False:\n",
        ("tests/core/test_p10_linkage.py",),
    ),
    # -- P11: non-interference ----------------------------------------------------------------------
    Mutant(
        "p11-condition-reach-check",
        "P11",
        "`rules check` refusing a condition that can read a protected or undeclared field",
        "streams/core/rules/loader.py",
        "    for message, fix in _condition_reach_problems(condition.reach, tags):\n",
        "    for message, fix in ():\n",
        ("tests/core/test_condition_reach.py", "tests/core/test_noninterference.py"),
    ),
    # -- P12: opt-out and deletion notices ------------------------------------------------------------
    Mutant(
        "p12-notice-recipient-filter",
        "P12",
        "a notice reaches only partners that received data about the person: one that received "
        "nothing is sent another partner's identifiers",
        "streams/core/notices.py",
        '        found = live.get(partner)\n        if found is None or "opt_out" not in plan.kinds:',
        "        found = live.get(partner) or next(iter(live.values()), None)\n"
        '        if found is None or "opt_out" not in plan.kinds:',
        ("tests/core/test_notice_recipients.py", "tests/core/test_notices.py"),
    ),
    # -- failing closed ---------------------------------------------------------------------------------
    Mutant(
        "fc-stale-state-blocks",
        FAIL_CLOSED,
        "a decision on stale state blocks (consent_stale)",
        _DECIDE,
        "    if snapshot.stale:\n        reasons.append(Reason.CONSENT_STALE)",
        "    if snapshot.stale and False:\n        reasons.append(Reason.CONSENT_STALE)",
        (_FAIL_CLOSED_PY, _PROMISES_PY),
    ),
    Mutant(
        "fc-stale-check",
        FAIL_CLOSED,
        "the stale check: state behind its bounds makes the batch consent_stale",
        "streams/runtime/pipeline/decider.py",
        "        stale = missing > settings.max_state_lag_records or (",
        "        stale = False and (",
        ("tests/integration/test_faults.py::test_state_lag_fails_closed",),
    ),
    Mutant(
        "fc-duplicate-key-refusal",
        FAIL_CLOSED,
        "strict JSON: a duplicate key makes the input malformed",
        "streams/core/codec.py",
        "catch_duplicate_keys=True",
        "catch_duplicate_keys=False",
        (_PROMISES_PY, "tests/core/test_hostile_input.py"),
    ),
    Mutant(
        "fc-unparseable-consent-blocks",
        FAIL_CLOSED,
        "an unparseable consent string blocks (consent_unparseable)",
        _DECIDE,
        "    if consent.unparseable:\n",
        "    if consent.unparseable and False:\n",
        (_PROMISES_PY, "tests/core/test_hostile_input.py", "tests/core/test_signals.py"),
    ),
    Mutant(
        "fc-decide-never-raises",
        FAIL_CLOSED,
        "decide blocks on an internal error instead of raising",
        _DECIDE,
        "    except Exception as exc:  # defense in depth: a bug must block, never forward or crash\n",
        "    except ZeroDivisionError as exc:"
        "  # defense in depth: a bug must block, never forward or crash\n",
        (_FAIL_CLOSED_PY, _PROMISES_PY),
    ),
)


def by_id(mutant_id: str) -> Mutant:
    """The mutant named `mutant_id`."""
    for mutant in MUTANTS:
        if mutant.id == mutant_id:
            return mutant
    raise KeyError(mutant_id)
