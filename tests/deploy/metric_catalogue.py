"""What the services really export, and what a PromQL query asks for.

`exported_series()` renders the scheduler's and the monitor's `/metrics` in-process, over a small cluster
state that gives every family at least one sample, and returns each sample name (`_bucket`, `_count`,
`_sum`, `_total` included) with the label names it carries.

`query_uses()` is a small regex-based PromQL extractor, enough for the dashboard's and the alerts' queries.
Its limits: it does not parse PromQL. It drops string literals, range and subquery brackets and `offset`,
takes every identifier not followed by `(` and not a keyword as a metric name, and reads the label names of
`by`/`without`/`on`/`ignoring`/`group_*` lists and of `{...}` matchers. Grouping labels are checked against
every metric of the whole query, not just the aggregation they belong to (stricter than PromQL: a query that
groups two different metrics by labels only one of them has would be refused), and label names built at
query time (`label_replace`) are not followed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

#: Other exporters the alerts rely on (documented in deploy/README.md), with the labels kube-state-metrics
#: gives them.
EXTERNAL_SERIES: dict[str, frozenset[str]] = {
    "kube_node_status_capacity": frozenset({"node", "resource", "unit"}),
    "kube_node_status_allocatable": frozenset({"node", "resource", "unit"}),
}
PROMQL_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "offset", "bool"}
    | {"inf", "nan", "Inf", "NaN"}
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_RANGE = re.compile(r"\[[^\]]*\]")
_OFFSET = re.compile(r"\boffset\s+-?[0-9a-z]+")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_SELECTOR = re.compile(r"(?<![\w:.])([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\{[^}]*\})?")
_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")


@dataclass
class QueryUses:
    """The metrics a query selects (with the labels its matchers name) and its grouping labels."""

    selectors: dict[str, set[str]] = field(default_factory=dict)
    grouping: set[str] = field(default_factory=set)


def query_uses(expr: str) -> QueryUses:
    uses = QueryUses()
    # Matchers first, on the text with its strings blanked (a value may hold anything) but kept in place.
    text = _STRING.sub('""', expr)
    text = _OFFSET.sub(" ", _RANGE.sub(" ", text))
    for match in _GROUPING.finditer(text):
        uses.grouping |= {name.strip() for name in match.group(2).split(",") if name.strip()}
    text = _GROUPING.sub(" ", text)
    for match in _SELECTOR.finditer(text):
        name, matchers = match.group(1), match.group(2)
        rest = text[match.end() :].lstrip()
        if name in PROMQL_KEYWORDS or (matchers is None and rest.startswith("(")):
            continue  # a keyword, a function or an aggregation
        uses.selectors.setdefault(name, set()).update(_MATCHER.findall(matchers or ""))
    return uses


def label_values_query(definition: str) -> tuple[str, str]:
    """Grafana's `label_values(SELECTOR, LABEL)` -> (selector, label)."""
    match = re.fullmatch(r"\s*label_values\((.*),\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)\s*", definition)
    assert match, f"not a label_values() query: {definition}"
    return match.group(1), match.group(2)


# --- the services' /metrics, rendered in-process ---------------------------------------------------------


def _series(text: str) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, set()).update(sample.labels)
    return found


def scheduler_series() -> dict[str, set[str]]:
    from services.common.codecs import encode_node_devices
    from services.common.model import DeviceInfo
    from services.scheduler.cache import UsageCache
    from services.scheduler.metrics import SchedulerMetrics

    now = datetime(2026, 8, 21, 10, 0, 0, tzinfo=UTC)
    cache = UsageCache(clock=lambda: now)
    devices = [DeviceInfo(id="GPU-a", index=0, count=10, devmem=16000, devcore=100, type="NVIDIA-Tesla T4")]
    register = {"hami.io/node-nvidia-register": encode_node_devices(devices)}
    cache.on_node_event(
        "ADDED",
        {
            "metadata": {"name": "n1", "annotations": register},
            "status": {"allocatable": {"nvidia.com/gpu": "10"}},
        },
    )
    allocated = {"hami.io/vgpu-node": "n1", "hami.io/vgpu-devices-allocated": "GPU-a,NVIDIA,3000,30:;"}
    cache.on_pod_event(
        "ADDED",
        {
            "metadata": {"name": "p", "namespace": "team", "uid": "u-p", "annotations": allocated},
            "status": {"phase": "Running"},
        },
    )
    cache.on_quota_event(
        "ADDED",
        {
            "metadata": {"name": "q", "namespace": "team"},
            "spec": {"hard": {"limits.nvidia.com/gpumem": "20000"}},
        },
    )
    metrics = SchedulerMetrics(cache)
    metrics.filter_seconds.observe(0.01)
    metrics.prioritize_seconds.observe(0.01)
    for result in ("ok", "error"):
        metrics.bind_seconds.labels(result=result).observe(0.2)
    return _series(metrics.render().decode())


def monitor_series(workdir: Path) -> dict[str, set[str]]:
    from services.common import wire
    from services.monitor.hostgpu import HostGpuStat
    from services.monitor.metrics import ErrorCounts, MonitorCounters, MonitorMetrics
    from services.monitor.monitor import Monitor
    from services.monitor.pods import PodIndex, RegisteredGpu, pod_info
    from services.monitor.regions import RegionStore
    from sim.regions import MIB, ProcUse, make_region, write_cache

    gpu, uid, now = "GPU-aaaaaaaa-1111-2222-3333-444444444444", "22222222-0000-4000-8000-000000000001", 2e9
    root = workdir / "containers"
    store = RegionStore(root)
    pods = PodIndex("node-a")
    pods.set_registered({gpu: RegisteredGpu(0, "NVIDIA-A100")})
    busy = pod_info(
        {
            "metadata": {
                "uid": uid,
                "namespace": "ml",
                "name": "busy",
                "annotations": {wire.VGPU_DEVICES_ALLOCATED: f"{gpu},NVIDIA,4000,40:;"},
            },
            "spec": {"containers": [{"name": "main"}]},
            "status": {"phase": "Running"},
        }
    )
    assert busy is not None
    pods.replace([busy])
    region = make_region(
        [gpu],
        limits=[4000 * MIB],
        sm_limits=[40],
        procs=[ProcUse(9, context=[300], module=[20], buffer=[5000], sm_util=[37])],
        last_kernel_time=int(now) - 12,
    )
    write_cache(root, uid, "main", region)
    try:
        monitor = Monitor("node-a", store, pods, clock=lambda: now)
        monitor.scan()
        errors = ErrorCounts(["bad_magic"])
        host = [HostGpuStat(gpu, 0, "NVIDIA-A100", 6 * 1024 * MIB, 40 * 1024 * MIB, 55, 12)]
        metrics = MonitorMetrics(
            monitor.snapshot,
            lambda: host,
            lambda: MonitorCounters(
                errors.snapshot(),
                store.open_count(),
                len(store.dirs()),
                0,
                0,
                {("node-a", "ml", "busy", "main", gpu, "used"): 1},
            ),
            clock=lambda: now,
        )
        return _series(metrics.render().decode())
    finally:
        store.close()


def exported_series(workdir: Path) -> dict[str, frozenset[str]]:
    """Sample name -> label names, over both services (a name both serve gets the union)."""
    merged: dict[str, set[str]] = {}
    for series in (scheduler_series(), monitor_series(workdir)):
        for name, labels in series.items():
            merged.setdefault(name, set()).update(labels)
    return {name: frozenset(labels) for name, labels in merged.items()}
