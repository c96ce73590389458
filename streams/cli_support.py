"""Pieces the command-line modules share: the error console and report, rule and key loading, options."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console

from streams import exitcodes
from streams.core.errors import RefusalError
from streams.core.rules.loader import RulesetError, load_ruleset
from streams.core.rules.ruleset import Ruleset
from streams.runtime.secrets import load_keys

# soft_wrap: messages are never hard-wrapped (a terminal wraps them; logs and pipes get one line)
err = Console(stderr=True, soft_wrap=True)

RulesDir = Annotated[Path, typer.Argument(help="rules directory")]
RulesOpt = Annotated[Path, typer.Option("--rules", help="rules directory")]


class RulesDirMissingError(RefusalError):
    """No rules directory where one was asked for."""


class RefusedError(RefusalError):
    """A command refuses to do its work; the message says why and what to fix."""


def refuse(message: str) -> NoReturn:
    """Refuse with `message`: raised, and reported by the command line's one error handler."""
    raise RefusedError(message)


def report_error(exc: RefusalError) -> int:
    """Print one of the project's own errors the one way the command line does; the exit code.

    `refusing to start: <message>` on one line of stderr, never hard-wrapped; a refused
    ruleset lists its problems below, one `file:line: what — fix` a line.
    """
    message = str(exc)
    if isinstance(exc, RulesetError):
        listed = "".join(f"\n  {problem}" for problem in exc.problems)
        message = f"rules refused ({len(exc.problems)} problem(s)):{listed}"
    err.print(f"refusing to start: {message}", highlight=False, markup=False)
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


def load_keys_or_refuse(partners: Sequence[str], keys_dir: Path | None, dev: bool) -> Mapping[str, bytes]:
    """The partners' keys (`MissingKeyError` when one is missing outside a local run); says
    on stderr which ones are ephemeral (`--dev`)."""
    loaded = load_keys(partners, keys_dir, dev)
    if loaded.ephemeral:
        err.print(
            f"--dev: ephemeral keys for {', '.join(loaded.ephemeral)}; pseudonyms change every run",
            highlight=False,
            markup=False,
        )
    return loaded.keys


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
