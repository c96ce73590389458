"""The `partner-guard` command line (also `python -m streams`)."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console

from streams.core.rules.loader import RulesetError, load_ruleset
from streams.core.rules.ruleset import Ruleset
from streams.runtime.payload import Keyring, PayloadKeyError, PayloadMode, PayloadProtector
from streams.runtime.secrets import MissingKeyError, load_keys

app = typer.Typer(
    help="partner-guard: only what the privacy statement promises reaches ad partners.",
    no_args_is_help=True,
    add_completion=False,
)
rules_app = typer.Typer(help="Check and test partner allow-rules.", no_args_is_help=True)
app.add_typer(rules_app, name="rules")
err = Console(stderr=True)

RulesDir = Annotated[Path, typer.Argument(help="rules directory")]
RulesOpt = Annotated[Path, typer.Option("--rules", help="rules directory")]


def _load_or_exit(rules_dir: Path) -> Ruleset:
    try:
        return load_ruleset(rules_dir)
    except RulesetError as exc:
        err.print(f"[red]rules refused[/red] ({len(exc.problems)} problem(s)):", highlight=False)
        for problem in exc.problems:
            err.print(f"  {problem}", highlight=False, markup=False)
        raise typer.Exit(2) from None


@rules_app.command("check")
def rules_check(rules_dir: RulesDir = Path("rules")) -> None:
    """Validate rules; refuse any that could forward a tagged field or a content event type."""
    ruleset = _load_or_exit(rules_dir)
    for rule in ruleset.rules:
        types = ", ".join(rule.events)
        print(f"ok  {rule.partner}  ({rule.rule_id}) -> {rule.topic}: {types}")
    print(f"ruleset digest {ruleset.digest}")


@rules_app.command("test")
def rules_test(rules_dir: RulesDir = Path("rules")) -> None:
    """Run the golden cases in RULES_DIR/tests and check every reason code is covered."""
    from streams.offline.ruletests import run_rule_tests

    ruleset = _load_or_exit(rules_dir)
    results = run_rule_tests(rules_dir, ruleset)
    failed = False
    for result in results:
        status = "ok  " if result.ok else "FAIL"
        print(f"{status} {result.partner}: {result.passed} passed, {len(result.failures)} failed")
        for failure in result.failures:
            print(f"     {failure}")
        if result.uncovered:
            print(f"     reason codes no case produces: {', '.join(result.uncovered)}")
        failed = failed or not result.ok
    raise typer.Exit(1 if failed else 0)


@rules_app.command("diff")
def rules_diff(
    old: Annotated[Path, typer.Argument(help="current rules directory")],
    new: Annotated[Path, typer.Argument(help="proposed rules directory")],
    sample: Annotated[
        Path | None, typer.Option("--sample", help="decide-format JSON Lines to re-decide")
    ] = None,
) -> None:
    """Show what a rule change does to each partner's event types and fields (and decisions)."""
    from streams.audit.rulesets import with_replay_keys
    from streams.offline.rulediff import dumps_change, sample_diff, structural_diff

    before, after = with_replay_keys(_load_or_exit(old)), with_replay_keys(_load_or_exit(new))
    print(f"ruleset {before.digest} -> {after.digest}")
    for diff in structural_diff(before, after):
        print(f"{diff.partner}: {diff.status}")
        for line in diff.lines:
            print(f"  {line}")
    if sample is not None:
        changes = sample_diff(before, after, sample)
        print(f"sample {sample}: {len(changes)} decision(s) change")
        for change in changes:
            print(f"  {dumps_change(change)}")


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

    ruleset = _load_or_exit(rules)
    try:
        loaded = load_keys(ruleset.partners, keys_dir, dev)
    except MissingKeyError as exc:
        err.print(f"[red]refusing to start:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None
    if loaded.ephemeral:
        err.print(
            f"[yellow]--dev: ephemeral keys for {', '.join(loaded.ephemeral)}; "
            "pseudonyms change every run[/yellow]"
        )
    keyed = ruleset.with_keys(loaded.keys)
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
) -> None:
    """The streaming job: consume, decide, produce and commit in one transaction per batch."""
    from streams.runtime.config import ConfigError, load_settings
    from streams.runtime.job import GuardJob
    from streams.runtime.logs import configure_logging

    configure_logging()
    try:
        settings = load_settings(
            config, rules_dir=rules, create_topics=create_topics or None, dev=dev or None, keys_dir=keys_dir
        )
    except ConfigError as exc:
        err.print(f"refusing to start: {exc}", highlight=False, markup=False)
        raise typer.Exit(2) from None
    ruleset = _load_or_exit(settings.rules_dir)
    try:
        loaded = load_keys(ruleset.partners, settings.keys_dir, settings.dev)
    except MissingKeyError as exc:
        err.print(f"refusing to start: {exc}", highlight=False, markup=False)
        raise typer.Exit(2) from None
    if loaded.ephemeral:
        err.print(f"--dev: ephemeral keys for {', '.join(loaded.ephemeral)}; pseudonyms change every run")
    try:
        payload = _payload_protector(settings.blocked_payload, settings.payload_keys_file, settings.dev)
    except PayloadKeyError as exc:
        err.print(f"refusing to start: {exc}", highlight=False, markup=False)
        raise typer.Exit(2) from None
    raise typer.Exit(GuardJob(settings, ruleset.with_keys(loaded.keys), payload=payload).run())


