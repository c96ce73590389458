"""The most expensive conditions `rules check` allows, on a 1 MB event.

Usage: `python benchmarks/bench_condition_cost.py`. Each candidate uses the whole read
budget (`MAX_EVENT_READS`) with the costliest operations the subset has, on two events: one
carrying 1 MB in the fields read (the condition is refused unevaluated once its inputs pass
`MAX_VIEW_BYTES`, so this measures serializing and refusing), and one whose fields fill the
view just below that bound, shaped as the worst case for substring search (this measures
the most expensive evaluation possible). Prints milliseconds per call, memo bypassed.
"""

from __future__ import annotations

import contextlib
import time

from streams.core.models import Event
from streams.core.rules.celreach import MAX_EVENT_READS, MAX_LITERAL_LIST
from streams.core.rules.condition import MAX_VIEW_BYTES, Condition, ConditionError

HALF_MB = 512 * 1024
C = "event.properties.campaign_id"
S = "event.properties.step"
ITEMS = "[" + ",".join(f'"{i}"' for i in range(MAX_LITERAL_LIST)) + "]"
CANDIDATES = {
    "one read (baseline)": f"size({C}) > 0",
    f"{MAX_EVENT_READS} x size()": " && ".join([f"size({C}) > 0"] * MAX_EVENT_READS),
    f"{MAX_EVENT_READS // 2} x contains(long needle)": " || ".join(
        [f"{C}.contains({S})"] * (MAX_EVENT_READS // 2)
    ),
    f"{MAX_EVENT_READS // 2} x ==": " || ".join([f"{C} == {S}"] * (MAX_EVENT_READS // 2)),
    f"macro over {MAX_EVENT_READS} items": "["
    + ",".join(f'"{i}"' for i in range(MAX_EVENT_READS))
    + f"].all(x, !{C}.contains(x))",
    f"macro over {MAX_LITERAL_LIST} items, no event read": ITEMS + '.all(x, x != "q")',
}


def _best_ms(condition: Condition, event: Event, runs: int = 3) -> float:
    best = float("inf")
    for _ in range(runs):
        condition._cache.clear()
        start = time.perf_counter()
        with contextlib.suppress(ConditionError):  # inputs over the view bound: refused
            condition.holds(event, {}, "")
        best = min(best, time.perf_counter() - start)
    return best * 1000


def _event(size: int) -> Event:
    campaign, step = "a" * size, "a" * (size // 2) + "b"
    return Event.model_validate(
        {
            "event_id": "e",
            "event_type": "app_install",
            "event_time": 1,
            "properties": {"campaign_id": campaign, "step": step},
        }
    )


def main() -> None:
    events = {"1 MB": _event(HALF_MB), "at bound": _event(MAX_VIEW_BYTES // 2 - 200)}
    print(f"read budget {MAX_EVENT_READS}, view bound {MAX_VIEW_BYTES} bytes")
    print(f"{'condition':42s} {'chars':>5s} " + " ".join(f"{name:>12s}" for name in events))
    for name, expression in CANDIDATES.items():
        condition = Condition(expression)
        cells = " ".join(f"{_best_ms(condition, event):9.2f} ms" for event in events.values())
        print(f"{name:42s} {len(expression):5d} {cells}")


if __name__ == "__main__":
    main()
