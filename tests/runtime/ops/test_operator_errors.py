"""What an operator sees when something is wrong: one line, the setting, its value, exit 2.

Each test runs `partner-guard` as a real process (no broker needed: the failures come
before one is used, or the bootstrap points at a closed port).
"""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from streams.broker.embedded import free_port
from streams.runtime.ops.logs import JsonFormatter, RateLimit

ROOT = Path(__file__).resolve().parents[3]
RULES = ROOT / "rules"
KEYS = {
    "PARTNER_GUARD_KEY_INSTALL_ATTRIBUTION": "operator-test-key-install-01",
    "PARTNER_GUARD_KEY_SIGNUP_CONVERSIONS": "operator-test-key-signup-001",
}


def run_cli(
    args: list[str], env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PARTNER_GUARD_")}
    return subprocess.run(
        [sys.executable, "-m", "streams", *args],
        env={**clean, "PARTNER_GUARD_METRICS_PORT": "0", **(env or {})},
        cwd=cwd or ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def refusal(result: subprocess.CompletedProcess[str], words: str = "refusing to start") -> str:
    """The single refusal line; every other stderr line must be JSON (no traceback)."""
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    refusals = [line for line in lines if line.startswith(f"{words}: ")]
    assert len(refusals) == 1, result.stderr
    for line in lines:
        if line not in refusals:
            orjson.loads(line)
    return refusals[0]


def test_unreachable_bootstrap_is_one_line_and_exit_2() -> None:
    port = free_port()
    result = run_cli(
        ["run", "--rules", str(RULES)],
        {
            **KEYS,
            "PARTNER_GUARD_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}",
            "PARTNER_GUARD_BOOTSTRAP_TIMEOUT_MS": "1500",
        },
    )
    line = refusal(result)
    assert line.startswith(f"refusing to start: cannot reach bootstrap 127.0.0.1:{port} (")
    assert (
        "after 1.5 s: " in line and f"127.0.0.1:{port}" in line.split("after 1.5 s: ")[1]
    )  # librdkafka's cause
    assert "Traceback" not in result.stderr


def test_bad_librdkafka_passthrough_value_names_setting_and_value() -> None:
    result = run_cli(
        ["run", "--rules", str(RULES)],
        {**KEYS, "PARTNER_GUARD_BOOTSTRAP_SERVERS": "127.0.0.1:1", "PARTNER_GUARD_KAFKA_ACKS": "sometimes"},
    )
    line = refusal(result)
    assert "setting 'kafka.acks' = 'sometimes' (env PARTNER_GUARD_KAFKA_ACKS)" in line


def test_metrics_port_in_use_names_setting_and_value() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli(
            ["run", "--rules", str(RULES)],
            {
                **KEYS,
                "PARTNER_GUARD_BOOTSTRAP_SERVERS": "127.0.0.1:1",
                "PARTNER_GUARD_METRICS_HOST": "127.0.0.1",
                "PARTNER_GUARD_METRICS_PORT": str(port),
            },
        )
    line = refusal(result)
    assert f"setting 'metrics_port' = {port} (env PARTNER_GUARD_METRICS_PORT)" in line and "in use" in line


def test_unreadable_keys_dir_names_setting_and_value(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "keys"
    not_a_dir.write_text("x")
    result = run_cli(
        ["run", "--rules", str(RULES), "--keys-dir", str(not_a_dir), "--dev"],
        {"PARTNER_GUARD_BOOTSTRAP_SERVERS": "127.0.0.1:1"},
    )
    assert f"setting 'keys_dir' = '{not_a_dir}': not a directory" in refusal(result)


def test_short_key_file_says_its_length_and_how_key_files_are_read(tmp_path: Path) -> None:
    (tmp_path / "install-attribution.key").write_bytes(b"  short-key \n")
    result = run_cli(
        ["run", "--rules", str(RULES), "--keys-dir", str(tmp_path)],
        {
            "PARTNER_GUARD_BOOTSTRAP_SERVERS": "127.0.0.1:1",
            "PARTNER_GUARD_KEY_SIGNUP_CONVERSIONS": KEYS["PARTNER_GUARD_KEY_SIGNUP_CONVERSIONS"],
        },
    )
    line = refusal(result)
    assert f"from {tmp_path}/install-attribution.key is 9 bytes; at least 16" in line
    assert "raw bytes" in line and "base64" in line
    assert "PARTNER_GUARD_KEY_INSTALL_ATTRIBUTION" not in line  # the key did not come from there


def test_typo_in_config_file_gets_did_you_mean_and_no_env_name(tmp_path: Path) -> None:
    config = tmp_path / "guard.yaml"
    config.write_text("bootstrap_servers: kafka:9092\nmetrics_prot: 9200\nbatch_size: lots\n")
    line = refusal(run_cli(["run", "--config", str(config)]))
    assert f"unknown setting 'metrics_prot' in {config} (did you mean 'metrics_port'?)" in line
    assert f"setting 'batch_size' = 'lots' (file {config})" in line
    assert "PARTNER_GUARD_BATCH_SIZE" not in line


def test_typo_in_environment_gets_did_you_mean() -> None:
    line = refusal(
        run_cli(["run"], {"PARTNER_GUARD_BOOTSTRAP_SERVER": "kafka:9092", "PARTNER_GUARD_BATCH_SIZE": "x"})
    )
    assert (
        "unknown variable PARTNER_GUARD_BOOTSTRAP_SERVER (did you mean 'PARTNER_GUARD_BOOTSTRAP_SERVERS'?)"
        in line
    )
    assert "setting 'batch_size' = 'x' (env PARTNER_GUARD_BATCH_SIZE)" in line


def test_missing_rules_dir_says_where_it_looked_without_hard_wrapping(tmp_path: Path) -> None:
    deep = tmp_path / ("a-long-directory-name-" * 4) / "rules"
    result = run_cli(["decide", "--rules", str(deep), "--dev"], cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and len(lines[0]) > 120, result.stderr  # not wrapped at 80 columns
    assert str(deep) in lines[0] and "--rules" in lines[0] and "PARTNER_GUARD_RULES_DIR" in lines[0]


def test_version_names_package_kafka_client_schema_and_ruleset() -> None:
    result = run_cli(["--version", "--rules", str(RULES)])
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert re.search(r"^partner-guard \d+\.\d+\.\d+", out, re.M)
    assert re.search(r"^confluent-kafka \S+ \(librdkafka \S+\)", out, re.M)
    assert re.search(r"^event schema fingerprint [0-9a-f]{64}$", out, re.M)
    assert re.search(r"^ruleset digest sha256:[0-9a-f]{64} ", out, re.M)


def test_log_lines_carry_milliseconds_and_a_timezone() -> None:
    record = logging.LogRecord("streams.x", logging.INFO, __file__, 1, "hello %d", (1,), None)
    entry = orjson.loads(JsonFormatter().format(record))
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", entry["ts"])
    assert entry["msg"] == "hello 1"


def test_librdkafka_lines_are_rate_limited_and_the_drop_is_counted() -> None:
    now = [0.0]
    limit = RateLimit(limit=3, window_s=10.0, clock=lambda: now[0])

    def line() -> logging.LogRecord:
        return logging.LogRecord(
            "librdkafka", logging.ERROR, __file__, 1, "%s [%s] %s", ("FAIL", "rdkafka", "down"), None
        )

    passed = [limit.filter(line()) for _ in range(100)]
    assert passed.count(True) == 3
    now[0] = 11.0
    after = line()
    assert limit.filter(after) and "97 earlier librdkafka line(s) suppressed" in after.getMessage()


@pytest.mark.parametrize(
    "name", ["PARTNER_GUARD_KEY_ACME", "PARTNER_GUARD_TEST_BOOTSTRAP", "PARTNER_GUARD_KAFKA_ACKS"]
)
def test_variables_read_elsewhere_are_not_called_typos(name: str) -> None:
    from streams.runtime.config import unknown_env_settings

    assert unknown_env_settings({name: "x", "PARTNER_GUARD_GROUPID": "g"}) == ["PARTNER_GUARD_GROUPID"]


def test_librdkafka_lines_arrive_as_json_log_records(caplog: pytest.LogCaptureFixture) -> None:
    import time

    from confluent_kafka import Producer

    from streams.runtime.ops.logs import librdkafka_logger

    producer = Producer({"bootstrap.servers": f"127.0.0.1:{free_port()}", "logger": librdkafka_logger()})
    deadline = time.monotonic() + 60  # a hang guard: librdkafka reports the refused connection at once
    with caplog.at_level(logging.INFO, logger="librdkafka"):
        while time.monotonic() < deadline and not any(r.name == "librdkafka" for r in caplog.records):
            producer.poll(0.2)
    record = next(r for r in caplog.records if r.name == "librdkafka")
    entry = orjson.loads(JsonFormatter().format(record))
    assert entry["logger"] == "librdkafka" and "127.0.0.1" in entry["msg"]


def test_refusals_never_print_secret_values(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from streams.runtime.config import ConfigError, load_settings

    for name in [n for n in os.environ if n.startswith("PARTNER_GUARD_")]:
        monkeypatch.delenv(name)
    config = tmp_path / "guard.yaml"
    config.write_text("bootstrap_servers: k:9092\nkafka: {sasl.password: hunter2, group.id: x}\n")
    with pytest.raises(ConfigError) as refused:
        load_settings(config)
    assert "hunter2" not in str(refused.value) and "'sasl.password': '***'" in str(refused.value)
    monkeypatch.setenv("PARTNER_GUARD_BOOTSTRAP_SERVERS", "k:9092")
    monkeypatch.setenv("PARTNER_GUARD_INPUT_FORMATS", "internal.events=avro")
    monkeypatch.setenv("PARTNER_GUARD_SCHEMA_REGISTRY_BASIC_AUTH", "guard:s3cret")
    monkeypatch.setenv("PARTNER_GUARD_SCHEMA_REGISTRY_URL", "")
    with pytest.raises(ConfigError) as refused:
        load_settings()
    assert "s3cret" not in str(refused.value) and "avro_schema_id" in str(refused.value)


def test_every_command_reports_the_projects_errors_one_way(tmp_path: Path) -> None:
    """A refused ruleset, a missing key, a bad setting: one line in the command's words
    (`refusing to start: ...` for `run`), exit 2, no traceback."""
    (tmp_path / "acme.yaml").write_text("partner: acme\njurisdictions: [US]\nevents: {}\n")
    (tmp_path / "_leak-scan.yaml").write_text((RULES / "_leak-scan.yaml").read_text())
    rules = run_cli(["rules", "check", str(tmp_path)])
    assert rules.returncode == 2 and "Traceback" not in rules.stderr
    first, *problems = rules.stderr.strip().splitlines()
    assert first == "rules check: rules refused (1 problem(s)):"  # it checks; it starts nothing
    assert len(problems) == 1 and problems[0].startswith(f"  {tmp_path / 'acme.yaml'}:3: events:")
    no_key = run_cli(["decide", "--rules", str(RULES)])
    assert "PARTNER_GUARD_KEY_INSTALL_ATTRIBUTION" in refusal(no_key, "decide")
    bad_setting = run_cli(["run", "--rules", str(RULES)], env={"PARTNER_GUARD_BATCH_SIZE": "lots"})
    assert "setting 'batch_size'" in refusal(bad_setting)


def test_the_projects_errors_share_one_base() -> None:
    from streams.core.errors import PartnerGuardError, RefusalError
    from streams.core.rules.loader import RulesetError
    from streams.core.signals.bits import SignalError
    from streams.runtime.config import ConfigError
    from streams.runtime.ops.faults import InjectedFaultError
    from streams.runtime.ops.preflight import StartupRefusedError
    from streams.runtime.ops.secrets import KeysDirError, MissingKeyError

    refusals = (RulesetError, ConfigError, StartupRefusedError, MissingKeyError, KeysDirError)
    for error in (*refusals, SignalError, InjectedFaultError):
        assert issubclass(error, PartnerGuardError), error
    assert all(issubclass(error, RefusalError) for error in refusals)
    assert not issubclass(InjectedFaultError, RefusalError)  # raised mid-run: not "refusing to start"
    assert issubclass(SignalError, ValueError)  # what it was before, still
