"""`RecentPods`: the filtered pod copies a bind may start from, by UID, bounded in count and age."""

from __future__ import annotations

import time
from typing import Any

import pytest

from services.common.resources import NvidiaRequestConfig
from services.scheduler.bind_writes import RecentPods
from services.scheduler.decoders import pod_context


def pod(
    name: str = "p", *, namespace: str | None = "default", uid: str | None = None, rv: str | None = "7"
) -> Any:
    metadata: dict[str, Any] = {"name": name}
    if namespace is not None:
        metadata["namespace"] = namespace
    metadata["uid"] = f"uid-{name}" if uid is None else uid
    if rv is not None:
        metadata["resourceVersion"] = rv
    return {"metadata": metadata, "spec": {"containers": [{"name": "main"}]}}


def test_a_copy_is_handed_out_once_then_forgotten() -> None:
    recent = RecentPods()
    copy = pod()
    recent.remember(copy)
    assert len(recent) == 1
    assert recent.take("default", "p", "uid-p") is copy
    assert len(recent) == 0
    assert recent.take("default", "p", "uid-p") is None


@pytest.mark.parametrize(
    ("namespace", "name", "uid"),
    [
        pytest.param("other", "p", "uid-p", id="wrong-namespace"),
        pytest.param("default", "q", "uid-p", id="wrong-name"),
        pytest.param("default", "p", "uid-q", id="wrong-uid"),
        pytest.param("default", "p", "", id="no-uid"),
    ],
)
def test_a_mismatching_request_gets_nothing(namespace: str, name: str, uid: str) -> None:
    recent = RecentPods()
    recent.remember(pod())
    assert recent.take(namespace, name, uid) is None


def test_a_pod_without_a_namespace_is_in_default() -> None:
    recent = RecentPods()
    copy = pod(namespace=None)
    recent.remember(copy)
    assert recent.take("default", "p", "uid-p") is copy


@pytest.mark.parametrize(
    "unusable",
    [
        pytest.param(pod(rv=None), id="no-resource-version"),
        pytest.param(pod(rv=""), id="empty-resource-version"),
        pytest.param(
            {"metadata": {"name": "p", "namespace": "default", "resourceVersion": "7"}}, id="no-uid"
        ),
        pytest.param(pod(uid=""), id="empty-uid"),
        pytest.param({"metadata": "nonsense"}, id="metadata-not-a-mapping"),
        pytest.param({}, id="no-metadata"),
    ],
)
def test_a_pod_that_cannot_be_checked_at_patch_time_is_not_remembered(unusable: Any) -> None:
    recent = RecentPods()
    recent.remember(unusable)
    assert len(recent) == 0
    assert recent.take("default", "p", "uid-p") is None
    assert recent.take("default", "p", "") is None


def test_the_oldest_copy_is_evicted_at_the_limit() -> None:
    recent = RecentPods(limit=3)
    for name in ("a", "b", "c", "d"):
        recent.remember(pod(name))
    assert len(recent) == 3
    assert recent.take("default", "a", "uid-a") is None  # evicted: the oldest
    assert [recent.take("default", n, f"uid-{n}") is not None for n in ("b", "c", "d")] == [True, True, True]


def test_remembering_a_pod_again_refreshes_its_place_and_copy() -> None:
    recent = RecentPods(limit=2)
    recent.remember(pod("a", rv="1"))
    recent.remember(pod("b"))
    newer = pod("a", rv="2")
    recent.remember(newer)  # "a" is now the newest; "b" the oldest
    recent.remember(pod("c"))
    assert len(recent) == 2
    assert recent.take("default", "b", "uid-b") is None
    assert recent.take("default", "a", "uid-a") is newer


def test_a_limit_below_one_still_keeps_the_latest_pod() -> None:
    recent = RecentPods(limit=0)
    recent.remember(pod("a"))
    latest = pod("b")
    recent.remember(latest)
    assert len(recent) == 1
    assert recent.take("default", "b", "uid-b") is latest


def test_an_old_copy_is_not_handed_out() -> None:
    recent = RecentPods(max_age=0.01)
    recent.remember(pod())
    time.sleep(0.05)
    assert recent.take("default", "p", "uid-p") is None
    assert len(recent) == 0  # and it is forgotten


def test_a_negative_max_age_hands_out_nothing() -> None:
    recent = RecentPods(max_age=-1.0)
    recent.remember(pod())
    assert recent.take("default", "p", "uid-p") is None


def test_the_context_decoded_at_filter_time_comes_back_with_the_copy() -> None:
    recent = RecentPods()
    copy = pod()
    context = pod_context(copy, NvidiaRequestConfig())
    recent.remember(copy, context)
    recent.remember(pod("q"))
    assert recent.take_with_context("default", "p", "uid-p") == (copy, context)
    assert recent.take_with_context("default", "q", "uid-q") == (pod("q"), None)  # none remembered
    assert recent.take_with_context("default", "p", "uid-p") is None  # handed out once
