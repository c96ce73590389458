"""The `partner-guard` command line (also `python -m streams`)."""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer

from streams import exitcodes
from streams.audit.commands import replay_app
from streams.cli_settings import settings_epilog, with_setting_options
from streams.cli_support import (
    RulesDir,
    RulesOpt,
    Stopped,
    err,
    load_ruleset_or_exit,
    refusal_words,
    report_error,
    rules_dir_from,
    stop_signals_interrupt,
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
    # plain help: a terminal or a pipe of any width gets every option and setting in full
    rich_markup_mode=None,
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
def rules_check(rules_dir: RulesDir = None, rules: RulesOpt = None) -> None:
    """Validate rules; refuse any that could forward a tagged field or a content event type."""
    from streams.runtime.config import guard_topics_from_env

    refusal_words("rules check")
    directory, source = rules_dir_from(rules_dir, rules)
    ruleset = load_ruleset_or_exit(directory, source, guard_topics_from_env())
    for rule in ruleset.rules:
        types = ", ".join(rule.events)
        print(f"ok  {rule.partner}  ({rule.rule_id}) -> {rule.topic}: {types}")
    print(f"ruleset digest {ruleset.digest}")


@rules_app.command("test")
def rules_test(
    rules_dir: RulesDir = None,
    rules: RulesOpt = None,
    scaffold: Annotated[
        str | None,
        typer.Option("--scaffold", help="write PARTNER's test file: one case per reachable reason"),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="with --scaffold: where (default RULES_DIR/tests/PARTNER.yaml)"),
    ] = None,
) -> None:
    """Run the golden cases in RULES_DIR/tests and check every reason code is covered."""
    from streams.offline.ruletests import run_rule_tests
    from streams.runtime.config import guard_topics_from_env

    refusal_words("rules test")
    directory, source = rules_dir_from(rules_dir, rules)
    ruleset = load_ruleset_or_exit(directory, source, guard_topics_from_env())
    if scaffold is not None:
        raise typer.Exit(_write_scaffold(ruleset, scaffold, out or directory / "tests" / f"{scaffold}.yaml"))
    results = run_rule_tests(directory, ruleset)
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


def _write_scaffold(ruleset: Ruleset, partner: str, path: Path) -> int:
    """`rules test --scaffold`: write the file (never over an existing one); exit code."""
    from streams.offline.scaffold import scaffold

    if partner not in ruleset.partners:
        err.print(
            f"--scaffold {partner}: no such partner; rules: {', '.join(ruleset.partners)}", highlight=False
        )
        return exitcodes.REFUSED
    if path.exists():
        err.print(f"{path} exists: not overwritten (pass --out FILE)", highlight=False, markup=False)
        return exitcodes.REFUSED
    written = scaffold(ruleset, partner)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(written.text, encoding="utf-8")
    print(f"wrote {path}: {written.cases} case(s); check every `expect`, then run `partner-guard rules test`")
    if not written.base_forwards:
        print("  the defaults are not forwarded: edit them until they are (the cases change them)")
    for reason, why in written.not_found.items():
        print(f"  no small change found for {reason} (reachable because {why}): write that case by hand")
    return exitcodes.OK


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
    rules: RulesOpt = None,
    dev: Annotated[bool, typer.Option("--dev", help="local run: ephemeral keys if none are set")] = False,
    keys_dir: Annotated[
        Path | None, typer.Option("--keys-dir", help="directory of <partner>.key files")
    ] = None,
    explain: Annotated[bool, typer.Option("--explain", help="add rule id, digest and details")] = False,
) -> None:
    """Offline: JSON Lines of cases on stdin, one JSON line per (case, partner) on stdout."""
    from streams.offline.cases import decide_line, decision_json
    from streams.runtime.ops.startup import partner_keys

    refusal_words("decide")
    ruleset = load_ruleset_or_exit(*rules_dir_from(None, rules))
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


