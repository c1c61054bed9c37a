"""The Grafana dashboard and the alert rules only query metrics (and labels) the services really serve."""

from __future__ import annotations

import ast
import functools
import json
import re
from pathlib import Path
from typing import Any

import yaml
from deploy_helpers import DEPLOY, REPO

DASHBOARD = DEPLOY / "grafana/kube-vgpu-dashboard.json"
ALERTS = DEPLOY / "prometheus/alerts.yaml"
METRIC_RE = re.compile(r"\b((?:hami|kube_vgpu)_[a-z0-9_]+)\b")
HISTOGRAM_SUFFIXES = ("_bucket", "_count", "_sum")
#: The monitor's HAMi series (docs/hami-wire.md#monitor-metrics), served by the monitor on :9394. Allowed even
#: while the monitor's code does not name them yet.
MONITOR_METRICS = frozenset(
    {
        "hami_host_gpu_memory_used_bytes",
        "hami_host_gpu_utilization_ratio",
        "hami_host_gpu_memory_controller_utilization_ratio",
        "hami_vgpu_memory_used_bytes",
        "hami_vgpu_memory_limit_bytes",
        "hami_container_device_memory_bytes",
        "hami_container_device_utilization_ratio",
        "hami_container_last_kernel_elapsed_seconds",
        "hami_vgpu_memory_context_bytes",
        "hami_vgpu_memory_module_bytes",
        "hami_vgpu_memory_buffer_bytes",
    }
)
#: Other exporters the alerts rely on (documented in deploy/README.md).
EXTERNAL_METRICS = frozenset({"kube_node_status_capacity", "kube_node_status_allocatable"})
PROMQL_WORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "offset", "bool"}
)


@functools.cache
def code_strings() -> frozenset[str]:
    """Every string literal in services/ (metric names and label names are spelled there)."""
    found: set[str] = set()
    for file in (REPO / "services").rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text(), str(file))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                found.add(node.value)
    return frozenset(found)


def served(metric: str) -> bool:
    names = code_strings() | MONITOR_METRICS
    if metric in names:
        return True
    return any(metric.endswith(s) and metric.removesuffix(s) in names for s in HISTOGRAM_SUFFIXES)


def label_names(expr: str) -> set[str]:
    """Label names used in `by (...)`, `on (...)` and `{label op value}` of a PromQL expression."""
    labels: set[str] = set()
    for group in re.findall(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)", expr):
        labels |= {g.strip() for g in group.split(",") if g.strip()}
    for matchers in re.findall(r"\{([^}]*)\}", expr):
        labels |= set(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", matchers))
    return labels


def check_expr(expr: str, where: str, external: frozenset[str] = frozenset()) -> None:
    metrics = set(METRIC_RE.findall(expr))
    assert metrics or external & set(re.findall(r"[a-z_]+", expr)), (
        f"{where}: no kube-vgpu metric in {expr!r}"
    )
    unknown = sorted(m for m in metrics if not served(m))
    assert not unknown, f"{where}: no service serves {unknown}"
    # Label names must be spelled somewhere in the services (or be Prometheus' / the exporter's own).
    known = code_strings() | {"le", "resource"}
    bad = sorted(label_names(expr) - known - PROMQL_WORDS)
    assert not bad, f"{where}: label(s) {bad} appear in no service"


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def panels(data: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for panel in data["panels"]:
        found.append(panel)
        found.extend(panel.get("panels") or [])
    return found


def test_dashboard_queries_served_metrics() -> None:
    data = dashboard()
    exprs = [(p["title"], t["expr"]) for p in panels(data) for t in p.get("targets") or []]
    assert len(exprs) >= 15
    for title, expr in exprs:
        check_expr(expr, f"panel {title!r}")
    for variable in data["templating"]["list"]:
        if variable["type"] == "query":
            check_expr(variable["definition"], f"variable {variable['name']}")


def test_dashboard_covers_nodes_gpus_pods_and_both_sources() -> None:
    data = dashboard()
    rows = [p["title"] for p in data["panels"] if p["type"] == "row"]
    assert any("node" in r.lower() for r in rows) and any("gpu" in r.lower() for r in rows)
    assert any("pod" in r.lower() for r in rows)
    used = {m for p in panels(data) for t in p.get("targets") or [] for m in METRIC_RE.findall(t["expr"])}
    assert used & MONITOR_METRICS, "no panel over the monitor's measurements"
    assert any(m.startswith("hami_gpu_") for m in used), "no panel over the scheduler's inventory"
    assert any(m.startswith("kube_vgpu_scheduler_") for m in used)


def test_dashboard_is_importable() -> None:
    data = dashboard()
    assert data["uid"] and data["title"] and isinstance(data["schemaVersion"], int)
    ids = [p["id"] for p in panels(data)]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in data["templating"]["list"]}
    assert "datasource" in variables
    for panel in panels(data):
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"])
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}"
        for target in panel.get("targets") or []:
            for var in re.findall(r"\$(\w+)", target["expr"]):
                assert var in variables, f"panel {panel['title']!r} uses undefined ${var}"


def test_alerts_query_served_metrics_and_carry_runbooks() -> None:
    rule = yaml.safe_load(ALERTS.read_text())
    assert rule["kind"] == "PrometheusRule"
    alerts = [r for g in rule["spec"]["groups"] for r in g["rules"]]
    names = {a["alert"] for a in alerts}
    # What the operator asked to be told about.
    assert {
        "KubeVgpuGpuUnhealthy",
        "KubeVgpuNodeLockHeldLong",
        "KubeVgpuBindFailures",
        "KubeVgpuContainerMemoryNearLimit",
    } <= names
    for alert in alerts:
        check_expr(alert["expr"], f"alert {alert['alert']}", EXTERNAL_METRICS)
        assert len(alert["annotations"]["runbook"]) > 80, f"{alert['alert']}: write the runbook"
    histogram_buckets = set(re.findall(r'le="([^"]+)"', ALERTS.read_text()))
    assert all(re.fullmatch(r"\d+\.\d+|\+Inf", b) for b in histogram_buckets), (
        'prometheus_client writes bucket bounds as floats (le="10.0")'
    )
    bind_buckets = _scheduler_latency_buckets()
    assert {float(b) for b in histogram_buckets} <= set(bind_buckets)


def _scheduler_latency_buckets() -> tuple[float, ...]:
    from services.scheduler import metrics

    return tuple(float(b) for b in metrics._LATENCY_BUCKETS)


def test_metric_name_scan_sees_the_scheduler() -> None:
    assert served("hami_gpu_memory_limit_bytes")
    assert served("kube_vgpu_scheduler_bind_duration_seconds_bucket")
    assert not served("hami_gpu_made_up_metric")
    assert Path(DASHBOARD).stat().st_size < 200_000
