"""Mutation testing of the decision core with mutmut, and its score per module.

    python -m tests.mutants.core [--children N] [--sample N] [--report-only] [--write-survivors]

Runs `mutmut run` (its configuration, `[tool.mutmut]` in pyproject.toml, scopes it to the
core's consent, signals, leak scan, transforms and decide modules, and to the unit and property
tests of tests/core/), then prints the mutation score of each module from mutmut's results
(`mutants/**/*.py.meta`). Killed and timed-out mutants count as caught; every other checked
one (survived, no test reached it, suspicious) counts as survived. `--sample N` checks only
N mutants of each module, spread evenly over it (every k-th by name), for a score in minutes
on a busy machine; the table says how many were checked. `triaged` is the score with the
equivalent survivors left out and those killed by tests added since counted as caught.

Every survivor must be triaged in tests/mutants/core_survivors.txt: `equivalent` (no test can
tell it from the original, with the reason), `open` (a gap a test should close), or `killed`
(a test added since kills it, checked by applying the mutant to a copy; the next run drops it). A survivor
not listed there fails the run, so a new gap in the core's tests is noticed; a listed mutant
that is now killed is reported, to be removed from the list. `--write-survivors` adds the
unlisted survivors as `open` (review each before committing it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "mutants"
TRIAGE = Path(__file__).with_name("core_survivors.txt")
CAUGHT = {1, 3, 24, -24, 36, 152, 255}  # killed, pytest internal error, timeouts (mutmut's codes)
VERDICTS = ("equivalent", "open", "killed")
# Run in this order (the decision first), so a run cut short has scored what matters most.
ORDER = (
    "streams.core.decide.*",
    "streams.core.consent.*",
    "streams.core.transforms.*",
    "streams.core.leakscan.*",
    "streams.core.signals.*",
)
GENERATE = "streams.core.signals.usprivacy.*"  # 16 mutants: a run that also generates all of them


@dataclass(frozen=True)
class Triage:
    """One listed survivor: its verdict and why."""

    verdict: str
    reason: str


def mutmut_bin() -> str:
    """The mutmut next to this interpreter (the mutation venv), else the one on PATH."""
    beside = Path(sys.executable).with_name("mutmut")
    return str(beside) if beside.exists() else (shutil.which("mutmut") or "mutmut")


def results() -> dict[str, dict[str, int | None]]:
    """Module -> {mutant name: mutmut exit code (None: not checked)}."""
    by_module: dict[str, dict[str, int | None]] = {}
    for meta in sorted(RESULTS.glob("streams/**/*.py.meta")):
        module = str(meta.relative_to(RESULTS)).removesuffix(".meta")
        by_module[module] = json.loads(meta.read_text())["exit_code_by_key"]
    return by_module


def read_triage() -> dict[str, Triage]:
    """The listed survivors: `name | verdict | reason` lines; `#` starts a comment."""
    listed: dict[str, Triage] = {}
    for number, line in enumerate(TRIAGE.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, verdict, reason = (part.strip() for part in [*line.split("|", 2), "", ""][:3])
        if verdict not in VERDICTS or not reason:
            raise SystemExit(f"{TRIAGE}:{number}: expected 'name | equivalent|open|killed | reason'")
        listed[name] = Triage(verdict, reason)
    return listed


def score_table(
    by_module: dict[str, dict[str, int | None]], triage: dict[str, Triage]
) -> tuple[list[str], list[str]]:
    """The printed table, and the names of every survivor.

    `score` is mutmut's (caught / judged); `triaged` counts the survivors a test added since
    kills as caught and leaves the equivalent ones out.
    """
    lines = [
        f"{'module':36} {'mutants':>8} {'caught':>7} {'survived':>9} {'not run':>8} {'score':>7} "
        f"{'triaged':>8}"
    ]
    survivors: list[str] = []
    total: Counter[str] = Counter()
    for module, codes in by_module.items():
        if not codes:
            continue
        counts: Counter[str] = Counter()
        for name, code in codes.items():
            kind = "not run" if code is None else "caught" if code in CAUGHT else "survived"
            counts[kind] += 1
            if kind == "survived":
                survivors.append(name)
                verdict = triage[name].verdict if name in triage else "untriaged"
                counts[verdict] += 1
        total.update(counts)
        lines.append(_row(module, counts))
    lines.append(_row("all", total))
    return lines, survivors


def _row(module: str, counts: Counter[str]) -> str:
    judged = counts["caught"] + counts["survived"]
    score = f"{100 * counts['caught'] / judged:.1f}%" if judged else "-"
    relevant = judged - counts["equivalent"]
    triaged = f"{100 * (counts['caught'] + counts['killed']) / relevant:.1f}%" if relevant else "-"
    return (
        f"{module:36} {sum(counts[k] for k in ('caught', 'survived', 'not run')):>8} {counts['caught']:>7} "
        f"{counts['survived']:>9} {counts['not run']:>8} {score:>7} {triaged:>8}"
    )


def describe(name: str) -> str:
    """The mutated line of a mutant, from `mutmut show` (first changed line only)."""
    shown = subprocess.run([mutmut_bin(), "show", name], cwd=ROOT, capture_output=True, text=True)
    changed = [
        line[1:].strip()
        for line in shown.stdout.splitlines()
        if line.startswith("+") and not line.startswith("+++")
    ]
    return changed[0][:120] if changed else "?"


def sampled(by_module: dict[str, dict[str, int | None]], per_module: int) -> list[str]:
    """`per_module` mutant names of each module, spread evenly over its sorted names."""
    chosen: list[str] = []
    for codes in by_module.values():
        names = sorted(codes)
        stride = max(1, -(-len(names) // per_module))
        chosen += names[::stride]
    return chosen


def run_mutmut(children: int, patterns: list[str]) -> bool:
    """`mutmut run` over `patterns` (mutant names or globs); False when it failed."""
    env = {**os.environ, "PARTNER_GUARD_MUTATION_RUN": "1"}  # tests/core/conftest.py
    for start in range(0, len(patterns), 200):  # a bounded command line
        command = [mutmut_bin(), "run", "--max-children", str(children), *patterns[start : start + 200]]
        if subprocess.run(command, cwd=ROOT, env=env).returncode != 0:
            print(f"mutmut run {' '.join(patterns[start : start + 3])} ... failed")
            return False
    return True


def main(argv: list[str] | None = None) -> int:
    """Run mutmut (unless --report-only), print the scores, check the survivors are triaged."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--children", type=int, default=int(os.environ.get("MUTMUT_CHILDREN", "1")))
    parser.add_argument("--sample", type=int, default=0, help="check only N mutants of each module")
    parser.add_argument("--report-only", action="store_true", help="read the last run's results")
    parser.add_argument("--write-survivors", action="store_true", help="list unlisted survivors as open")
    args = parser.parse_args(argv)
    if not args.report_only:
        if args.sample:  # the smallest module first: its run also generates every mutant
            if not run_mutmut(args.children, [GENERATE]):
                return 1
            if not run_mutmut(args.children, sampled(results(), args.sample)):
                return 1
        elif not all(run_mutmut(args.children, [pattern]) for pattern in ORDER):
            return 1
    by_module = results()
    if not by_module:
        print("no mutmut results (run without --report-only first)")
        return 1
    listed = read_triage()
    table, survivors = score_table(by_module, listed)
    print("\n".join(["mutation score of the core (mutmut; caught = killed or timed out):", *table]))
    unlisted = [name for name in survivors if name not in listed]
    now_killed = sorted(set(listed) - set(survivors))
    verdicts = Counter(listed[name].verdict for name in survivors if name in listed)
    print(
        f"survivors: {verdicts['equivalent']} equivalent, {verdicts['open']} open, "
        f"{verdicts['killed']} killed by tests added since, {len(unlisted)} untriaged"
    )
    for name in now_killed:
        print(f"  now killed (remove it from {TRIAGE.name}): {name}")
    if unlisted and args.write_survivors:
        with TRIAGE.open("a") as out:
            for name in unlisted:
                out.write(f"{name} | open | survived; mutated line: {describe(name)}\n")
        print(f"  {len(unlisted)} survivor(s) added to {TRIAGE.name} as open: review them")
        return 0
    for name in unlisted:
        print(f"  untriaged survivor: {name}  (mutmut show {name})")
    return 1 if unlisted else 0


if __name__ == "__main__":
    sys.exit(main())
