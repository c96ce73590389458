"""Coverage-guided fuzzing with atheris (libFuzzer) over the invariants of `tests/fuzzing.py`.

Usage (what `make fuzz` runs when atheris is installed, `pip install -e '.[fuzz]'`):

    python tests/fuzz_atheris.py -max_total_time=60 [-workers=1] [CORPUS_DIR]

The input is the raw bytes of one event; when it holds a line break, the bytes after the
first one are a stored consent record for the event's account. The corpus starts from a
valid event and every saved case in `tests/hostile/` (but those of a class still open). A
failing input is saved there as a regression case before libFuzzer reports it.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import atheris

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

with atheris.instrument_imports(include=["streams"]):
    from streams.core.rules.loader import load_ruleset
    from tests.fuzzing import ACCOUNT, HOSTILE_DIR, OPEN_CLASSES, FuzzCase, check_case, render
    from tests.hostile import base_event

RULESET = load_ruleset(ROOT / "rules").with_keys(
    {"install-attribution": b"k" * 32, "signup-conversions": b"s" * 32}
)


def _case_of(data: bytes) -> FuzzCase:
    event, newline, consent = data.partition(b"\n")
    return FuzzCase(event, (consent,) if newline else ())


def test_one_input(data: bytes) -> None:
    """libFuzzer's entry point: check one input, save it if it breaks an invariant."""
    case = _case_of(data)
    try:
        check_case(case, RULESET)
    except BaseException:
        print(f"saved failing case to {case.save(prefix='atheris')}", file=sys.stderr)
        raise


def _seed_corpus() -> str:
    corpus = Path(tempfile.mkdtemp(prefix="partner-guard-corpus-"))
    (corpus / "base").write_bytes(render(base_event("app_install", ACCOUNT, "ios", "US")))
    for path in sorted(HOSTILE_DIR.glob("*.json")):
        if any(path.name.startswith(c + "-") for c in OPEN_CLASSES):
            continue  # known to fail until that class is defended: start from what holds
        case = FuzzCase.loads(path.read_bytes())
        (corpus / path.stem).write_bytes(b"\n".join([case.event, *case.consent[:1]]))
    return str(corpus)


def main() -> None:
    """Run libFuzzer with the seed corpus unless a corpus directory is given."""
    args = list(sys.argv)
    if not any(a.startswith("-artifact_prefix=") for a in args):
        args.append(f"-artifact_prefix={tempfile.mkdtemp(prefix='partner-guard-crash-')}/")
    if not any(not a.startswith("-") for a in args[1:]):
        args.append(_seed_corpus())
    atheris.Setup(args, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