def run_command(
    config: Annotated[
        Path | None, typer.Option("--config", help="YAML settings file", metavar="FILE")
    ] = None,
    **options: Any,
) -> None:
    """The streaming job: consume, decide, produce and commit in one transaction per batch.

    Each setting below is a flag, an environment variable and a key of the --config file
    (flags win over the environment, the environment over the file).
    """
    from streams.cli_settings import explicit_settings, setting_arguments
    from streams.runtime.config import load_settings, unknown_env_warnings
    from streams.runtime.ops.logs import configure_logging
    from streams.runtime.ops.preflight import preflight
    from streams.runtime.ops.startup import keyed_setup
    from streams.runtime.pipeline.job import GuardJob

    configure_logging()
    explicit = explicit_settings(options)
    settings = load_settings(config, **explicit)
    if settings.engine == "faust":
        from streams.engines.faust_app import check_settings

        check_settings(settings)  # refuses what the Faust engine cannot honour, before connecting
    for warning in unknown_env_warnings():
        logging.getLogger("streams.cli").warning("ignoring %s", warning)
    ruleset = load_ruleset_or_exit(settings.rules_dir, _rules_source(explicit), settings.guard_topics())
    setup = keyed_setup(settings, ruleset)
    for notice in setup.notices:
        err.print(notice, highlight=False, markup=False)
    preflight(settings)
    if settings.engine == "faust":
        from streams.engines.faust_app import run_worker

        raise typer.Exit(run_worker(setup))
    if settings.workers > 1:
        from streams.runtime.workers import SUPERVISOR_SETTINGS, Supervisor

        # every worker gets the same flags, but for the settings the supervisor sets per worker
        own = setting_arguments(explicit, SUPERVISOR_SETTINGS)
        args = [*(["--config", str(config)] if config else []), *own]
        raise typer.Exit(Supervisor(settings, list(ruleset.partners), args).run())
    raise typer.Exit(GuardJob(setup.settings, setup.ruleset, payload=setup.payload).run())


def _rules_source(explicit: dict[str, Any]) -> str | None:
    """Where the rules directory of `run` came from, for a missing-directory message."""
    if "rules_dir" in explicit:
        return "--rules"
    return "PARTNER_GUARD_RULES_DIR" if "PARTNER_GUARD_RULES_DIR" in os.environ else None


app.command("run", epilog=settings_epilog())(with_setting_options(run_command))


@app.command("check-config", epilog=settings_epilog())
@with_setting_options
def check_config_command(
    config: Annotated[
        Path | None, typer.Option("--config", help="YAML settings file", metavar="FILE")
    ] = None,
    **options: Any,
) -> None:
    """Check what `run` checks at start (settings, rules, keys, topic roles), without a broker.

    Exits 0, or 2 with the refusal `run` would print. Not checked: the broker and the
    metrics port, which `run` checks on the host it starts on.
    """
    from streams.cli_settings import explicit_settings
    from streams.runtime.config import load_settings, unknown_env_warnings
    from streams.runtime.ops.preflight import check_kafka_properties
    from streams.runtime.ops.startup import keyed_setup

    explicit = explicit_settings(options)
    settings = load_settings(config, **explicit)
    if settings.engine == "faust":
        from streams.engines.faust_app import check_settings

        check_settings(settings)
    for warning in unknown_env_warnings():
        err.print(f"warning: ignoring {warning}", highlight=False, markup=False)
    ruleset = load_ruleset_or_exit(settings.rules_dir, _rules_source(explicit), settings.guard_topics())
    setup = keyed_setup(settings, ruleset)
    for notice in setup.notices:
        err.print(notice, highlight=False, markup=False)
    check_kafka_properties(settings)
    print(f"settings ok ({len(type(settings).model_fields)} settings; file {config or 'none'})")
    print(f"rules ok: {len(ruleset.rules)} rule(s) in {settings.rules_dir}, ruleset digest {ruleset.digest}")
    dev = " (--dev: ephemeral where missing)" if settings.dev else ""
    print(f"keys ok: {', '.join(ruleset.partners)}{dev}")
    roles = settings.guard_topics()
    print(f"topics ok: {len(roles)} guard topic(s) and {len(ruleset.rules)} partner topic(s), one role each")
    print(f"not checked: the broker ({settings.bootstrap_servers}) and metrics port {settings.metrics_port}")


