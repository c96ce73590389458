"""docker-compose.yml, the Dockerfile, Prometheus and Grafana wiring — validated, since no Docker
engine runs on the build machines. The dashboard's metrics are checked against a real run in
`tests/integration/test_dashboard_metrics.py`."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from streams.core.rules.loader import load_ruleset
from streams.runtime.config import ConfigError, Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]
PINNED = re.compile(r"^[\w./-]+:(?!latest$)[\w.-]*\d[\w.-]*$")


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = YAML(typ="safe").load((ROOT / "docker-compose.yml").read_text())
    return loaded


def _guard_settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    for name, value in _compose()["services"]["guard"]["environment"].items():
        monkeypatch.setenv(name, str(value))
    return load_settings()


def dashboard_metrics() -> set[str]:
    """Metric names the Grafana dashboard queries."""
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/partner-guard.json").read_text())
    names = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            for name in re.findall(r"partner_guard_[a-z_]+", target["expr"]):
                names.add(re.sub(r"_(bucket|sum|count)$", "", name))
    return names


def test_every_image_is_pinned() -> None:
    for name, service in _compose()["services"].items():
        assert PINNED.match(service["image"]), (name, service["image"])
    assert "kafka" in _compose()["services"] and _compose()["services"]["kafka"]["image"].startswith(
        "apache/kafka:"
    )


def test_kafka_runs_in_kraft_mode() -> None:
    env = _compose()["services"]["kafka"]["environment"]
    assert "controller" in env["KAFKA_PROCESS_ROLES"] and "KAFKA_CONTROLLER_QUORUM_VOTERS" in env
    assert "KAFKA_ZOOKEEPER_CONNECT" not in env


def test_guard_environment_is_accepted_by_its_settings_model(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _guard_settings(monkeypatch)
    assert settings.bootstrap_servers == "kafka:19092"
    assert settings.keys_dir == Path("/run/secrets")
    secrets = set(_compose()["services"]["guard"]["secrets"])
    assert secrets == {f"{p}.key" for p in load_ruleset(ROOT / "rules").partners}


def test_topic_setup_creates_exactly_the_topics_the_guard_uses(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _guard_settings(monkeypatch)
    script = "\n".join(_compose()["services"]["topic-setup"]["command"])
    created = dict(re.findall(r"--topic (\S+)(.*)", script))
    ruleset = load_ruleset(ROOT / "rules")
    used = {
        *settings.input_topics,
        settings.consent_topic,
        settings.signup_status_topic,
        settings.blocked_topic,
        *(rule.topic for rule in ruleset.rules),
        settings.forwarded_topic,
        *(rule.source.optout_topic for rule in ruleset.rules if rule.source.optout_notices.sends),
    }
    assert set(created) == used
    for compacted in (settings.consent_topic, settings.signup_status_topic, settings.forwarded_topic):
        assert "cleanup.policy=compact" in created[compacted]
    assert _compose()["services"]["guard"]["depends_on"]["topic-setup"]["condition"] == (
        "service_completed_successfully"
    )


def test_ports_and_scrape_target_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _guard_settings(monkeypatch)
    assert _compose()["services"]["guard"]["expose"] == [str(settings.metrics_port)]
    assert "ports" not in _compose()["services"]["guard"]  # a fixed host port would stop --scale
    prometheus = YAML(typ="safe").load((ROOT / "deploy/prometheus.yml").read_text())
    (discovery,) = prometheus["scrape_configs"][0]["dns_sd_configs"]
    assert discovery == {"names": ["guard"], "type": "A", "port": settings.metrics_port}
    mounted = _compose()["services"]["prometheus"]["volumes"][0].split(":")[0]
    assert (ROOT / mounted).resolve() == (ROOT / "deploy/prometheus.yml").resolve()


def test_the_guard_scales_to_several_replicas(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each replica derives its own stable transactional id from its container's hostname."""
    settings = _guard_settings(monkeypatch)
    ids = {settings.resolved_transactional_id(host, 1) for host in ("3f2a9c1b", "7d0e44aa")}
    assert len(ids) == 2
    assert settings.resolved_transactional_id("3f2a9c1b", 1) == settings.resolved_transactional_id(
        "3f2a9c1b", 2
    )


def test_dockerfile_shape() -> None:
    text = (ROOT / "Dockerfile").read_text()
    base = re.search(r"^FROM (\S+)", text, re.MULTILINE)
    assert base and PINNED.match(base.group(1))
    user = re.findall(r"^USER (\S+)", text, re.MULTILINE)
    assert user and not user[-1].startswith(("root", "0"))
    assert re.search(r"^HEALTHCHECK .*\n?.*/healthz", text, re.MULTILINE)
    assert "EXPOSE 9108" in text
    assert 'ENTRYPOINT ["partner-guard"]' in text


def test_dockerfile_installs_the_built_wheel_not_the_source_tree() -> None:
    text = (ROOT / "Dockerfile").read_text()
    final = text.split("\nFROM ")[-1]  # the runtime stage
    assert re.search(r"pip wheel .*--no-deps", text)
    assert "pip install --no-compile /tmp/dist/partner_guard-*.whl" in final
    assert " -e " not in text and "COPY streams" not in final


def test_grafana_provisioning_points_at_the_dashboard() -> None:
    provider = YAML(typ="safe").load(
        (ROOT / "deploy/grafana/provisioning/dashboards/partner-guard.yml").read_text()
    )
    path = provider["providers"][0]["options"]["path"]
    mounts = dict(v.split(":")[:2][::-1] for v in _compose()["services"]["grafana"]["volumes"])
    assert (ROOT / mounts[path] / "partner-guard.json").is_file()
    datasource = YAML(typ="safe").load(
        (ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text()
    )
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    assert {
        "partner_guard_records_in_total",
        "partner_guard_leaks_caught_total",
        "partner_guard_state_lag_records",
        "partner_guard_end_to_end_latency_seconds",
        "partner_guard_block_reasons_total",
        "partner_guard_decisions_total",
    } <= dashboard_metrics()


def test_the_disk_state_store_lives_on_a_volume(monkeypatch: pytest.MonkeyPatch) -> None:
    """The image's VOLUME holds the state dir: one anonymous volume per container, never shared."""
    settings = _guard_settings(monkeypatch)
    guard = _compose()["services"]["guard"]
    assert settings.state_store == "rocksdb"
    assert "volumes" not in guard  # a named volume would be shared by every replica
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "VOLUME /var/lib/partner-guard" in dockerfile
    assert str(settings.state_dir).startswith("/var/lib/partner-guard/")


def test_a_transactional_id_placeholder_other_than_hostname_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PARTNER_GUARD_BOOTSTRAP_SERVERS", "kafka:19092")
    monkeypatch.setenv("PARTNER_GUARD_TRANSACTIONAL_ID", "partner-guard-{pod}")
    with pytest.raises(ConfigError, match="only placeholder"):
        load_settings()