def _payload_protector(mode: PayloadMode, keys_file: Path | None, dev: bool) -> PayloadProtector:
    if mode == "full":
        return PayloadProtector("full")
    try:
        return PayloadProtector(mode, Keyring.load(keys_file))
    except PayloadKeyError:
        if not dev:
            raise
        err.print(f"--dev: ephemeral payload key for '{mode}' blocked records")
        return PayloadProtector(mode, Keyring.ephemeral())


replay_app = typer.Typer(
    help="Auditors: re-decide blocked records (verify by default), what-if, reports, republish.",
    invoke_without_command=True,
)
app.add_typer(replay_app, name="replay")
FromFile = Annotated[
    Path | None, typer.Option("--from-file", help="exported JSON Lines instead of the topic")
]
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="YAML settings file (Kafka, topics)")]
Since = Annotated[str | None, typer.Option("--since", help="ISO time: withheld at or after")]
Until = Annotated[str | None, typer.Option("--until", help="ISO time: withheld before")]
Partner = Annotated[str | None, typer.Option("--partner", help="only this partner")]
ReasonOpt = Annotated[str | None, typer.Option("--reason", help="only records with this reason code")]
RuleOpt = Annotated[str | None, typer.Option("--rule", help="only this rule id")]
PayloadKeys = Annotated[Path | None, typer.Option("--payload-keys-file", help="keys to decrypt payloads")]


def _blocked_records(from_file: Path | None, config: Path | None, wanted: Any) -> Any:
    from streams.audit.source import read_file, read_topic
    from streams.runtime.config import ConfigError, load_settings

    if from_file is not None:
        return read_file(from_file, wanted), None
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        err.print(f"{exc}\n(or pass --from-file)", highlight=False, markup=False)
        raise typer.Exit(2) from None
    kafka = {"bootstrap.servers": settings.bootstrap_servers, **settings.kafka}
    return read_topic(kafka, settings.blocked_topic, wanted), settings


def _filter(
    since: str | None, until: str | None, partner: str | None, reason: str | None, rule: str | None
) -> Any:
    from streams.audit.source import BlockedFilter, parse_time

    try:
        return BlockedFilter(parse_time(since), parse_time(until), partner, reason, rule)
    except ValueError as exc:
        err.print(f"--since/--until: {exc}")
        raise typer.Exit(2) from None


