"""Apply every promise mutant (tests/mutants/catalogue.py) to a copy of the tree in turn and run
the tests that name its promise there; a mutant they do not kill fails the run, by name.

    python -m tests.mutants.run [--list] [--only ID ...] [--no-baseline] [--keep]

Each test selection is first run on the unmutated copy (the baseline; `--no-baseline` skips
it): a selection that fails there would "kill" anything. A run counts as killed only when
pytest exits 1 (tests failed); 0 is a survivor; any other exit (no tests collected, a usage
error such as `streams` imported from outside the copy, an internal error) is an error.
Exit status: 0 when every armed mutant was killed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from tests.mutants.catalogue import MUTANTS, Mutant
from tests.mutants.plugin import FILE_ENV, ROOT_ENV, TEXT_ENV

ROOT = Path(__file__).resolve().parents[2]
# Not copied: environments, caches, build output, and mutmut's working copy (top level only).
_IGNORED_ANYWHERE = shutil.ignore_patterns(
    ".git",
    ".venv*",
    "__pycache__",
    ".mypy_cache",
    ".pytest_cache",
    ".ruff_cache",
    ".hypothesis",
    "*.egg-info",
    "build",
    "dist",
    "test-artifacts",
    "soak-results",
)


def _ignored(directory: str, names: list[str]) -> set[str]:
    ignored = set(_IGNORED_ANYWHERE(directory, names))
    if Path(directory).resolve() == ROOT:
        ignored |= {"mutants"} & set(names)
    return ignored


PYTEST_KILLED = 1  # tests failed


def copy_tree(destination: Path) -> Path:
    """A copy of the working tree (sources, tests, rules, schemas) under `destination`."""
    tree = destination / "tree"
    shutil.copytree(ROOT, tree, ignore=_ignored)
    return tree


def target_text(tree: Path, mutant: Mutant) -> str:
    """The mutant's file in `tree`; raises when its target text is not there exactly once."""
    text = (tree / mutant.path).read_text()
    found = text.count(mutant.old)
    if found != 1:
        raise SystemExit(f"mutant {mutant.id}: its target text occurs {found} times in {mutant.path}")
    return text


def run_pytest(
    tree: Path, selection: Sequence[str], mutant: Mutant | None, root_override: Path | None = None
) -> tuple[int, str]:
    """pytest on `selection` in `tree`, importing only the copy; returns its exit code and the
    first failure's summary line ("" when none)."""
    env = {
        **os.environ,
        "PYTHONPATH": str(tree),
        "PYTHONDONTWRITEBYTECODE": "1",  # a restored file must never be read from a mutant's .pyc
        ROOT_ENV: str(root_override or tree),  # an override only in the runner's own test
    }
    env.pop(FILE_ENV, None)
    env.pop(TEXT_ENV, None)
    if mutant is not None:
        env[FILE_ENV], env[TEXT_ENV] = mutant.path, mutant.new
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-x",
        "-n",
        "0",
        "-p",
        "no:cacheprovider",
        "-p",
        "tests.mutants.plugin",
        "-o",
        "addopts=",
        *selection,
    ]
    done = subprocess.run(command, cwd=tree, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    output = done.stdout.decode(errors="replace")
    if done.returncode not in (0, PYTEST_KILLED):
        sys.stdout.write(output[-3000:])
    failure = next((line for line in output.splitlines() if line.startswith("FAILED ")), "")
    return done.returncode, failure[:300]


def try_mutant(tree: Path, mutant: Mutant, baseline: dict[tuple[str, ...], int] | None) -> str:
    """Apply, test, restore; returns killed, survived or an error description."""
    if baseline is not None and mutant.tests not in baseline:
        started = time.monotonic()
        baseline[mutant.tests], failure = run_pytest(tree, mutant.tests, None)
        if failure:
            print(f"  {failure}")
        print(f"  baseline {' '.join(mutant.tests)}: exit {baseline[mutant.tests]} ({_took(started)})")
    if baseline is not None and baseline[mutant.tests] != 0:
        return "error (its tests fail on the unmutated tree)"
    original = target_text(tree, mutant)
    path = tree / mutant.path
    path.write_text(original.replace(mutant.old, mutant.new, 1))
    try:
        code, failure = run_pytest(tree, mutant.tests, mutant)
    finally:
        path.write_text(original)
    if code == PYTEST_KILLED:
        return f"killed: {failure}"
    return "SURVIVED" if code == 0 else f"error (pytest exit {code})"


def _took(started: float) -> str:
    return f"{time.monotonic() - started:.0f} s"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the mutants; print one line each; 1 when any survived or could not be run."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--only", nargs="+", metavar="ID", help="run only these mutants")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unmutated runs")
    parser.add_argument("--keep", action="store_true", help="keep the copy of the tree")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTANTS if not args.only or m.id in args.only]
    unknown = set(args.only or ()) - {m.id for m in MUTANTS}
    if unknown:
        parser.error(f"unknown mutant(s): {sorted(unknown)}")
    if args.list:
        for mutant in chosen:
            state = "pending" if not mutant.armed() else " ".join(mutant.tests)
            print(f"{mutant.promise:12} {mutant.id:40} {state}")
        return 0
    workdir = Path(tempfile.mkdtemp(prefix="partner-guard-mutants-"))
    failed: list[str] = []
    try:
        tree = copy_tree(workdir)
        baseline: dict[tuple[str, ...], int] | None = None if args.no_baseline else {}
        for mutant in chosen:
            if not mutant.armed(tree):
                print(f"{mutant.promise:12} {mutant.id:40} pending: {mutant.pending}")
                continue
            started = time.monotonic()
            outcome = try_mutant(tree, mutant, baseline)
            print(f"{mutant.promise:12} {mutant.id:40} {outcome} ({_took(started)})", flush=True)
            if not outcome.startswith("killed"):
                failed.append(f"{mutant.id}: {outcome}")
    finally:
        if args.keep:
            print(f"copy kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    armed = sum(1 for m in chosen if m.armed())
    print(f"promise mutants: {armed - len(failed)} of {armed} killed")
    for line in failed:
        print(f"  not killed: {line}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
