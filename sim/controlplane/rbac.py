"""The deploy's identities and rights on the real control plane: the overlay rendered by
`kubectl kustomize`, reduced to its Namespace, ServiceAccounts and RBAC objects, applied as admin. The
workloads themselves (Deployments, DaemonSet, Job, webhook configuration) are left to the caller, since
locally they run as processes rather than pods."""

from __future__ import annotations

import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from sim.controlplane.processes import ControlPlaneError

RBAC_KINDS = frozenset(
    {"Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
)


def render_overlay(overlay: Path) -> list[dict[str, Any]]:
    """Every object `kubectl kustomize <overlay>` renders."""
    rendered = subprocess.run(
        ["kubectl", "kustomize", str(overlay)], capture_output=True, text=True, check=False
    )
    if rendered.returncode != 0:
        raise ControlPlaneError(f"kubectl kustomize {overlay} failed: {rendered.stderr.strip()}")
    return [document for document in yaml.safe_load_all(rendered.stdout) if isinstance(document, dict)]


def rbac_objects(objects: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The objects that define who the services are and what they may do."""
    return [item for item in objects if item.get("kind") in RBAC_KINDS]


def install_namespace(objects: Iterable[dict[str, Any]]) -> str:
    """The one namespace the deploy's ServiceAccounts live in."""
    namespaces = {
        str(item["metadata"].get("namespace", "default"))
        for item in objects
        if item.get("kind") == "ServiceAccount"
    }
    if len(namespaces) != 1:
        raise ControlPlaneError(f"expected the ServiceAccounts in one namespace, found {sorted(namespaces)}")
    return namespaces.pop()


def apply_objects(objects: list[dict[str, Any]], kubeconfig: Path) -> None:
    """`kubectl apply` the objects with `kubeconfig`'s credentials (server-side validation included)."""
    manifest = yaml.safe_dump_all(objects, sort_keys=False)
    applied = subprocess.run(
        ["kubectl", "--kubeconfig", str(kubeconfig), "apply", "-f", "-"],
        input=manifest,
        capture_output=True,
        text=True,
        check=False,
    )
    if applied.returncode != 0:
        raise ControlPlaneError(f"kubectl apply of the deploy's RBAC failed: {applied.stderr.strip()}")
