"""`partner-guard replay` and `partner-guard replay export`: the auditors' commands.

Exit codes of `replay`: 0 every verifiable decision reproduced; 1 a mismatch (or a
recorded ruleset that cannot be found); 3 no mismatch, but records that are not valid
blocked records; 4 the filters selected no record (unless `--allow-empty`); 2 could not
run (settings, broker, topic, file, keys, a filter naming an unknown partner, reason or rule).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from confluent_kafka import KafkaException
from rich.console import Console

from streams import exitcodes
from streams.cli_support import default_rules_dir, err, load_ruleset_or_exit, refusal_words, stdout_console
from streams.core.rules.loader import RulesetError
from streams.core.rules.ruleset import Ruleset
from streams.runtime.ops.secrets import MissingKeyError, load_keys

replay_app = typer.Typer(
    help="Auditors: re-decide blocked records (verify by default), what-if, reports, republish.",
    invoke_without_command=True,
)
FromFile = Annotated[
    Path | None, typer.Option("--from-file", help="exported JSON Lines instead of the topic")
]
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="YAML settings file (Kafka, topics)")]
Since = Annotated[str | None, typer.Option("--since", help="ISO time: withheld at or after")]
Until = Annotated[str | None, typer.Option("--until", help="ISO time: withheld before")]
Partner = Annotated[str | None, typer.Option("--partner", help="only this partner")]
ReasonOpt = Annotated[str | None, typer.Option("--reason", help="only records with this reason code")]
RuleOpt = Annotated[str | None, typer.Option("--rule", help="only this rule id")]
EXIT_MISMATCH = exitcodes.CHECK_FAILED
EXIT_COULD_NOT_RUN = exitcodes.REFUSED
EXIT_INVALID_RECORDS = exitcodes.REPLAY_INVALID_RECORDS
EXIT_NOTHING_SELECTED = exitcodes.REPLAY_NOTHING_SELECTED
PayloadKeys = Annotated[Path | None, typer.Option("--payload-keys-file", help="keys to decrypt payloads")]


def _blocked_records(from_file: Path | None, config: Path | None, wanted: Any, progress: Any = None) -> Any:
    from streams.audit.source import read_file, read_topic
    from streams.runtime.config import ConfigError, load_settings

    if from_file is not None:
        return read_file(from_file, wanted), None
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        err.print(f"{exc}\n(or pass --from-file)", highlight=False, markup=False)
        raise typer.Exit(EXIT_COULD_NOT_RUN) from None
    kafka = settings.kafka_base()
    return read_topic(kafka, settings.blocked_topic, wanted, progress), settings


def _check_filter_values(library: Any, partner: str | None, reason: str | None, rule: str | None) -> None:
    """Refuse a filter naming a partner, reason code or rule id that no known ruleset has."""
    from streams.core.reasons import Reason

    if not (partner or reason or rule):
        return
    rulesets = library.known() if (partner or rule) else []
    valid = {
        "--partner": sorted({p for r in rulesets for p in r.partners}),
        "--reason": sorted(str(r) for r in Reason),
        "--rule": sorted({c.rule_id for r in rulesets for c in r.rules}),
    }
    for option, value in (("--partner", partner), ("--reason", reason), ("--rule", rule)):
        if value is not None and value not in valid[option]:
            known = ", ".join(valid[option]) or f"none found in {library.searched()}"
            err.print(
                f"{option} {value}: unknown; valid: {known}", highlight=False, markup=False, soft_wrap=True
            )
            raise typer.Exit(EXIT_COULD_NOT_RUN)


def _progress_bar() -> tuple[Any, Any]:
    """A progress bar on stderr (records read of records to read) and its update callback."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(
        TextColumn("reading blocked topic"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    task = bar.add_task("read", total=None)

    def update(read: int, to_read: int) -> None:
        bar.update(task, completed=read, total=to_read)

    return bar, update


def _filter(
    since: str | None, until: str | None, partner: str | None, reason: str | None, rule: str | None
) -> Any:
    from streams.audit.source import BlockedFilter, parse_time

    try:
        return BlockedFilter(parse_time(since), parse_time(until), partner, reason, rule)
    except ValueError as exc:
        err.print(f"--since/--until: {exc}")
        raise typer.Exit(EXIT_COULD_NOT_RUN) from None


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
        typer.Option(
            "--verify-rules",
            metavar="DIR",
            help="rules directories to find recorded digests in"
            " (default: PARTNER_GUARD_RULES_DIR, else ./rules)",
        ),
    ] = None,
    git_history: Annotated[
        bool, typer.Option("--git/--no-git", help="also search rules/ in git history")
    ] = True,
    whatif_rules: Annotated[
        Path | None, typer.Option("--rules", help="what-if: a proposed rules directory")
    ] = None,
    whatif_ref: Annotated[
        str | None,
        typer.Option("--rules-ref", help="what-if: rules/ at a git ref of --git-dir, with its schema"),
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
    git_dir: Annotated[
        Path, typer.Option("--git-dir", help="repository whose rules/ and schema history holds past rulesets")
    ] = Path("."),
    allow_empty: Annotated[
        bool, typer.Option("--allow-empty", help="exit 0 when the filters select no record")
    ] = False,
    with_forwarded: Annotated[
        bool,
        typer.Option(
            "--forwarded", help="also check what partners received (as `replay forwarded`; first in --html)"
        ),
    ] = False,
) -> None:
    """Re-decide blocked records under the ruleset that decided them; exit 1 on any mismatch."""
    if ctx.invoked_subcommand is not None:
        return
    import tempfile

    from streams.audit.replay import replay
    from streams.audit.report import print_summary, write_html, write_jsonl
    from streams.audit.report_model import ReplayRun
    from streams.audit.rulesets import RulesetLibrary, ruleset_at_ref, with_replay_keys

    refusal_words("replay")
    library = RulesetLibrary(verify_rules or [default_rules_dir()[0]], git_dir if git_history else None)
    _check_filter_values(library, partner, reason, rule)
    bar, on_progress = _progress_bar()
    wanted = _filter(since, until, partner, reason, rule)
    records, settings = _blocked_records(from_file, config, wanted, on_progress)
    whatif = None
    if whatif_rules is not None:
        whatif = with_replay_keys(load_ruleset_or_exit(whatif_rules))
    elif whatif_ref is not None:
        try:
            whatif = ruleset_at_ref(git_dir, whatif_ref, Path(tempfile.mkdtemp()))
        except RulesetError as exc:
            err.print(f"--rules-ref {whatif_ref}: cannot load rules there ({exc})")
            raise typer.Exit(EXIT_COULD_NOT_RUN) from None
    keyring = _replay_keyring(payload_keys_file)
    try:
        with bar:
            records = _with_originals(list(records), settings, config)
            avro = _job_avro_decoder(settings, config)
            result = replay(records, library, keyring, whatif, avro)
            if whatif is not None:
                result.new_partners = _new_partners(
                    result, library, whatif, settings, keyring, avro, since, until
                )
    except (OSError, RuntimeError, KafkaException) as exc:
        err.print(f"replay could not run: {exc}", highlight=False, markup=False)
        raise typer.Exit(EXIT_COULD_NOT_RUN) from None
    console = stdout_console()
    received = _received(settings, config, library, partner, since, until) if with_forwarded else None
    if not result.outcomes:
        console.print("no blocked record selected: nothing was verified")
        if not allow_empty:
            raise typer.Exit(EXIT_NOTHING_SELECTED)
    if received is not None:
        from streams.audit.report import print_forwarded

        print_forwarded(console, received)
    print_summary(console, result, whatif is not None)
    if jsonl:
        write_jsonl(result, jsonl)
    if html_out:
        source = f"file {from_file}" if from_file is not None else _topic_source(settings)
        filters = {"--since": since, "--until": until, "--partner": partner, "--reason": reason}
        filters["--rule"] = rule
        whatif_label = None
        if whatif is not None:
            given = f"--rules {whatif_rules}" if whatif_rules is not None else f"--rules-ref {whatif_ref}"
            whatif_label = f"{given} (digest {whatif.digest})"
        run = ReplayRun.describe(source, filters, library.searched(), whatif_label, datetime.now(UTC))
        optouts = _optouts_section(settings, since, (verify_rules or [Path("rules")])[0])
        write_html(result, html_out, run, whatif is not None, received, optouts)
    if republish_records:
        _republish(result, settings, whatif, keyring, keys_dir, dry_run, console)
    if result.failed or (received is not None and received.level == "red"):
        raise typer.Exit(EXIT_MISMATCH)
    raise typer.Exit(EXIT_INVALID_RECORDS if result.has_invalid else 0)


