"""KubeSchedulerConfiguration parsing for the kube-scheduler stand-in: real files load, bad keys are named."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from services.common.config import ConfigError
from sim.local.kube_scheduler_config import (
    DEFAULT_EXTENDER_TIMEOUT,
    load_scheduler_config,
    parse_duration,
    parse_scheduler_config,
)

REPO = Path(__file__).resolve().parents[3]
NVIDIA = [
    "nvidia.com/gpu",
    "nvidia.com/gpumem",
    "nvidia.com/gpucores",
    "nvidia.com/gpumem-percentage",
    "nvidia.com/priority",
]


def base(**extra: Any) -> dict[str, Any]:
    return {"apiVersion": "kubescheduler.config.k8s.io/v1", "kind": "KubeSchedulerConfiguration", **extra}


def extender(**fields: Any) -> dict[str, Any]:
    return {"urlPrefix": "http://127.0.0.1:8080", "filterVerb": "filter", **fields}


def test_shipped_local_mode_file_loads() -> None:
    cfg = load_scheduler_config(REPO / "deploy/local/kube-scheduler.yaml")
    assert cfg.scheduler_names == frozenset({"hami-scheduler"})
    (ext,) = cfg.extenders
    assert ext.url_prefix == "http://127.0.0.1:8080"
    assert (ext.filter_verb, ext.prioritize_verb, ext.bind_verb) == ("filter", "prioritize", "bind")
    assert ext.weight == 1 and ext.node_cache_capable and not ext.enable_https
    assert ext.http_timeout == 30.0
    assert [r.name for r in ext.managed_resources] == NVIDIA
    assert all(r.ignored_by_scheduler for r in ext.managed_resources)


def test_hami_chart_stanza_loads_with_the_keys_the_stand_in_ignores() -> None:
    doc = base(
        leaderElection={
            "leaderElect": True,
            "resourceName": "hami-scheduler",
            "resourceNamespace": "kube-system",
        },
        clientConnection={"kubeconfig": "/etc/kubernetes/scheduler.conf"},
        percentageOfNodesToScore=50,
        profiles=[{"schedulerName": "hami-scheduler", "plugins": {"score": {"disabled": [{"name": "*"}]}}}],
        extenders=[
            extender(
                urlPrefix="https://127.0.0.1:443",
                bindVerb="bind",
                enableHTTPS=True,
                tlsConfig={"insecure": True},
                nodeCacheCapable=True,
                weight=1,
                httpTimeout="30s",
                managedResources=[{"name": n, "ignoredByScheduler": True} for n in NVIDIA],
            )
        ],
    )
    cfg = parse_scheduler_config(doc)
    ext = cfg.extenders[0]
    assert ext.tls_config is not None and ext.tls_config.insecure
    assert ext.prioritize_verb == "" and ext.url_prefix == "https://127.0.0.1:443"
    assert cfg.pod_initial_backoff_seconds == 1 and cfg.pod_max_backoff_seconds == 10


def test_defaults() -> None:
    cfg = parse_scheduler_config(base(extenders=[extender()]))
    assert cfg.scheduler_names == frozenset({"default-scheduler"})
    ext = cfg.extenders[0]
    assert ext.http_timeout == DEFAULT_EXTENDER_TIMEOUT == 5.0
    assert ext.weight == 0 and not ext.node_cache_capable and not ext.ignorable
    assert ext.managed_resources == []
    assert parse_scheduler_config(base(profiles=[])).scheduler_names == frozenset({"default-scheduler"})
    assert (
        parse_scheduler_config(base(extenders=[extender(httpTimeout="0s")])).extenders[0].http_timeout == 5.0
    )


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30s", 30.0),
        ("1m30s", 90.0),
        ("500ms", 0.5),
        ("1h", 3600.0),
        ("1.5s", 1.5),
        ("0", 0.0),
        ("250us", 0.00025),
    ],
)
def test_go_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["30", "3x", "", "s", "1m 30s", 30, None])
def test_bad_durations(bad: Any) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(bad)


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        (base(extender=[extender()]), "extender: unknown key"),
        ({"kind": "KubeSchedulerConfiguration"}, "apiVersion: Field required"),
        (base(apiVersion="kubescheduler.config.k8s.io/v1beta3"), "apiVersion: Input should be"),
        (base(kind="Policy"), "kind: Input should be"),
        (
            base(extenders=[extender(prioritizeVerb="prioritize")]),
            "extenders.0.weight: Value error, must be a positive",
        ),
        (base(extenders=[extender(weight=-1)]), "extenders.0.weight"),
        (
            base(extenders=[extender(httpTimeout=30)]),
            "extenders.0.httpTimeout: Value error, must be a duration",
        ),
        (
            base(extenders=[extender(urlPrefix="127.0.0.1:8080")]),
            "extenders.0.urlPrefix: Value error, must be an http",
        ),
        (base(extenders=[{"filterVerb": "filter"}]), "extenders.0.urlPrefix: Field required"),
        (base(extenders=[extender(enableHttps=True)]), "extenders.0.enableHttps: unknown key"),
        (
            base(extenders=[extender(tlsConfig={"caData": "%%%"})]),
            "extenders.0.tlsConfig.caData: Value error",
        ),
        (
            base(extenders=[extender(managedResources=[{"name": "a"}, {"name": "a"}])]),
            "extenders.0.managedResources: Value error, duplicate resource name 'a'",
        ),
        (base(extenders=[extender(managedResources=[{"name": ""}])]), "extenders.0.managedResources.0.name"),
        (
            base(extenders=[extender(bindVerb="bind"), extender(urlPrefix="http://b", bindVerb="bind")]),
            "extenders: Value error, only one extender can implement bind",
        ),
        (base(profiles=[{"schedulerName": "x"}, {"schedulerName": "x"}]), "profiles: Value error, duplicate"),
        (base(profiles=[{"name": "x"}]), "profiles.0.name: unknown key"),
        (base(podInitialBackoffSeconds=5, podMaxBackoffSeconds=2), "podMaxBackoffSeconds: Value error"),
        (base(podInitialBackoffSeconds=0), "podInitialBackoffSeconds: Input should be greater than 0"),
    ],
)
def test_errors_name_the_bad_key(doc: dict[str, Any], expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_scheduler_config(doc, "KubeSchedulerConfiguration test.yaml")
    message = str(err.value)
    assert message.startswith("invalid KubeSchedulerConfiguration test.yaml:")
    assert expected in message


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_scheduler_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: kubescheduler.config.k8s.io/v1\nkind: KubeSchedulerConfiguration\nextenders: 3\n"
    )
    with pytest.raises(ConfigError, match=r"extenders: Input should be a valid list \(from file"):
        load_scheduler_config(bad)
