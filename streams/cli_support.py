"""Pieces the command-line modules share: the error console, rule loading, common options."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console

from streams.core.rules.loader import RulesetError, load_ruleset
from streams.core.rules.ruleset import Ruleset

# soft_wrap: messages are never hard-wrapped (a terminal wraps them; logs and pipes get one line)
err = Console(stderr=True, soft_wrap=True)

RulesDir = Annotated[Path, typer.Argument(help="rules directory")]
RulesOpt = Annotated[Path, typer.Option("--rules", help="rules directory")]


def refuse(message: str) -> NoReturn:
    """Print `refusing to start: <message>` as one line on stderr and exit 2."""
    err.print(f"refusing to start: {message}", highlight=False, markup=False)
    raise typer.Exit(2)


def load_ruleset_or_exit(rules_dir: Path, source: str | None = None) -> Ruleset:
    """Load a ruleset, or print every problem (file:line: what — fix) and exit 2.

    A missing directory names the absolute path looked at and, when known, where the path
    came from (`source`: `--rules` or `PARTNER_GUARD_RULES_DIR`).
    """
    if not rules_dir.is_dir():
        origin = f"from {source}, " if source else ""
        err.print(
            f"rules refused: no rules directory at {rules_dir.resolve()} ({origin}working directory "
            f"{Path.cwd()}); the rules are yours to provide: pass --rules DIR or set PARTNER_GUARD_RULES_DIR",
            highlight=False,
            markup=False,
        )
        raise typer.Exit(2)
    try:
        return load_ruleset(rules_dir)
    except RulesetError as exc:
        err.print(f"[red]rules refused[/red] ({len(exc.problems)} problem(s)):", highlight=False)
        for problem in exc.problems:
            err.print(f"  {problem}", highlight=False, markup=False)
        raise typer.Exit(2) from None


def version_text(rules_dir: Path | None) -> str:
    """`partner-guard --version`: package, Kafka client, schema fingerprint, ruleset digest."""
    from importlib.metadata import PackageNotFoundError, version

    import confluent_kafka

    from streams.runtime.avro_input import event_schema_fingerprint

    try:
        ours = version("partner-guard")
    except PackageNotFoundError:  # running from a source tree without an install
        from streams import __version__ as ours
    lines = [
        f"partner-guard {ours}",
        f"confluent-kafka {confluent_kafka.__version__} (librdkafka {confluent_kafka.libversion()[0]})",
        f"event schema fingerprint {event_schema_fingerprint()}",
    ]
    if rules_dir is not None:
        lines.append(f"ruleset digest {load_ruleset_or_exit(rules_dir).digest} ({rules_dir})")
    return "\n".join(lines)