def _received(
    settings: Any,
    config: Path | None,
    library: Any,
    partner: str | None,
    since: str | None,
    until: str | None,
) -> Any:
    """`replay --forwarded`: what the partners received, with today's rules/ as the leak scan's vocabulary."""
    from streams.audit.forwarded import audit_forwarded
    from streams.audit.rulesets import with_replay_keys
    from streams.audit.source import parse_time
    from streams.runtime.config import ConfigError, load_settings

    if settings is None:
        try:
            settings = load_settings(config)
        except ConfigError as exc:
            err.print(f"--forwarded reads the partner topics: {exc}", highlight=False, markup=False)
            raise typer.Exit(EXIT_COULD_NOT_RUN) from None
    today = with_replay_keys(load_ruleset_or_exit(*default_rules_dir()))
    range_text = f"written {since or 'from the start'} to {until or 'the end'} (UTC)"
    try:
        return audit_forwarded(
            settings.kafka_base(),
            today,
            library,
            partner,
            list(settings.input_topics),
            settings.blocked_topic,
            parse_time(since),
            parse_time(until),
            range_text,
        )
    except (OSError, RuntimeError, KafkaException) as exc:
        err.print(f"--forwarded could not run: {exc}", highlight=False, markup=False)
        raise typer.Exit(EXIT_COULD_NOT_RUN) from None