@replay_app.callback()
def replay_command(
    ctx: typer.Context,
    from_file: FromFile = None,
    config: ConfigOpt = None,
    since: Since = None,
    until: Until = None,
    partner: Partner = None,
    reason: ReasonOpt = None,
    rule: RuleOpt = None,
    verify_rules: Annotated[
        list[Path] | None,
        typer.Option("--verify-rules", help="rules directories to find recorded digests in (default rules/)"),
    ] = None,
    git_history: Annotated[
        bool, typer.Option("--git/--no-git", help="also search rules/ in git history")
    ] = True,
    whatif_rules: Annotated[
        Path | None, typer.Option("--rules", help="what-if: a proposed rules directory")
    ] = None,
    whatif_ref: Annotated[
        str | None, typer.Option("--rules-ref", help="what-if: rules/ at a git ref")
    ] = None,
    jsonl: Annotated[Path | None, typer.Option("--jsonl", help="write one JSON line per record")] = None,
    html_out: Annotated[
        Path | None, typer.Option("--html", help="write a self-contained HTML report")
    ] = None,
    payload_keys_file: PayloadKeys = None,
    republish_records: Annotated[
        bool,
        typer.Option(
            "--republish", help="send on what the --rules ruleset now forwards (fresh consent check)"
        ),
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="with --republish: only say what would go")
    ] = False,
    keys_dir: Annotated[Path | None, typer.Option("--keys-dir", help="partner keys for --republish")] = None,
) -> None:
    """Re-decide blocked records under the ruleset that decided them; exit 1 on any mismatch."""
    if ctx.invoked_subcommand is not None:
        return
    import tempfile

    from streams.audit.replay import replay
    from streams.audit.report import print_summary, write_html, write_jsonl
    from streams.audit.rulesets import RulesetLibrary, ruleset_at_ref, with_replay_keys

    records, settings = _blocked_records(from_file, config, _filter(since, until, partner, reason, rule))
    library = RulesetLibrary(verify_rules or [Path("rules")], Path(".") if git_history else None)
    whatif = None
    if whatif_rules is not None:
        whatif = with_replay_keys(_load_or_exit(whatif_rules))
    elif whatif_ref is not None:
        try:
            whatif = ruleset_at_ref(Path("."), whatif_ref, Path(tempfile.mkdtemp()))
        except RulesetError as exc:
            err.print(f"--rules-ref {whatif_ref}: cannot load rules there ({exc})")
            raise typer.Exit(2) from None
    keyring = _replay_keyring(payload_keys_file)
    result = replay(records, library, keyring, whatif)
    console = Console()
    print_summary(console, result, whatif is not None)
    if jsonl:
        write_jsonl(result, jsonl)
    if html_out:
        write_html(result, html_out)
    if republish_records:
        _republish(result, settings, whatif, keyring, keys_dir, dry_run, console)
    raise typer.Exit(1 if result.failed else 0)


def _replay_keyring(keys_file: Path | None) -> Any:
    from streams.runtime.payload import Keyring, PayloadKeyError

    try:
        return Keyring.load(keys_file)
    except PayloadKeyError:
        return None  # encrypted payloads will be reported as unverifiable


def _republish(
    result: Any,
    settings: Any,
    whatif: Ruleset | None,
    keyring: Any,
    keys_dir: Path | None,
    dry_run: bool,
    console: Console,
) -> None:
    from streams.audit.republish import republish

    if whatif is None or settings is None:
        err.print("--republish needs --rules (the corrected ruleset) and the blocked topic, not --from-file")
        raise typer.Exit(2)
    try:
        loaded = load_keys(whatif.partners, keys_dir or settings.keys_dir, False)
    except MissingKeyError as exc:
        err.print(f"refusing to republish: {exc}", highlight=False, markup=False)
        raise typer.Exit(2) from None
    outcome = republish(result.outcomes, settings, whatif.with_keys(loaded.keys), keyring, dry_run)
    verb = "would send" if dry_run else "sent"
    count = len(outcome.planned) if dry_run else outcome.sent
    console.print(
        f"republish: {outcome.candidates} candidate(s); {verb} {count}; "
        f"already sent {outcome.already_sent}; refused by fresh consent/status check "
        f"{outcome.refused_by_fresh_check}; loop-guarded {outcome.loop_guarded}"
    )


@replay_app.command("export")
def replay_export(
    out: Annotated[Path, typer.Option("--out", help="JSON Lines file to write")],
    config: ConfigOpt = None,
    since: Since = None,
    until: Until = None,
    partner: Partner = None,
    reason: ReasonOpt = None,
    rule: RuleOpt = None,
) -> None:
    """Export blocked records (filtered) from the blocked topic to a JSON Lines file."""
    from streams.audit.source import export

    records, _ = _blocked_records(None, config, _filter(since, until, partner, reason, rule))
    print(f"exported {export(records, out):,} blocked record(s) to {out}")


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
) -> None:
    """First run: embedded broker, synthetic traffic, the real guard, a summary and a leak scan."""
    from streams.demo.run import run_demo

    _load_or_exit(rules)
    raise typer.Exit(run_demo(events, rate, keep_running, metrics_port, rules, seed))


@app.command("broker")
def broker_command(
    port: Annotated[int, typer.Option("--port", help="loopback port")] = 9092,
) -> None:
    """Run the embedded Kafka-compatible broker (Tansu) in the foreground."""
    import signal

    from streams.broker.embedded import EmbeddedBroker

    with EmbeddedBroker.start(port) as broker:
        print(f"embedded broker on {broker.bootstrap} (memory only); Ctrl-C stops it", flush=True)
        signal.signal(signal.SIGTERM, lambda *_: broker.stop())
        with contextlib.suppress(KeyboardInterrupt):
            broker.process.wait()


def main() -> None:
    """Entry point of the console script."""
    app()
