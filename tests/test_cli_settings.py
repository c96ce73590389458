"""`run --help`, `check-config` and `docs/settings.md` come from the settings model, written once."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

from streams.cli import app
from streams.cli_settings import explicit_settings, setting_arguments, setting_specs, settings_markdown
from streams.runtime.config import ConfigError, Settings

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "rules"
KEYS = {
    "PARTNER_GUARD_KEY_INSTALL_ATTRIBUTION": "k" * 32,
    "PARTNER_GUARD_KEY_SIGNUP_CONVERSIONS": "s" * 32,
}


def _help(command: str) -> str:
    result = CliRunner().invoke(app, [command, "--help"], terminal_width=100)
    assert result.exit_code == 0, result.output
    return " ".join(result.output.split())  # help wraps lines: compare the words


@pytest.mark.parametrize("command", ["run", "check-config"])
def test_help_names_every_setting_its_variable_default_and_file_key(command: str) -> None:
    text = _help(command)
    for name, field in Settings.model_fields.items():
        spec = next(s for s in setting_specs() if s.name == name)
        assert spec.env in text, name
        assert f"file key {name};" in text or f"{name} (env" in text, name  # secrets: in the epilog
        if spec.kind != "secret":
            assert f"default {spec.default}]" in text, name
            assert spec.flags[0].split("/")[0] in text, name
        if field.annotation is bool:
            assert f"--{name.replace('_', '-')} / --no-{name.replace('_', '-')}" in text, name
    assert "<bool>" not in text
    assert "--rules-dir, --rules PATH" in text  # the old flag still works
    assert "--engine [kafka|faust]" in text or "--engine <kafka|faust>" in text


def test_the_secret_setting_has_no_flag() -> None:
    text = _help("run")
    assert "--schema-registry-basic-auth" not in text
    assert "schema_registry_basic_auth (env PARTNER_GUARD_SCHEMA_REGISTRY_BASIC_AUTH or the file)" in text


def test_the_settings_page_is_current() -> None:
    page = ROOT / "docs" / "settings.md"
    assert page.read_text(encoding="utf-8") == settings_markdown(), (
        "docs/settings.md is stale: regenerate it with `partner-guard settings-doc > docs/settings.md`"
    )
    for name in Settings.model_fields:
        assert f"| `{name}` |" in page.read_text(encoding="utf-8")


def test_flags_given_to_workers_parse_back_to_the_same_settings() -> None:
    """`run --workers N` hands its flags on to each worker: the same settings, read again."""
    command = typer.main.get_command(app)
    run = command.commands["run"]  # type: ignore[attr-defined]
    given = [
        "--batch-size", "10", "--dev", "--no-create-topics", "--input-topics", "a,b",
        "--input-formats", "a=avro", "--kafka", "acks=all", "--kafka", "linger.ms=5",
        "--engine", "faust", "--rules", "somewhere", "--workers", "3",
    ]  # fmt: skip
    explicit = explicit_settings(run.make_context("run", list(given)).params)
    assert explicit == {
        "batch_size": "10",
        "dev": True,
        "create_topics": False,
        "input_topics": "a,b",
        "input_formats": "a=avro",
        "kafka": {"acks": "all", "linger.ms": "5"},
        "engine": "faust",
        "rules_dir": "somewhere",
        "workers": "3",
    }
    again = setting_arguments(explicit, leave_out=("workers", "create_topics"))
    reread = explicit_settings(run.make_context("run", again).params)
    assert reread == {k: v for k, v in explicit.items() if k not in ("workers", "create_topics")}


def test_workers_never_get_the_settings_the_supervisor_sets_for_each() -> None:
    """A worker's metrics port and transactional id come from its environment (one each): a
    flag handed on would win, and every worker would bind one port and share one id."""
    from streams.runtime.workers import SUPERVISOR_SETTINGS, worker_environment

    explicit: dict[str, object] = {"metrics_port": "9200", "metrics_host": "0.0.0.0", "workers": "2"}
    explicit |= {"transactional_id": "g", "create_topics": True, "batch_size": "5"}
    assert setting_arguments(explicit, SUPERVISOR_SETTINGS) == ["--batch-size", "5"]
    settings = Settings(bootstrap_servers="k:9092", transactional_id="g", workers=2)
    per_worker = {name.removeprefix("PARTNER_GUARD_").lower() for name in worker_environment(settings, 1)}
    assert per_worker <= set(SUPERVISOR_SETTINGS)


def test_a_malformed_kafka_flag_is_refused() -> None:
    with pytest.raises(ConfigError, match="--kafka 'acks': expected PROPERTY=VALUE"):
        explicit_settings({"kafka": ["acks"]})


def _cli(
    args: list[str], env: dict[str, str] | None = None, cwd: Path = ROOT
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PARTNER_GUARD_")}
    return subprocess.run(
        [sys.executable, "-m", "streams", *args],
        env={**clean, **(env or {})},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


# No broker listens here: check-config must not need one.
NO_BROKER = {"PARTNER_GUARD_BOOTSTRAP_SERVERS": "127.0.0.1:9", "PARTNER_GUARD_RULES_DIR": str(RULES)}


def test_check_config_passes_without_a_broker() -> None:
    result = _cli(["check-config"], {**NO_BROKER, **KEYS})
    assert result.returncode == 0, result.stderr
    assert (
        "rules ok: 2 rule(s)" in result.stdout
        and "keys ok: install-attribution, signup-conversions" in result.stdout
    )
    assert "not checked: the broker (127.0.0.1:9)" in result.stdout


def test_a_flag_wins_over_the_environment() -> None:
    result = _cli(
        ["check-config", "--batch-size", "10"], {**NO_BROKER, **KEYS, "PARTNER_GUARD_BATCH_SIZE": "lots"}
    )
    assert result.returncode == 0, result.stderr
    refused = _cli(["check-config", "--batch-size", "lots"], {**NO_BROKER, **KEYS})
    assert refused.returncode == 2
    assert "setting 'batch_size' = 'lots'" in refused.stderr


def _first_refusal(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("refusing to start: ")]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    return lines[0]


@pytest.mark.parametrize(
    ("case", "env", "expected"),
    [
        ("bad setting", {**KEYS, "PARTNER_GUARD_BATCH_SIZE": "lots"}, "setting 'batch_size' = 'lots'"),
        (
            "missing key",
            {"PARTNER_GUARD_KEY_INSTALL_ATTRIBUTION": "k" * 32},
            "PARTNER_GUARD_KEY_SIGNUP_CONVERSIONS",
        ),
        ("short key", {**KEYS, "PARTNER_GUARD_KEY_SIGNUP_CONVERSIONS": "short"}, "is 5 bytes"),
        (
            "topic in two roles",
            {**KEYS, "PARTNER_GUARD_INPUT_TOPICS": "internal.events,guard.blocked"},
            "topic 'guard.blocked' is both",
        ),
        (
            "rule writing to a guard topic",
            {**KEYS, "PARTNER_GUARD_BLOCKED_TOPIC": "partner.install-attribution.events"},
            "rules refused",
        ),
        (
            "librdkafka property",
            {**KEYS, "PARTNER_GUARD_KAFKA_ACKS": "sometimes"},
            "is refused by librdkafka",
        ),
        (
            "no rules",
            {**KEYS, "PARTNER_GUARD_RULES_DIR": "/nonexistent/rules"},
            "from PARTNER_GUARD_RULES_DIR",
        ),
    ],
)
def test_check_config_refuses_as_run_refuses(case: str, env: dict[str, str], expected: str) -> None:
    checked = _cli(["check-config"], {**NO_BROKER, "PARTNER_GUARD_METRICS_PORT": "0", **env})
    run = _cli(["run"], {**NO_BROKER, "PARTNER_GUARD_METRICS_PORT": "0", **env})
    assert expected in _first_refusal(checked), case
    assert _first_refusal(checked) == _first_refusal(run), case
    assert checked.returncode == run.returncode == 2


def test_every_rules_command_takes_the_directory_the_same_way(tmp_path: Path) -> None:
    """DIR (where the command has one), --rules DIR or PARTNER_GUARD_RULES_DIR, from anywhere."""
    env = {"PARTNER_GUARD_RULES_DIR": str(RULES), **KEYS}
    args = ["rules", "check"]
    assert _cli(args, env, cwd=tmp_path).returncode == 0
    assert _cli([*args, "--rules", str(RULES)], KEYS, cwd=tmp_path).returncode == 0
    assert _cli([*args, str(RULES)], KEYS, cwd=tmp_path).returncode == 0
    both = _cli([*args, str(RULES), "--rules", str(tmp_path)], KEYS, cwd=tmp_path)
    assert both.returncode == 2 and "two rules directories" in both.stderr
    # `rules test` resolves the directory with the same function (its cases are slow to run)
    tested = _cli(["rules", "test"], env, cwd=tmp_path)
    assert tested.returncode == 0 and "P11 non-interference" in tested.stdout
    decided = subprocess.run(
        [sys.executable, "-m", "streams", "decide"],
        input='{"event": {"event_id": "e", "event_type": "app_open", "event_time": 1}}\n',
        env={**{k: v for k, v in os.environ.items() if not k.startswith("PARTNER_GUARD_")}, **env},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert decided.returncode == 0 and len(decided.stdout.splitlines()) == 2, decided.stderr
    (tmp_path / "empty.jsonl").write_bytes(b"")
    replay = [
        "replay",
        "--from-file",
        str(tmp_path / "empty.jsonl"),
        "--no-git",
        "--partner",
        "install-attribution",
    ]
    unknown = _cli(replay, KEYS, cwd=tmp_path)  # no rules here: the partner is unknown
    assert unknown.returncode == 2 and "unknown" in unknown.stderr
    known = _cli(replay, env, cwd=tmp_path)  # the variable's rules know it: nothing selected, exit 4
    assert known.returncode == 4, known.stderr


def test_rules_refusals_are_in_the_commands_words(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    for args, words in (
        (["rules", "check"], "rules check"),
        (["rules", "test"], "rules test"),
        (["decide"], "decide"),
    ):
        result = _cli(args, {"PARTNER_GUARD_RULES_DIR": str(missing)}, cwd=tmp_path)
        assert result.returncode == 2
        line = result.stderr.strip()
        assert line.startswith(f"{words}: no rules directory at {missing} (from PARTNER_GUARD_RULES_DIR"), (
            line
        )
        assert "refusing to start" not in line
        assert "pass --rules DIR or set PARTNER_GUARD_RULES_DIR" in line


def test_flags_merge_with_the_environment_and_are_named_when_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from streams.runtime.config import load_settings

    monkeypatch.setenv("PARTNER_GUARD_BOOTSTRAP_SERVERS", "k:9092")
    monkeypatch.setenv("PARTNER_GUARD_KAFKA_LINGER_MS", "5")
    monkeypatch.setenv("PARTNER_GUARD_BATCH_SIZE", "lots")  # never read: the flag wins
    settings = load_settings(None, kafka={"acks": "all"}, batch_size="10")
    assert settings.kafka == {"linger.ms": "5", "acks": "all"} and settings.batch_size == 10
    monkeypatch.setenv("PARTNER_GUARD_BATCH_SIZE", "20")
    with pytest.raises(ConfigError, match=r"setting 'batch_size' = '0' \(flag --batch-size\)"):
        load_settings(None, batch_size="0")
