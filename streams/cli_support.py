"""Pieces the command-line modules share: the error console and the refusal report, rule loading, options."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import FrameType
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


RULES_ENV = "PARTNER_GUARD_RULES_DIR"
DEFAULT_RULES_DIR = Path("rules")
_RULES_HELP = f"rules directory (default: {RULES_ENV}, else ./rules)"
RulesDir = Annotated[Path | None, typer.Argument(help=_RULES_HELP, show_default=False)]
RulesOpt = Annotated[
    Path | None, typer.Option("--rules", help=_RULES_HELP, show_default=False, metavar="DIR")
]

# How a refusal begins: `run`, `demo`, `broker` and `check-config` refuse to start; a command
# that starts nothing names itself (`rules check: rules refused ...`).
_refusal_words = ["refusing to start"]


def refusal_words(words: str) -> None:
    """Set how this command's refusals begin (`report_error`)."""
    _refusal_words[0] = words


def default_rules_dir() -> tuple[Path, str | None]:
    """The rules directory when no command-line argument names one, and where it came from."""
    from_env = os.environ.get(RULES_ENV)
    return (Path(from_env), RULES_ENV) if from_env else (DEFAULT_RULES_DIR, None)


def rules_dir_from(positional: Path | None, option: Path | None) -> tuple[Path, str | None]:
    """The rules directory every command takes the same way, and where it came from: the
    positional DIR (where the command has one) or `--rules DIR`, else `PARTNER_GUARD_RULES_DIR`,
    else `rules` in the working directory."""
    if positional is not None and option is not None and positional != option:
        raise typer.BadParameter(f"two rules directories ({positional} and --rules {option}): give one")
    if positional is not None:
        return positional, None
    if option is not None:
        return option, "--rules"
    return default_rules_dir()


class RulesDirMissingError(RefusalError):
    """No rules directory where one was asked for."""


# Signals that stop a command the way Ctrl-C (SIGINT) does: a supervisor's or `kill`'s
# SIGTERM, and SIGHUP when the terminal goes away.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP, raised where Ctrl-C raises `KeyboardInterrupt`; `signum` says which."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def stop_signals_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise `Stopped` (a `KeyboardInterrupt`), so every
    `with` and `finally` runs and the child processes the command started are stopped, as on
    Ctrl-C. After the first, further SIGTERM/SIGHUP are ignored so the cleanup runs to its
    end (its waits are bounded; SIGKILL still ends it); a second Ctrl-C still interrupts."""

    def interrupt(signum: int, _frame: FrameType | None) -> None:
        for stop in STOP_SIGNALS:
            signal.signal(stop, signal.SIG_IGN)
        raise Stopped(signum)

    previous = {stop: signal.signal(stop, interrupt) for stop in STOP_SIGNALS}
    try:
        yield
    finally:
        for stop, handler in previous.items():
            signal.signal(stop, handler)


def report_error(exc: RefusalError) -> int:
    """Print a refusal the one way every entry point does on stderr (`refusing to start: ...`,
    or the command's own words, `refusal_words`), never hard-wrapped; returns the exit code."""
    err.print(f"{_refusal_words[0]}: {exc.explanation()}", highlight=False, markup=False)
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
