"""What kube-local says for an API it does not serve, so a kubectl user learns why and what to use instead,
rather than reading a bare "the server could not find the requested resource".

kube-local serves the resources kube-vgpu and its tests use; it runs no containers, so logs, exec, attach
and port-forward have nothing behind them. The full API is one flag away: the upstream control plane."""

from __future__ import annotations

from typing import Final

FULL_API_HINT: Final = "for the full Kubernetes API run `kube-vgpu-local up --control-plane real`"
CONTAINER_SUBRESOURCES: Final = {
    "log": "logs",
    "exec": "exec",
    "attach": "attach",
    "portforward": "port-forward",
}


def unserved_message(group: str, version: str, rest: list[str], served: frozenset[str]) -> str | None:
    """The message for a path kube-local does not serve; None when it is not one it can explain.

    `rest` is the path after the group version (e.g. ["namespaces", "default", "pods", "p", "log"]);
    `served` the plural resource names kube-local serves in that group version."""
    if len(rest) >= 5 and rest[0] == "namespaces" and rest[2] == "pods" and rest[4] in CONTAINER_SUBRESOURCES:
        command = CONTAINER_SUBRESOURCES[rest[4]]
        return (
            f"local mode runs no containers, so `kubectl {command}` has nothing to reach: each component's "
            "log is under the run directory's logs/ folder that `kube-vgpu-local up` prints; "
            f"{FULL_API_HINT} (pods still run no containers there)"
        )
    resource = rest[2] if len(rest) >= 3 and rest[0] == "namespaces" else (rest[0] if rest else "")
    if not resource or resource in served:
        return None
    where = f"{group}/{version}" if group else version
    return (
        f"kube-local (local mode) does not serve {resource} ({where}): it serves only what kube-vgpu uses "
        f"({', '.join(sorted(served)) or 'nothing in this group'}); {FULL_API_HINT}"
    )
