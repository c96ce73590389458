"""The `partner-guard` command line (also `python -m streams`)."""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import orjson
import typer

from streams import exitcodes
from streams.audit.commands import replay_app
from streams.cli_support import (
    RulesDir,
    RulesOpt,
    err,
    load_ruleset_or_exit,
    report_error,
    version_text,
)
from streams.core.errors import RefusalError
from streams.core.rules.ruleset import Ruleset


class Engine(enum.StrEnum):
    """Which engine runs the guard (both run the same decision path, `streams.runtime.pipeline.decider`)."""

    KAFKA = "kafka"
    FAUST = "faust"


app = typer.Typer(
    help="partner-guard: only what the privacy statement promises reaches ad partners.",
    no_args_is_help=True,
    add_completion=False,
)
rules_app = typer.Typer(help="Check and test partner allow-rules.", no_args_is_help=True)
app.add_typer(rules_app, name="rules")
app.add_typer(replay_app, name="replay")


@app.callback(invoke_without_command=True)
def main_options(
    ctx: typer.Context,
    version: Annotated[
        bool, typer.Option("--version", help="versions, schema fingerprint (and ruleset digest with --rules)")
    ] = False,
    rules: Annotated[
        Path | None, typer.Option("--rules", help="with --version: the ruleset to show the digest of")
    ] = None,
) -> None:
    """partner-guard: only what the privacy statement promises reaches ad partners."""
    if version:
        rules_dir = rules or (
            Path(os.environ["PARTNER_GUARD_RULES_DIR"]) if os.environ.get("PARTNER_GUARD_RULES_DIR") else None
        )
        print(version_text(rules_dir))
        raise typer.Exit(0)
    if ctx.invoked_subcommand is None:
        print(ctx.get_help())
        raise typer.Exit(0)


@rules_app.command("check")
def rules_check(rules_dir: RulesDir = Path("rules")) -> None:
    """Validate rules; refuse any that could forward a tagged field or a content event type."""
    from streams.runtime.config import guard_topics_from_env

    ruleset = load_ruleset_or_exit(rules_dir, reserved_topics=guard_topics_from_env())
    for rule in ruleset.rules:
        types = ", ".join(rule.events)
        print(f"ok  {rule.partner}  ({rule.rule_id}) -> {rule.topic}: {types}")
    print(f"ruleset digest {ruleset.digest}")


@rules_app.command("test")
def rules_test(rules_dir: RulesDir = Path("rules")) -> None:
    """Run the golden cases in RULES_DIR/tests and check every reason code is covered."""
    from streams.offline.ruletests import run_rule_tests
    from streams.runtime.config import guard_topics_from_env

    ruleset = load_ruleset_or_exit(rules_dir, reserved_topics=guard_topics_from_env())
    results = run_rule_tests(rules_dir, ruleset)
    failed = False
    for result in results:
        status = "ok  " if result.ok else "FAIL"
        print(f"{status} {result.partner}: {result.passed} passed, {len(result.failures)} failed")
        for failure in result.failures:
            print(f"     {failure}")
        print(f"     P11 non-interference: {result.noninterference_checked} variants of protected fields")
        if result.uncovered:
            print("     reason codes this rule can give that no case produces:")
            for reason, why in result.uncovered.items():
                print(f"       {reason}: reachable because {why}")
        failed = failed or not result.ok
    raise typer.Exit(exitcodes.CHECK_FAILED if failed else exitcodes.OK)