ConfigOption = Annotated[
    Path | None, typer.Option("--config", help="YAML settings file (as for run)", metavar="FILE")
]
BootstrapOption = Annotated[
    str | None,
    typer.Option(
        "--bootstrap-servers",
        "-b",
        metavar="HOST:PORT,...",
        help="Kafka bootstrap servers (default: PARTNER_GUARD_BOOTSTRAP_SERVERS)",
    ),
]


def _kafka_settings(config: Path | None, bootstrap_servers: str | None) -> Any:
    """`run`'s settings (file, environment, librdkafka passthrough) for a Kafka tool; a
    passthrough property librdkafka rejects is refused here, as `run` refuses it."""
    from streams.runtime.config import load_settings
    from streams.runtime.ops.preflight import check_kafka_properties

    settings = load_settings(config, bootstrap_servers=bootstrap_servers)
    check_kafka_properties(settings)
    return settings


@app.command("produce")
def produce_command(
    topic: Annotated[str, typer.Option("--topic", "-t", help="topic to send to", metavar="TOPIC")],
    source: Annotated[str, typer.Argument(help="JSON Lines file, or - for standard input")] = "-",
    key_path: Annotated[
        str | None,
        typer.Option(
            "--key-path",
            "-k",
            metavar="PATH",
            help="JSON path of the key in each line, e.g. account_id, $.device.device_id",
        ),
    ] = None,
    header: Annotated[
        list[str] | None,
        typer.Option(
            "--header", "-H", metavar="NAME=VALUE", help="NAME=VALUE header on every record (repeatable)"
        ),
    ] = None,
    avro: Annotated[
        bool,
        typer.Option(
            "--avro/--json",
            help="encode each line as an event in the Confluent Avro wire format (schema id from the "
            "registry, or the pinned avro_schema_id); default: send each line as it is",
        ),
    ] = False,
    config: ConfigOption = None,
    bootstrap_servers: BootstrapOption = None,
) -> None:
    """Send JSON Lines to a topic, one record a line (like kcat -P), with run's Kafka settings."""
    from streams.tools.produce import KeyPath, parse_header, produce_lines

    refusal_words("produce")
    settings = _kafka_settings(config, bootstrap_servers)
    path = KeyPath.parse(key_path) if key_path is not None else None
    headers = [parse_header(h) for h in header or []]
    if source == "-":
        result = produce_lines(settings, topic, sys.stdin.buffer, "stdin", path, list(headers), avro)
    else:
        try:
            with open(source, "rb") as lines:
                result = produce_lines(settings, topic, lines, source, path, list(headers), avro)
        except OSError as exc:
            err.print(f"produce: cannot read {source}: {exc.strerror}", highlight=False, markup=False)
            raise typer.Exit(exitcodes.REFUSED) from None
    keyless = f", {result.without_key} without a value at --key-path {key_path}" if result.without_key else ""
    err.print(f"produced {result.sent} record(s) to {topic}{keyless}", highlight=False, markup=False)
    for failure in result.failed[:10]:
        err.print(f"not delivered: {failure}", highlight=False, markup=False)
    raise typer.Exit(exitcodes.CHECK_FAILED if result.failed else exitcodes.OK)


