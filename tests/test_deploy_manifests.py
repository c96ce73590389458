"""The Kubernetes base, the alert rules and the dashboard, checked offline.

No cluster and no Prometheus run on the build machines: the manifests are validated against
the Kubernetes OpenAPI schemas that `kubernetes-validate` ships (strict: an unknown field is
an error), and every alert and dashboard expression is parsed by a PromQL parser and may name
only metrics the guard exports (read from the metrics registry itself) or Prometheus' own `up`.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import promql_parser
import pytest
from ruamel.yaml import YAML

from streams.core.rules.loader import load_ruleset
from streams.runtime.config import HOSTNAME_PLACEHOLDER, Settings
from streams.runtime.ops.metrics import GuardMetrics

ROOT = Path(__file__).resolve().parents[1]
KUBE = ROOT / "deploy" / "kubernetes"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "partner-guard.json"
KUBERNETES_VERSION = "1.33.0"
PROMETHEUS_OWN = {"up"}
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "info": ("_info",)}


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in YAML(typ="safe").load_all(path.read_text()) if doc]


def _kustomized() -> list[dict[str, Any]]:
    kustomization = _documents(KUBE / "kustomization.yaml")[0]
    return [doc for name in kustomization["resources"] for doc in _documents(KUBE / name)]


def _by_kind(kind: str) -> list[dict[str, Any]]:
    return [doc for doc in _kustomized() if doc["kind"] == kind]


def exported_metric_names() -> set[str]:
    """Every series name a guard's registry can export (counter, histogram, info suffixes)."""
    names = set()
    for family in GuardMetrics().registry.collect():
        names.add(family.name)
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ()))
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (raises on a syntax error)."""
    found: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            found.add(node.name)

    promql_parser.walk(promql_parser.parse(expr), visit)
    return found


def _alert_rules() -> list[dict[str, Any]]:
    loaded = YAML(typ="safe").load(ALERTS.read_text())
    return [rule for group in loaded["groups"] for rule in group["rules"]]


def _dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]


@pytest.mark.parametrize("doc", _kustomized(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_every_manifest_is_valid_against_the_kubernetes_schema(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_a_broken_manifest_is_refused() -> None:
    """The validator is not a formality: a misspelt field fails it."""
    broken = json.loads(json.dumps(_by_kind("StatefulSet")[0]))
    broken["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_the_statefulset_probes_keys_state_and_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    (statefulset,) = _by_kind("StatefulSet")
    pod = statefulset["spec"]["template"]["spec"]
    (guard,) = pod["containers"]
    env = {item["name"]: item["value"] for item in guard["env"]}
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    port = {p["name"]: p["containerPort"] for p in guard["ports"]}["metrics"]
    assert port == settings.metrics_port
    assert guard["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert guard["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    # a stable, distinct identity per pod: the pod name fills the transactional id
    assert HOSTNAME_PLACEHOLDER in str(settings.transactional_id)
    assert settings.resolved_transactional_id("partner-guard-0", 1) != settings.resolved_transactional_id(
        "partner-guard-1", 1
    )
    # its own disk store per pod, on a volume claim
    mounts = {m["name"]: m["mountPath"] for m in guard["volumeMounts"]}
    assert settings.state_store == "rocksdb"
    assert str(settings.state_dir).startswith(mounts["state"])
    assert [claim["metadata"]["name"] for claim in statefulset["spec"]["volumeClaimTemplates"]] == ["state"]
    # the keys come from a Secret, mounted where the settings read them
    keys = {v["name"]: v for v in pod["volumes"]}["keys"]
    assert "secret" in keys and Path(mounts["keys"]) == settings.keys_dir
    documented = set(re.findall(r"--from-file=(\S+)", (KUBE / "kustomization.yaml").read_text()))
    assert documented == {f"{p}.key" for p in load_ruleset(ROOT / "rules").partners}


def test_services_and_budget_select_the_guard_pods() -> None:
    (statefulset,) = _by_kind("StatefulSet")
    labels = statefulset["spec"]["template"]["metadata"]["labels"]
    assert statefulset["spec"]["selector"]["matchLabels"].items() <= labels.items()
    services = {s["metadata"]["name"]: s for s in _by_kind("Service")}
    assert statefulset["spec"]["serviceName"] in services
    for service in services.values():
        assert service["spec"]["selector"].items() <= labels.items()
    (budget,) = _by_kind("PodDisruptionBudget")
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()


@pytest.mark.parametrize("rule", _alert_rules(), ids=lambda r: str(r["alert"]))
def test_every_alert_parses_and_names_only_exported_metrics(rule: dict[str, Any]) -> None:
    names = metric_names(rule["expr"])
    assert names, rule["alert"]
    assert names <= exported_metric_names() | PROMETHEUS_OWN, names - exported_metric_names()
    assert rule["annotations"]["summary"]


def test_the_alerts_cover_what_an_operator_is_paged_for() -> None:
    alerts = {rule["alert"]: rule["expr"] for rule in _alert_rules()}
    assert {
        "PartnerGuardNotReady",
        "PartnerGuardLagGrowing",
        "PartnerGuardLeakCaught",
        "PartnerGuardConsentStale",
        "PartnerGuardBlockRateJump",
        "PartnerGuardTransactionAborts",
        "PartnerGuardCrashLooping",
    } <= set(alerts)


def test_a_misspelt_metric_is_caught() -> None:
    assert "partner_guard_leak_caught_total" not in exported_metric_names()
    with pytest.raises(ValueError):
        metric_names("sum(rate(partner_guard_leaks_caught_total[5m]) >")


def test_prometheus_loads_the_alert_rules() -> None:
    config = YAML(typ="safe").load((ROOT / "deploy" / "prometheus.yml").read_text())
    compose = YAML(typ="safe").load((ROOT / "docker-compose.yml").read_text())
    mounts = dict(v.split(":")[:2][::-1] for v in compose["services"]["prometheus"]["volumes"])
    (rule_file,) = config["rule_files"]
    assert (ROOT / mounts[rule_file]).resolve() == ALERTS.resolve()


def test_every_dashboard_expression_parses_and_names_only_exported_metrics() -> None:
    for expr in _dashboard_exprs():
        assert metric_names(expr) <= exported_metric_names(), expr


def test_the_leaks_panel_shows_zero_not_no_data_on_a_healthy_guard() -> None:
    leaks = [e for e in _dashboard_exprs() if "partner_guard_leaks_caught_total" in e]
    assert leaks and all("or vector(0)" in e for e in leaks)


def test_the_docker_build_context_leaves_out_the_virtual_environments() -> None:
    ignored = {line.strip().rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".venv", ".venv-peers", ".git"} <= ignored
