"""Pieces the command-line modules share: the error console and the refusal report, rule loading, options."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from streams import exitcodes
from streams.core.errors import RefusalError
from streams.core.rules.loader import load_ruleset
from streams.core.rules.ruleset import Ruleset

# soft_wrap: messages are never hard-wrapped (a terminal wraps them; logs and pipes get one line)
err = Console(stderr=True, soft_wrap=True)


def stdout_console() -> Console:
    """The console for tables on stdout: the terminal's width, or never cut when piped to a file."""
    return Console() if sys.stdout.isatty() else Console(width=1000)


RulesDir = Annotated[Path, typer.Argument(help="rules directory")]
RulesOpt = Annotated[Path, typer.Option("--rules", help="rules directory")]


class RulesDirMissingError(RefusalError):
    """No rules directory where one was asked for."""


def report_error(exc: RefusalError) -> int:
    """Print a refusal the one way every entry point does (`RefusalError.report`) on stderr,
    never hard-wrapped; returns the exit code."""
    err.print(exc.report(), highlight=False, markup=False)
    return exitcodes.REFUSED


def load_ruleset_or_exit(
    rules_dir: Path, source: str | None = None, reserved_topics: Mapping[str, str] | None = None
) -> Ruleset:
    """Load a ruleset; raises `RulesetError` (every problem) or `RulesDirMissingError`, which
    the command line reports (`report_error`) before it exits 2.

    A missing directory names the absolute path looked at and, when known, where the path
    came from (`source`: `--rules` or `PARTNER_GUARD_RULES_DIR`). A rule writing to one of
    `reserved_topics` (the guard's own topics) is refused.
    """
    if not rules_dir.is_dir():
        origin = f"from {source}, " if source else ""
        raise RulesDirMissingError(
            f"no rules directory at {rules_dir.resolve()} ({origin}working directory {Path.cwd()}); "
            "the rules are yours to provide: pass --rules DIR or set PARTNER_GUARD_RULES_DIR"
        )
    return load_ruleset(rules_dir, reserved_topics=reserved_topics)


def version_text(rules_dir: Path | None) -> str:
    """`partner-guard --version`: package, Kafka client, schema fingerprint, ruleset digest."""
    from importlib.metadata import PackageNotFoundError, version

    import confluent_kafka

    from streams.core.schema import event_schema_fingerprint

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
