"""Quantities stored as the real server stores them (sim/kubelocal/openapi_quantities.py): the canonical
form, by table (every row checked against the upstream kube-apiserver when it was written), and over HTTP
on both servers."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from sim.kubelocal.openapi_quantities import MILLI, canonical_quantity, canonicalize_quantities
from sim.kubelocal.resources import NODES, PODS, RESOURCE_QUOTAS


@pytest.mark.parametrize(
    ("written", "stored"),
    [
        (20000, "20k"),
        (4096, "4096"),
        (1, "1"),
        (1000, "1k"),
        (200000, "200k"),
        (123456789, "123456789"),
        ("2048", "2048"),
        ("1000000k", "1G"),
        ("1G", "1G"),
        ("1E", "1E"),
        (0, "0"),
        ("0", "0"),
        ("0.5", "500m"),
        (0.5, "500m"),
        (2.5, "2500m"),
        ("0.1", "100m"),
        ("1.50", "1500m"),
        (".5", "500m"),
        ("1000.", "1k"),
        ("100m", "100m"),
        ("1000m", "1"),
        ("999m", "999m"),
        ("12e-1", "1200e-3"),
        ("2e4", "20e3"),
        ("1e3", "1e3"),
        ("7e2", "700"),
        ("1.5e3", "1500"),
        ("1024Mi", "1Gi"),
        ("1536Mi", "1536Mi"),
        ("1500Mi", "1500Mi"),
        ("2048Ki", "2Mi"),
        ("512Ki", "512Ki"),
        ("1Ki", "1Ki"),
        ("1023Ki", "1023Ki"),
        ("0.5Gi", "512Mi"),
        ("1.1Gi", "1181116006400m"),
        ("1.5Ki", "1536"),
        ("0.25Ki", "256"),
        ("16Gi", "16Gi"),
        ("1.0001", "1000100u"),
        ("0.000000001", "1n"),
        ("not a quantity", None),
        (True, None),
        (None, None),
    ],
)
def test_canonical_quantity(written: Any, stored: str | None) -> None:
    assert canonical_quantity(written) == stored


@pytest.mark.parametrize(
    ("written", "stored"),
    [
        ("1.0001", "1001m"),
        ("0.000000001", "1m"),
        ("1e-9", "1e-3"),
        ("1.2345", "1235m"),
        ("0.0005", "1m"),
        (3, "3"),
    ],
)
def test_resource_list_values_round_up_to_milli(written: Any, stored: str) -> None:
    assert canonical_quantity(written, MILLI) == stored


def test_canonicalize_walks_the_schema() -> None:
    pod: dict[str, Any] = {
        "metadata": {"name": "p", "labels": {"n": "20000"}, "annotations": {"nvidia.com/gpumem": "20000"}},
        "spec": {
            "containers": [
                {"name": "c", "resources": {"limits": {"nvidia.com/gpumem": 20000, "cpu": "1.0001"}}},
            ],
            "initContainers": [{"name": "i", "resources": {"requests": {"memory": "1024Mi"}}}],
            "volumes": [{"name": "v", "emptyDir": {"sizeLimit": "1.0001"}}],
            "unknownField": {"limits": {"x": 1000}},
        },
    }
    canonicalize_quantities(PODS, pod)
    assert pod["spec"]["containers"][0]["resources"]["limits"] == {"nvidia.com/gpumem": "20k", "cpu": "1001m"}
    assert pod["spec"]["initContainers"][0]["resources"]["requests"] == {"memory": "1Gi"}
    assert pod["spec"]["volumes"][0]["emptyDir"]["sizeLimit"] == "1000100u"  # one Quantity: nano
    assert pod["metadata"]["annotations"] == {"nvidia.com/gpumem": "20000"}  # strings, not quantities
    assert pod["spec"]["unknownField"] == {"limits": {"x": 1000}}
    node: dict[str, Any] = {
        "status": {"capacity": {"nvidia.com/gpu": 4}, "allocatable": {"memory": "2048Ki"}}
    }
    canonicalize_quantities(NODES, node)
    assert node["status"] == {"capacity": {"nvidia.com/gpu": "4"}, "allocatable": {"memory": "2Mi"}}
    quota: dict[str, Any] = {
        "spec": {"hard": {"requests.nvidia.com/gpu": 8}},
        "status": {"used": {"pods": 0}},
    }
    canonicalize_quantities(RESOURCE_QUOTAS, quota)
    assert quota == {"spec": {"hard": {"requests.nvidia.com/gpu": "8"}}, "status": {"used": {"pods": "0"}}}


# ----- over HTTP, on kube-local and the real server


def test_written_quantities_read_back_canonical(raw: Callable[..., Any]) -> None:
    """As `kubectl apply -f deploy/local/demo-pods.yaml` writes them: YAML integers."""
    limits = {"nvidia.com/gpu": 2, "nvidia.com/gpumem": 20000, "nvidia.com/gpucores": 30, "memory": "1024Mi"}
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "quantities"},
        "spec": {"containers": [{"name": "c", "image": "busybox:1.36", "resources": {"limits": limits}}]},
    }
    status, created = raw("POST", "/api/v1/namespaces/default/pods", json.dumps(pod).encode())
    assert status == 201, created
    expected = {
        "nvidia.com/gpu": "2",
        "nvidia.com/gpumem": "20k",
        "nvidia.com/gpucores": "30",
        "memory": "1Gi",
    }
    assert created["spec"]["containers"][0]["resources"]["limits"] == expected
    status, patched = raw(
        "PATCH",
        "/api/v1/namespaces/default/pods/quantities",
        json.dumps({"metadata": {"labels": {"a": "b"}}}).encode(),
        "application/merge-patch+json",
    )
    assert status == 200 and patched["spec"]["containers"][0]["resources"]["limits"] == expected
