"""What local mode does not serve says so, and what to use instead (issue 16): kubectl logs/exec/
port-forward on a pod, and resources kube-local does not have (configmaps, services, apps/v1)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from sim.kubelocal.unserved import FULL_API_HINT, unserved_message

SERVED = frozenset({"pods", "nodes", "namespaces", "events"})


@pytest.mark.parametrize(
    ("group", "version", "rest", "fragment"),
    [
        ("", "v1", ["namespaces", "default", "pods", "p", "log"], "`kubectl logs` has nothing to reach"),
        ("", "v1", ["namespaces", "default", "pods", "p", "exec"], "`kubectl exec`"),
        ("", "v1", ["namespaces", "default", "pods", "p", "portforward"], "`kubectl port-forward`"),
        ("", "v1", ["namespaces", "default", "configmaps"], "does not serve configmaps (v1)"),
        ("", "v1", ["services"], "does not serve services (v1)"),
        (
            "apps",
            "v1",
            ["namespaces", "default", "deployments", "web"],
            "does not serve deployments (apps/v1)",
        ),
    ],
)
def test_unserved_paths_say_why_and_what_instead(
    group: str, version: str, rest: list[str], fragment: str
) -> None:
    message = unserved_message(group, version, rest, SERVED if group == "" else frozenset())
    assert message is not None and fragment in message and FULL_API_HINT in message


@pytest.mark.parametrize(
    "rest",
    [["namespaces", "default", "pods", "p"], ["nodes"], ["namespaces", "default", "pods", "p", "nope"], []],
)
def test_served_or_unknown_shapes_keep_the_plain_404(rest: list[str]) -> None:
    assert unserved_message("", "v1", rest, SERVED) is None


@pytest.mark.kube_local_only  # the real API server serves all of these
@pytest.mark.parametrize(
    ("path", "fragment"),
    [
        ("/api/v1/namespaces/default/configmaps", "does not serve configmaps"),
        ("/api/v1/namespaces/default/pods/p/log", "`kubectl logs`"),
        ("/apis/apps/v1/namespaces/default/deployments", "does not serve deployments (apps/v1)"),
    ],
)
def test_kube_local_answers_404_with_the_message(
    raw: Callable[..., tuple[int, Any]], path: str, fragment: str
) -> None:
    status, body = raw("GET", path)
    assert status == 404
    assert body["kind"] == "Status" and body["reason"] == "NotFound" and fragment in body["message"]