@app.command("tail")
def tail_command(
    topic: Annotated[str, typer.Argument(help="topic to read")],
    from_beginning: Annotated[
        bool, typer.Option("--from-beginning/--from-end", help="start at the first record, or after the last")
    ] = False,
    follow: Annotated[
        bool,
        typer.Option(
            "--follow", "-f", help="keep waiting for new records (always, when starting from the end)"
        ),
    ] = False,
    count: Annotated[
        int | None, typer.Option("--count", "-n", min=1, metavar="N", help="stop after N records")
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="one JSON document a record, in full (key, headers, value)")
    ] = False,
    config: ConfigOption = None,
    bootstrap_servers: BootstrapOption = None,
) -> None:
    """Read a topic and show each record decoded (like kcat -C): blocked records, notices,
    partner records, Avro events. Without --follow, stops at the end offsets listed at start."""
    from streams.runtime.kafka.avro_input import ReplayAvro
    from streams.tools.tail import describe, read, render

    refusal_words("tail")
    settings = _kafka_settings(config, bootstrap_servers)
    replay_avro = ReplayAvro(settings)
    avro = replay_avro.decoder() if replay_avro.configured else None

    def on_error(text: str) -> None:
        err.print(f"tail: {text}", highlight=False, markup=False)

    out = sys.stdout
    with contextlib.suppress(KeyboardInterrupt), stop_signals_interrupt():
        for message in read(settings, topic, from_beginning, follow or not from_beginning, count, on_error):
            out.write(render(message, describe(message.value(), avro), as_json) + "\n")
            out.flush()


@app.command("settings-doc")
def settings_doc_command() -> None:
    """Print the settings reference (docs/settings.md) generated from the settings model."""
    from streams.cli_settings import settings_markdown

    sys.stdout.write(settings_markdown())


@app.command("demo")
def demo_command(
    events: Annotated[int, typer.Option("--events", "-n", help="events to produce", min=1)] = 20_000,
    rate: Annotated[float, typer.Option("--rate", help="events per second (0 = as fast as possible)")] = 0.0,
    keep_running: Annotated[
        bool, typer.Option("--keep-running", help="keep producing, metrics exposed")
    ] = False,
    metrics_port: Annotated[int, typer.Option("--metrics-port", help="guard metrics port (0 = free)")] = 0,
    rules: RulesOpt = None,
    seed: Annotated[int, typer.Option("--seed", help="generator seed")] = 7,
    engine: Annotated[Engine, typer.Option("--engine", help="the guard's engine")] = Engine.KAFKA,
) -> None:
    """First run: embedded broker, synthetic traffic, the real guard, a summary and a leak scan."""
    from streams.demo.run import run_demo

    directory, source = rules_dir_from(None, rules)
    load_ruleset_or_exit(directory, source)
    try:
        with stop_signals_interrupt():  # SIGTERM/SIGHUP stop the broker and the guard, as Ctrl-C does
            code = run_demo(events, rate, keep_running, metrics_port, directory, seed, engine.value)
    except KeyboardInterrupt as exc:
        signum = exc.signum if isinstance(exc, Stopped) else signal.SIGINT
        err.print(f"demo stopped by {signal.Signals(signum).name}; its broker and guard are stopped")
        raise typer.Exit(128 + signum) from None
    raise typer.Exit(code)


@app.command("broker")
def broker_command(
    port: Annotated[int, typer.Option("--port", help="loopback port")] = 9092,
) -> None:
    """Run the embedded Kafka-compatible broker (Tansu) in the foreground; Ctrl-C, SIGTERM or
    SIGHUP stops it (exit 0)."""
    from streams.broker.embedded import EmbeddedBroker

    # A stop signal unwinds out of start() or wait(); the context manager stops the broker once.
    with (
        contextlib.suppress(KeyboardInterrupt),
        stop_signals_interrupt(),
        EmbeddedBroker.start(port) as broker,
    ):
        print(f"embedded broker on {broker.bootstrap} (memory only); Ctrl-C stops it", flush=True)
        broker.process.wait()


def main() -> None:
    """Entry point of the console script; the one place refusals are reported."""
    try:
        app()
    except RefusalError as exc:
        sys.exit(report_error(exc))