def _new_partners(
    result: Any,
    library: Any,
    whatif: Ruleset,
    settings: Any,
    keyring: Any,
    avro: Any,
    since: str | None,
    until: str | None,
) -> Any:
    """What-if for partners the proposed ruleset adds: every input decided (None when it adds none)."""
    from streams.audit.newpartners import added_partners, decide_new_partners, read_source_inputs, redecoder
    from streams.audit.republish import _current_state
    from streams.audit.source import parse_time
    from streams.runtime.kafka.avro_input import decode_input
    from streams.runtime.state.tables import snapshot_for

    digests = {o.blocked.get("ruleset_digest") for o in result.outcomes}
    recorded = [r for d in digests if isinstance(d, str) and (r := library.find(d)) is not None]
    added = added_partners(whatif, recorded or library.known())
    if not added:
        return None
    if settings is None:
        why = "an exported file was replayed (--from-file): no source topics or state to read"
        return decide_new_partners(result.outcomes, whatif, added, redecoder(keyring, avro), None, None, why)
    consent, status = _current_state(settings.kafka_base(), settings)
    decoder = avro.decoder(whatif.event_schema)

    def decode(topic: str, raw: bytes | None) -> Any:
        return decode_input(raw, settings.topic_format(topic), decoder, None)

    inputs = read_source_inputs(
        settings.kafka_base(), settings.input_topics, parse_time(since), parse_time(until), decode
    )
    return decide_new_partners(
        result.outcomes,
        whatif,
        added,
        redecoder(keyring, avro),
        lambda record: snapshot_for(record, consent, status, False),
        inputs,
    )


def _optouts_section(settings: Any, since: str | None, rules: Path) -> Any:
    """The report's notices section, read from the partners' notice topics (None without Kafka
    settings, as for `--from-file`; a note when they cannot be read)."""
    from streams.audit.optouts import NoticeReport, read_notices, report_section
    from streams.audit.source import parse_time
    from streams.core.rules.loader import load_ruleset

    if settings is None:
        return None
    try:
        ruleset = load_ruleset(rules)
        topics = {r.partner: r.source.optout_topic for r in ruleset.rules if r.source.optout_notices.sends}
        report = read_notices(settings.kafka_base(), topics, parse_time(since))
    except (RulesetError, RuntimeError, KafkaException, ValueError) as exc:
        section = report_section(NoticeReport(), [], since)
        section.notes.append(f"notices could not be read: {type(exc).__name__}")
        return section
    return report_section(report, list(topics), since)


def _topic_source(settings: Any) -> str:
    """The blocked topic and the cluster it was read from, for the report's header."""
    return f"topic {settings.blocked_topic} on {settings.bootstrap_servers}"


def _with_originals(records: list[Any], settings: Any, config: Path | None) -> list[Any]:
    """Fetch originals kept by reference from their source topics (when Kafka is configured)."""
    from streams.audit.source import resolve_references
    from streams.runtime.config import ConfigError, load_settings

    if not any(isinstance(r, dict) and r.get("payload_mode") == "reference" for r in records):
        return records
    if settings is None:
        try:
            settings = load_settings(config)
        except ConfigError:
            err.print("originals kept by reference: set the Kafka settings to fetch them from the source")
            return records
    resolve_references(records, settings.kafka_base())
    return records


def _job_avro_decoder(settings: Any, config: Path | None) -> Any:
    """The job's Avro decoding (registry or pinned id) from the settings, for Avro originals.

    An exported file is read without settings: they are loaded here if they can be (the
    `--config` file, the environment); without them every schema id reads as the guard's own.
    """
    from streams.runtime.config import ConfigError, load_settings
    from streams.runtime.kafka.avro_input import ReplayAvro

    if settings is None:
        try:
            settings = load_settings(config)
        except ConfigError:
            settings = None
    return ReplayAvro(settings)


