"""Every metric a dashboard panel, a dashboard variable or an alert queries is one the scheduler or the
monitor exports, with the labels the query names, checked against a live in-process render of both services'
`/metrics` (tests/deploy/metric_catalogue.py; its PromQL extractor's limits are documented there)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_helpers import DEPLOY
from metric_catalogue import EXTERNAL_SERIES, exported_series, label_values_query, query_uses

ALERTS = DEPLOY / "prometheus/alerts.yaml"
ALERT_TESTS = DEPLOY / "prometheus/alerts_test.yaml"
DASHBOARDS = sorted((DEPLOY / "grafana").glob("*.json"))
#: Labels Prometheus attaches to every scraped series (target labels), on top of the exported ones.
TARGET_LABELS = frozenset({"job", "instance", "namespace", "pod", "service", "endpoint", "container"})


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory: pytest.TempPathFactory) -> dict[str, frozenset[str]]:
    series = exported_series(tmp_path_factory.mktemp("monitor"))
    assert "hami_gpu_memory_limit_bytes" in series and "hami_vgpu_memory_used_bytes" in series
    return {**series, **EXTERNAL_SERIES}


def check_query(
    expr: str, where: str, catalogue: dict[str, frozenset[str]], legend: str | None = None
) -> None:
    uses = query_uses(expr)
    assert uses.selectors, f"{where}: no metric found in {expr!r}"
    for metric, matcher_labels in uses.selectors.items():
        assert metric in catalogue, f"{where}: no service exports {metric}"
        unknown = matcher_labels - catalogue[metric]
        assert not unknown, f"{where}: {metric} has no label(s) {sorted(unknown)}"
    for metric in uses.selectors:
        missing = uses.grouping - catalogue[metric]
        assert not missing, f"{where}: groups by {sorted(missing)}, which {metric} does not carry"
    for label in re.findall(r"\{\{\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\}\}", legend or ""):
        carried = [m for m in uses.selectors if label in catalogue[m]]
        assert len(carried) == len(uses.selectors), f"{where}: legend {{{{{label}}}}} is on no series"
        if uses.grouping:
            assert label in uses.grouping, f"{where}: legend {{{{{label}}}}} is aggregated away"


def panels(data: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for panel in data["panels"]:
        found.append(panel)
        found.extend(panel.get("panels") or [])
    return found


@pytest.mark.parametrize("path", DASHBOARDS, ids=[p.name for p in DASHBOARDS])
def test_dashboard_queries_exported_series(path: Path, catalogue: dict[str, frozenset[str]]) -> None:
    data = json.loads(path.read_text())
    checked = 0
    for panel in panels(data):
        for target in panel.get("targets") or []:
            check_query(target["expr"], f"panel {panel['title']!r}", catalogue, target.get("legendFormat"))
            checked += 1
    for variable in data["templating"]["list"]:
        if variable["type"] != "query":
            continue
        selector, label = label_values_query(variable["definition"])
        check_query(selector, f"variable {variable['name']}", catalogue)
        for metric in query_uses(selector).selectors:
            assert label in catalogue[metric], f"variable {variable['name']}: {metric} has no label {label}"
        checked += 1
    assert checked >= 15


def test_alerts_query_exported_series(catalogue: dict[str, frozenset[str]]) -> None:
    rule = yaml.safe_load(ALERTS.read_text())
    alerts = [r for g in rule["spec"]["groups"] for r in g["rules"] if "alert" in r]
    assert len(alerts) >= 8
    for alert in alerts:
        check_query(alert["expr"], f"alert {alert['alert']}", catalogue)
        # Templates may only name labels the alert's series keep.
        uses = query_uses(alert["expr"])
        kept = uses.grouping or frozenset.intersection(*(catalogue[m] for m in uses.selectors))
        text = " ".join(str(v) for v in alert["annotations"].values())
        for label in re.findall(r"\$labels\.([a-zA-Z_][a-zA-Z0-9_]*)", text):
            assert label in kept, f"alert {alert['alert']}: $labels.{label} is not on the alert"


def test_alert_unit_tests_feed_exported_series(catalogue: dict[str, frozenset[str]]) -> None:
    """alerts_test.yaml's input series look like what Prometheus scrapes: exported names and labels."""
    tests = yaml.safe_load(ALERT_TESTS.read_text())
    for case in tests["tests"]:
        for series in case["input_series"]:
            uses = query_uses(series["series"])
            ((metric, labels),) = uses.selectors.items()
            assert metric in catalogue, f"{case['name']}: {metric} is exported by nothing"
            extra = labels - catalogue[metric] - TARGET_LABELS
            assert not extra, f"{case['name']}: {metric} never carries {sorted(extra)}"


def test_extractor_on_known_queries() -> None:
    """The extractor itself, on the shapes the queries use."""
    uses = query_uses(
        'max by (namespace, quota_name) (hami_resource_quota_used{zone="vGPU",pod=~"a,b}"})'
        " / on (namespace, quota_name) max by (namespace, quota_name) (hami_resource_quota_limit)"
    )
    assert uses.selectors == {"hami_resource_quota_used": {"zone", "pod"}, "hami_resource_quota_limit": set()}
    assert uses.grouping == {"namespace", "quota_name"}
    uses = query_uses(
        "histogram_quantile(0.99, sum by (le) (rate(kube_vgpu_scheduler_bind_duration_seconds_bucket[5m])))"
        " > 1 and on () count(hami_gpu_memory_limit_bytes offset 15m) > 0"
    )
    assert set(uses.selectors) == {
        "kube_vgpu_scheduler_bind_duration_seconds_bucket",
        "hami_gpu_memory_limit_bytes",
    }
    assert uses.grouping == {"le"}
    assert label_values_query('label_values(m{namespace=~"$namespace"}, pod)') == (
        'm{namespace=~"$namespace"}',
        "pod",
    )


@pytest.mark.parametrize(
    ("expr", "legend"),
    [
        ("sum(hami_gpu_memory_made_up_bytes)", None),  # no such metric
        ('sum(hami_gpu_memory_limit_bytes{namespace="x"})', None),  # a device series has no namespace
        ("sum by (pod) (hami_gpu_memory_limit_bytes)", None),  # nor a pod to group by
        ("sum by (node) (hami_gpu_memory_limit_bytes)", "{{device_uuid}}"),  # aggregated away
        ("hami_vgpu_memory_used_bytes / on (node) hami_gpu_memory_limit_bytes", "{{container}}"),
    ],
)
def test_check_query_refuses_what_is_not_exported(
    catalogue: dict[str, frozenset[str]], expr: str, legend: str | None
) -> None:
    with pytest.raises(AssertionError):
        check_query(expr, "negative case", catalogue, legend)