def _diff_side(rules: Path) -> Ruleset:
    """A rules directory; or, when no such directory exists, a git ref of this repository
    whose `rules/` is loaded with the event schema of the same commit."""
    import tempfile

    from streams.audit.rulesets import is_git_ref, ruleset_at_ref, with_replay_keys
    from streams.core.rules.loader import RulesetError

    if rules.is_dir() or not is_git_ref(Path("."), str(rules)):
        return with_replay_keys(load_ruleset_or_exit(rules))
    try:
        return ruleset_at_ref(Path("."), str(rules), Path(tempfile.mkdtemp(prefix="partner-guard-diff-")))
    except RulesetError as exc:
        problems = [str(p) for p in exc.problems] or ["no rules/ directory at that commit"]
        err.print(f"rules refused at {rules} ({len(problems)} problem(s)):", highlight=False, markup=False)
        for problem in problems:
            err.print(f"  {problem}", highlight=False, markup=False)
        raise typer.Exit(exitcodes.REFUSED) from None


@rules_app.command("diff")
def rules_diff(
    old: Annotated[
        Path,
        typer.Argument(help="current rules directory, or a git ref (its rules/ with that commit's schema)"),
    ],
    new: Annotated[Path, typer.Argument(help="proposed rules directory")],
    sample: Annotated[
        Path | None, typer.Option("--sample", help="decide-format JSON Lines to re-decide")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON document")] = False,
) -> None:
    """Show every change a new ruleset makes, per partner and ruleset-wide (and to decisions)."""
    from streams.offline.rulediff import (
        diff_report,
        dumps_change,
        ruleset_wide_diff,
        sample_diff,
        structural_diff,
    )

    before, after = _diff_side(old), _diff_side(new)
    changes = sample_diff(before, after, sample) if sample is not None else None
    if as_json:
        sys.stdout.write(dumps_change(diff_report(before, after, changes)) + "\n")
        return
    print(f"ruleset {before.digest} -> {after.digest}")
    wide = ruleset_wide_diff(before, after)
    if wide:
        print("every partner (leak-scan vocabulary, schema tags):")
        for change in wide:
            print(f"  {change.text()}")
    for diff in structural_diff(before, after):
        print(f"{diff.partner}: {diff.status}")
        for line in diff.lines:
            print(f"  {line}")
    if sample is not None and changes is not None:
        print(f"sample {sample}: {len(changes)} decision(s) change")
        for change_line in changes:
            print(f"  {dumps_change(change_line)}")


@app.command("decide")
def decide_command(
    rules: RulesOpt = Path("rules"),
    dev: Annotated[bool, typer.Option("--dev", help="local run: ephemeral keys if none are set")] = False,
    keys_dir: Annotated[
        Path | None, typer.Option("--keys-dir", help="directory of <partner>.key files")
    ] = None,
    explain: Annotated[bool, typer.Option("--explain", help="add rule id, digest and details")] = False,
) -> None:
    """Offline: JSON Lines of cases on stdin, one JSON line per (case, partner) on stdout."""
    from streams.offline.cases import decide_line, decision_json
    from streams.runtime.ops.startup import partner_keys

    ruleset = load_ruleset_or_exit(rules)
    keys, notices = partner_keys(ruleset.partners, keys_dir, dev)
    for notice in notices:
        err.print(notice, highlight=False, markup=False)
    keyed = ruleset.with_keys(keys)
    out = sys.stdout.buffer
    for line in sys.stdin.buffer:
        if not line.strip():
            continue
        for decision in decide_line(line.rstrip(b"\r\n"), keyed):
            out.write(orjson.dumps(decision_json(decision, explain)) + b"\n")
    out.flush()


@app.command("run")
def run_command(
    config: Annotated[Path | None, typer.Option("--config", help="YAML settings file")] = None,
    rules: Annotated[Path | None, typer.Option("--rules", help="rules directory")] = None,
    create_topics: Annotated[bool, typer.Option("--create-topics", help="create missing topics")] = False,
    dev: Annotated[bool, typer.Option("--dev", help="local run: ephemeral keys if none are set")] = False,
    keys_dir: Annotated[
        Path | None, typer.Option("--keys-dir", help="directory of <partner>.key files")
    ] = None,
    workers: Annotated[
        int | None, typer.Option("--workers", min=1, max=64, help="guard processes on this host")
    ] = None,
    engine: Annotated[
        Engine | None,
        typer.Option(
            "--engine",
            help="kafka: confluent-kafka, one transaction per batch (default); "
            "faust: a Faust worker (faust-streaming), same decisions",
        ),
    ] = None,
) -> None:
    """The streaming job: consume, decide, produce and commit in one transaction per batch."""
    from streams.runtime.config import load_settings, unknown_env_warnings
    from streams.runtime.ops.logs import configure_logging
    from streams.runtime.ops.preflight import preflight
    from streams.runtime.ops.startup import keyed_setup
    from streams.runtime.pipeline.job import GuardJob

    configure_logging()
    settings = load_settings(
        config,
        rules_dir=rules,
        create_topics=create_topics or None,
        dev=dev or None,
        keys_dir=keys_dir,
        workers=workers,
        engine=engine.value if engine else None,
    )
    if settings.engine == "faust":
        from streams.engines.faust_app import check_settings

        check_settings(settings)  # refuses what the Faust engine cannot honour, before connecting
    for warning in unknown_env_warnings():
        logging.getLogger("streams.cli").warning("ignoring %s", warning)
    source = (
        "--rules" if rules else "PARTNER_GUARD_RULES_DIR" if "PARTNER_GUARD_RULES_DIR" in os.environ else None
    )
    ruleset = load_ruleset_or_exit(settings.rules_dir, source, settings.guard_topics())
    setup = keyed_setup(settings, ruleset)
    for notice in setup.notices:
        err.print(notice, highlight=False, markup=False)
    preflight(settings)
    if settings.engine == "faust":
        from streams.engines.faust_app import run_worker

        raise typer.Exit(run_worker(setup))
    if settings.workers > 1:
        from streams.runtime.workers import Supervisor, worker_arguments

        args = worker_arguments(config, rules, dev, keys_dir)
        raise typer.Exit(Supervisor(settings, list(ruleset.partners), args).run())
    raise typer.Exit(GuardJob(setup.settings, setup.ruleset, payload=setup.payload).run())


@app.command("demo")
def demo_command(
    events: Annotated[int, typer.Option("--events", "-n", help="events to produce", min=1)] = 20_000,
    rate: Annotated[float, typer.Option("--rate", help="events per second (0 = as fast as possible)")] = 0.0,
    keep_running: Annotated[
        bool, typer.Option("--keep-running", help="keep producing, metrics exposed")
    ] = False,
    metrics_port: Annotated[int, typer.Option("--metrics-port", help="guard metrics port (0 = free)")] = 0,
    rules: RulesOpt = Path("rules"),
    seed: Annotated[int, typer.Option("--seed", help="generator seed")] = 7,
    engine: Annotated[Engine, typer.Option("--engine", help="the guard's engine")] = Engine.KAFKA,
) -> None:
    """First run: embedded broker, synthetic traffic, the real guard, a summary and a leak scan."""
    from streams.demo.run import run_demo

    load_ruleset_or_exit(rules)
    raise typer.Exit(run_demo(events, rate, keep_running, metrics_port, rules, seed, engine.value))


@app.command("broker")
def broker_command(
    port: Annotated[int, typer.Option("--port", help="loopback port")] = 9092,
) -> None:
    """Run the embedded Kafka-compatible broker (Tansu) in the foreground."""
    import signal

    from streams.broker.embedded import EmbeddedBroker

    def stop_on_sigterm(_signum: int, _frame: object) -> None:
        raise SystemExit(0)  # unwinds out of wait(); the context manager stops the broker once

    signal.signal(signal.SIGTERM, stop_on_sigterm)
    with EmbeddedBroker.start(port) as broker:
        print(f"embedded broker on {broker.bootstrap} (memory only); Ctrl-C stops it", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            broker.process.wait()


def main() -> None:
    """Entry point of the console script; the one place refusals are reported."""
    try:
        app()
    except RefusalError as exc:
        sys.exit(report_error(exc))
