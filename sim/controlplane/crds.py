"""The CustomResourceDefinitions of the operators kube-vgpu's manifests build on (cert-manager, the
Prometheus Operator), as their projects publish them, pinned here so the real kube-apiserver can check our
Certificates, Issuers, ServiceMonitors and PrometheusRules against the very schemas a cluster would.

Both projects are Go modules, and the Go module proxy serves a module version as a zip of the tagged
repository, CRD YAML included (plain YAML, no templating, in the paths below). `go mod download -json
MODULE@VERSION` fetches it once into Go's module cache (GOMODCACHE, shared with the control-plane build),
verifies it against the checksum database on first download, and reports its go.sum hash, which must equal
the pin: a moved tag or a tampered cache fails loudly instead of testing against other schemas.

    for path in crd_files():          # fetches on first use, then reads the module cache
        ...                           # kubectl apply --server-side -f path

Bump a pin: change `version`, run `go mod download -json MODULE@NEW`, copy its "Sum" into `go_sum`.
Standard library only."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path

__all__ = ["CERT_MANAGER", "CRD_MODULES", "PROMETHEUS_OPERATOR", "CrdModule", "CrdsUnavailable", "crd_files"]

DOWNLOAD_TIMEOUT_SECONDS = 300


class CrdsUnavailable(RuntimeError):
    """The pinned CRDs cannot be had: no Go toolchain, no module proxy, or a checksum that differs."""


@dataclass(frozen=True)
class CrdModule:
    """One Go module version that ships CRDs: where they are inside it, and which we install."""

    module: str
    version: str
    go_sum: str  # the module zip's hash as go.sum records it ("h1:..."), from `go mod download -json`
    crd_dir: str  # folder inside the module holding the plain-YAML CRDs
    files: tuple[str, ...]  # the CRDs kube-vgpu's manifests use, or a user lists next to them

    @property
    def ref(self) -> str:
        return f"{self.module}@{self.version}"


# deploy/crds/ holds controller-gen's output as plain YAML (the Helm chart's templates/crd-*.yaml are the
# same schemas wrapped in `{{ }}` conditionals, which is why we do not read those).
CERT_MANAGER = CrdModule(
    module="github.com/cert-manager/cert-manager",
    version="v1.21.2",
    go_sum="h1:UWgoYM+KLNtRlqmoWOKjKBOBUPVHeepQ6/ac3ERJW68=",
    crd_dir="deploy/crds",
    files=(
        "cert-manager.io_certificates.yaml",
        "cert-manager.io_certificaterequests.yaml",
        "cert-manager.io_issuers.yaml",
        "cert-manager.io_clusterissuers.yaml",
    ),
)
# example/prometheus-operator-crd/ is what the project's bundle.yaml concatenates (the "-full" variant
# differs only in longer descriptions).
PROMETHEUS_OPERATOR = CrdModule(
    module="github.com/prometheus-operator/prometheus-operator",
    version="v0.85.0",
    go_sum="h1:M5xLCLEoaW2IJfnuCwFzzpL+jSVQu3KGT84Pye+fW8s=",
    crd_dir="example/prometheus-operator-crd",
    files=(
        "monitoring.coreos.com_servicemonitors.yaml",
        "monitoring.coreos.com_podmonitors.yaml",
        "monitoring.coreos.com_prometheusrules.yaml",
    ),
)
CRD_MODULES = (CERT_MANAGER, PROMETHEUS_OPERATOR)


def _go() -> str:
    go = shutil.which("go")
    if go is None:
        raise CrdsUnavailable(
            "the Go toolchain (`go`) is not on PATH; it fetches the pinned CRDs from the Go module proxy "
            f"({', '.join(m.ref for m in CRD_MODULES)})"
        )
    return go


@cache
def module_dir(module: CrdModule) -> Path:
    """The extracted module in Go's module cache, downloaded on first use and checked against the pin."""
    # Outside any Go module (and workspace), so the download touches no go.mod/go.sum of ours.
    with tempfile.TemporaryDirectory(prefix="kube-vgpu-crds-") as cwd:
        try:
            proc = subprocess.run(
                [_go(), "mod", "download", "-json", module.ref],
                cwd=cwd,
                env={**os.environ, "GOWORK": "off"},
                capture_output=True,
                text=True,
                timeout=DOWNLOAD_TIMEOUT_SECONDS,
                check=False,
            )
        except subprocess.TimeoutExpired as error:
            raise CrdsUnavailable(
                f"`go mod download {module.ref}` did not finish in {DOWNLOAD_TIMEOUT_SECONDS}s"
            ) from error
    try:
        info = json.loads(proc.stdout) if proc.stdout.strip() else {}
    except ValueError:
        info = {}
    if proc.returncode != 0 or "Error" in info or "Dir" not in info:
        reason = info.get("Error") or proc.stderr.strip() or f"exit status {proc.returncode}"
        raise CrdsUnavailable(
            f"cannot fetch {module.ref} (its CRDs) from the Go module proxy: {reason} "
            f"(GOPROXY={os.environ.get('GOPROXY', 'go env default')}; with no network, fill the module "
            "cache first: `go mod download " + module.ref + "`)"
        )
    if info.get("Sum") != module.go_sum:
        raise CrdsUnavailable(
            f"{module.ref} hashes to {info.get('Sum')}, not the pinned {module.go_sum} "
            "(sim/controlplane/crds.py): the release was re-tagged or the module cache was altered"
        )
    return Path(info["Dir"])


def crd_files(modules: tuple[CrdModule, ...] = CRD_MODULES) -> list[Path]:
    """The pinned CRD files of `modules`, in order; raises CrdsUnavailable naming what is missing."""
    paths = []
    for module in modules:
        folder = module_dir(module) / module.crd_dir
        for name in module.files:
            path = folder / name
            if not path.is_file():
                raise CrdsUnavailable(f"{module.ref} has no {module.crd_dir}/{name}; fix the pin's file list")
            paths.append(path)
    return paths