def _replay_keyring(keys_file: Path | None) -> Any:
    from streams.runtime.formats.payload import Keyring, PayloadKeyError

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
    from streams.runtime.kafka.calls import TransactionFatalError

    if whatif is None or settings is None:
        err.print("--republish needs --rules (the corrected ruleset) and the blocked topic, not --from-file")
        raise typer.Exit(EXIT_COULD_NOT_RUN)
    try:
        loaded = load_keys(whatif.partners, keys_dir or settings.keys_dir, False)
    except MissingKeyError as exc:
        err.print(f"refusing to republish: {exc}", highlight=False, markup=False)
        raise typer.Exit(EXIT_COULD_NOT_RUN) from None
    try:
        outcome = republish(result.outcomes, settings, whatif.with_keys(loaded.keys), keyring, dry_run)
    except (TransactionFatalError, KafkaException) as exc:
        err.print(f"republish could not run: {exc}", highlight=False, markup=False)
        raise typer.Exit(EXIT_COULD_NOT_RUN) from None
    verb = "would send" if dry_run else "sent"
    count = len(outcome.planned) if dry_run else outcome.sent
    console.print(
        f"republish: {outcome.candidates} candidate(s); {verb} {count}; "
        f"already sent {outcome.already_sent}; refused by fresh consent/status check "
        f"{outcome.refused_by_fresh_check}; loop-guarded {outcome.loop_guarded}; "
        f"not verified {outcome.unverified}; original not at its source {outcome.source_mismatch}; "
        f"duplicates {outcome.duplicates}"
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
    try:
        count = export(records, out)
    except (OSError, RuntimeError, KafkaException) as exc:
        err.print(f"export could not run: {exc}", highlight=False, markup=False)
        raise typer.Exit(EXIT_COULD_NOT_RUN) from None
    print(f"exported {count:,} blocked record(s) to {out}")


@replay_app.command("forwarded")
def replay_forwarded(
    config: ConfigOpt = None,
    since: Annotated[str | None, typer.Option("--since", help="ISO time: written at or after")] = None,
    until: Annotated[str | None, typer.Option("--until", help="ISO time: written before")] = None,
    partner: Partner = None,
    rules: Annotated[
        Path | None,
        typer.Option(
            "--rules",
            help="today's rules: partner topics and the leak re-scan's vocabulary "
            "(default: PARTNER_GUARD_RULES_DIR, else ./rules)",
        ),
    ] = None,
    verify_rules: Annotated[
        list[Path] | None,
        typer.Option("--verify-rules", help="rules directories to find recorded digests in (default rules/)"),
    ] = None,
    git_history: Annotated[
        bool, typer.Option("--git/--no-git", help="also search rules/ in git history")
    ] = True,
    git_dir: Annotated[
        Path, typer.Option("--git-dir", help="repository whose rules/ and schema history holds past rulesets")
    ] = Path("."),
    inputs: Annotated[
        bool,
        typer.Option("--inputs/--no-inputs", help="cross-check against the source topics (conservation)"),
    ] = True,
    sample_every: Annotated[
        int,
        typer.Option("--sample-every", min=1, help="conservation on inputs whose offset is a multiple of N"),
    ] = 1,
    jsonl: Annotated[Path | None, typer.Option("--jsonl", help="one JSON line per partner record")] = None,
    html_out: Annotated[
        Path | None, typer.Option("--html", help="write a self-contained HTML report")
    ] = None,
    allow_empty: Annotated[
        bool, typer.Option("--allow-empty", help="exit 0 when no partner record is in the range")
    ] = False,
) -> None:
    """What each partner received: leak re-scan, projection at the recorded digest, conservation.

    Exit 0 green or amber, 1 a finding (a leak today's scan flags, a record its rule could not
    produce, an input not forwarded or blocked exactly once), 4 no partner record in the
    range, 2 could not run.
    """
    from streams.audit.forwarded import audit_forwarded
    from streams.audit.report import print_forwarded, write_forwarded_html, write_forwarded_jsonl
    from streams.audit.report_model import ReplayRun
    from streams.audit.rulesets import RulesetLibrary, with_replay_keys
    from streams.audit.source import parse_time
    from streams.runtime.config import ConfigError, load_settings

    refusal_words("replay forwarded")
    rules_dir, source = (rules, "--rules") if rules is not None else default_rules_dir()
    today = with_replay_keys(load_ruleset_or_exit(rules_dir, source))
    if partner is not None and partner not in today.partners:
        err.print(f"--partner {partner}: unknown; valid: {', '.join(today.partners)}", highlight=False)
        raise typer.Exit(EXIT_COULD_NOT_RUN)
    try:
        since_ms, until_ms = parse_time(since), parse_time(until)
    except ValueError as exc:
        err.print(f"--since/--until: {exc}")
        raise typer.Exit(EXIT_COULD_NOT_RUN) from None
    try:
        settings = load_settings(config)
    except ConfigError as exc:
        err.print(str(exc), highlight=False, markup=False)
        raise typer.Exit(EXIT_COULD_NOT_RUN) from None
    library = RulesetLibrary(verify_rules or [rules_dir], git_dir if git_history else None)
    range_text = f"written {since or 'from the start'} to {until or 'the end'} (UTC)"
    if sample_every > 1:
        range_text += f"; conservation on a sample: inputs whose offset is a multiple of {sample_every}"
    try:
        audit = audit_forwarded(
            settings.kafka_base(),
            today,
            library,
            partner,
            list(settings.input_topics) if inputs else None,
            settings.blocked_topic,
            since_ms,
            until_ms,
            range_text,
            sample_every,
        )
    except (OSError, RuntimeError, KafkaException) as exc:
        err.print(f"replay forwarded could not run: {exc}", highlight=False, markup=False)
        raise typer.Exit(EXIT_COULD_NOT_RUN) from None
    console = stdout_console()
    print_forwarded(console, audit)
    if jsonl:
        write_forwarded_jsonl(audit, jsonl)
    if html_out:
        filters = {"--since": since, "--until": until, "--partner": partner}
        source = f"partner topics on {settings.bootstrap_servers}"
        run = ReplayRun.describe(source, filters, library.searched(), None, datetime.now(UTC))
        write_forwarded_html(audit, html_out, run)
    if audit.level == "red":
        raise typer.Exit(EXIT_MISMATCH)
    if audit.total == 0 and not allow_empty:
        raise typer.Exit(EXIT_NOTHING_SELECTED)
    raise typer.Exit(0)


@replay_app.command("optouts")
def replay_optouts(
    config: ConfigOpt = None,
    since: Since = None,
    partner: Partner = None,
    rules: Annotated[Path, typer.Option("--rules", help="rules directory naming the notice topics")] = Path(
        "rules"
    ),
    listing: Annotated[
        bool, typer.Option("--list", help="also list every notice (no identifier values)")
    ] = False,
    html_out: Annotated[
        Path | None, typer.Option("--html", help="write the notices as an HTML section")
    ] = None,
) -> None:
    """List the opt-out and deletion notices sent, per partner, with counts."""
    from streams.audit.optouts import read_notices, summary_lines, write_html
    from streams.audit.source import parse_time
    from streams.runtime.config import ConfigError, load_settings

    ruleset = load_ruleset_or_exit(rules)
    topics = {r.partner: r.source.optout_topic for r in ruleset.rules if r.source.optout_notices.sends}
    if partner is not None:
        if partner not in topics:
            err.print(
                f"--partner {partner}: unknown or sent no notices; valid: {', '.join(topics) or 'none'}"
            )
            raise typer.Exit(EXIT_COULD_NOT_RUN)
        topics = {partner: topics[partner]}
    try:
        since_ms = parse_time(since)
        settings = load_settings(config)
    except ValueError as exc:
        err.print(f"--since: {exc}")
        raise typer.Exit(EXIT_COULD_NOT_RUN) from None
    except ConfigError as exc:
        err.print(str(exc), highlight=False, markup=False)
        raise typer.Exit(EXIT_COULD_NOT_RUN) from None
    try:
        report = read_notices(settings.kafka_base(), topics, since_ms)
    except (RuntimeError, KafkaException) as exc:
        err.print(f"replay optouts could not run: {exc}", highlight=False, markup=False)
        raise typer.Exit(EXIT_COULD_NOT_RUN) from None
    console = Console()
    for line in summary_lines(report, list(topics)):
        console.print(line, highlight=False, markup=False)
    if listing:
        for n in report.notices:
            console.print(
                f"{n.partner} {n.kind} {n.changed_at} choices={','.join(n.choices) or '-'} "
                f"fields={','.join(n.fields)} id={n.notice_id}",
                highlight=False,
                markup=False,
            )
    if html_out is not None:
        write_html(report, list(topics), since, html_out)
