"""Every overlay and component combination is accepted by the real kube-apiserver (v1.37, the session's
upstream control plane) with cert-manager's and the Prometheus Operator's own CRDs installed, so our
Certificates, Issuers, ServiceMonitors and PrometheusRules are checked against the schemas a cluster would
enforce, and the built-in kinds against the server's validation, defaulting and admission (Pod Security
included): `kubectl apply --dry-run=server -k DIR`, exactly as a user would type it, minus the writes.

The CRDs come from the upstream projects' Go modules at the versions pinned in sim/controlplane/crds.py.
A deliberately broken object per CRD kind must be rejected, so a schema that silently stopped applying
(CRD missing, validation off) fails here."""

from __future__ import annotations

import copy
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_helpers import (
    BASE,
    COMBINATIONS,
    COMPONENTS,
    CRD_GROUPS,
    OPTIONAL_COMPONENTS,
    OVERLAY_NAMES,
    OVERLAYS,
    Obj,
    Render,
    by_kind,
    combo_dir,
    group_of,
    needs_kubectl,
    write_kustomization,
)

from sim.controlplane.crds import CERT_MANAGER, CRD_MODULES, CrdModule, CrdsUnavailable, crd_files, module_dir
from tests.support.apiservers import SYSTEM_NAMESPACES, ApiServer

KUBECTL_TIMEOUT_SECONDS = 180
# The one privileged container (device plugin DaemonSet); the namespace warns at `restricted`, so the
# server names it in a PodSecurity warning, and any other container named there is a regression.
PRIVILEGED_CONTAINER = "kube-vgpu-device-plugin"
# A dry-run apply reports one of these per object it accepted.
_ACCEPTED = re.compile(r"^(?P<ref>\S+/\S+) (?:created|configured|unchanged) \(server dry run\)$")
_CONTAINERS_IN_WARNING = re.compile(r'containers? ((?:"[^"]+"(?:, |,? and )?)+)')

real_only = pytest.mark.parametrize("api_server", ["real"], indirect=True)


# --- kubectl against the session's real API server --------------------------------------------------------


@dataclass
class Kubectl:
    """kubectl as the real server's admin, with its own discovery cache (a shared cache could predate
    the CRDs and make kubectl deny that their kinds exist)."""

    kubeconfig: Path
    cache_dir: Path

    def __call__(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["kubectl", "--kubeconfig", str(self.kubeconfig), "--cache-dir", str(self.cache_dir), *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=KUBECTL_TIMEOUT_SECONDS,
            check=False,
        )


_INSTALLED: set[str] = set()  # URLs of servers that already hold the pinned CRDs (they outlive a test)


def install_crds(kubectl: Kubectl, server_url: str) -> None:
    """Server-side apply of the pinned CRDs (client-side apply would store each one again in an
    annotation, over the 256 KiB limit for the Issuer CRDs), then wait until each is Established."""
    if server_url in _INSTALLED:
        return
    try:
        files = crd_files()
    except CrdsUnavailable as error:
        pytest.fail(f"the pinned CRDs are unavailable: {error}")
    args = ["apply", "--server-side", "--field-manager=kube-vgpu-tests", "-o", "name"]
    for path in files:
        args += ["-f", str(path)]
    applied = kubectl(*args)
    assert applied.returncode == 0, f"installing the CRDs failed:\n{applied.stderr}"
    names = applied.stdout.split()
    assert len(names) == len(files), applied.stdout
    established = kubectl("wait", "--for=condition=Established", "--timeout=120s", *names)
    assert established.returncode == 0, f"CRDs not Established:\n{established.stderr}"
    _INSTALLED.add(server_url)


@pytest.fixture
def kubectl(api_server: ApiServer, tmp_path: Path) -> Iterator[Kubectl]:
    needs_kubectl()
    assert api_server.real is not None, "these checks need the upstream kube-apiserver"
    runner = Kubectl(api_server.real.admin_kubeconfig, tmp_path / "kubectl-cache")
    install_crds(runner, api_server.url)
    yield runner


def object_ref(obj: Obj) -> str:
    """How kubectl names an object in apply's output: kind.group/name, the core group without a dot."""
    group = group_of(obj)
    kind = str(obj["kind"]).lower()
    return f"{kind}.{group}/{obj['metadata']['name']}" if group else f"{kind}/{obj['metadata']['name']}"


def ensure_namespaces(kubectl: Kubectl, objects: list[Obj]) -> None:
    """A dry run creates nothing, so the namespaces the manifests create are applied for real first (with
    their Pod Security labels, which decide the warnings), as a user applying a namespace before the rest
    would; the session's reset removes them after the test."""
    namespaces = by_kind(objects, "Namespace")
    if namespaces:
        applied = kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all(namespaces))
        assert applied.returncode == 0, applied.stderr
    declared = {o["metadata"]["name"] for o in namespaces} | SYSTEM_NAMESPACES
    for namespace in sorted({o["metadata"].get("namespace") for o in objects} - declared - {None}):
        if kubectl("get", "namespace", namespace).returncode != 0:
            created = kubectl("create", "namespace", namespace, "--save-config")
            assert created.returncode == 0, created.stderr


def server_dry_run(kubectl: Kubectl, directory: Path, objects: list[Obj]) -> None:
    """`kubectl apply --dry-run=server -k directory` succeeds, reports every rendered object accepted, and
    warns about nothing but the privileged device plugin."""
    ensure_namespaces(kubectl, objects)
    proc = kubectl("apply", "--dry-run=server", "-k", str(directory))
    assert proc.returncode == 0, f"the API server rejected {directory}:\n{proc.stderr}"
    accepted = [m["ref"] for m in map(_ACCEPTED.match, proc.stdout.splitlines()) if m]
    unexplained = [line for line in proc.stdout.splitlines() if not _ACCEPTED.match(line)]
    assert not unexplained, f"unexpected apply output: {unexplained}"
    assert sorted(accepted) == sorted(object_ref(o) for o in objects)
    check_warnings(proc.stderr, objects)


def check_warnings(stderr: str, objects: list[Obj]) -> None:
    warnings = [line for line in stderr.splitlines() if line.startswith("Warning:")]
    others = [w for w in warnings if "would violate PodSecurity" not in w]
    assert not others, f"the API server warned: {others}"
    pod_security = [w for w in warnings if w not in others]
    named = {
        name
        for w in pod_security
        for m in _CONTAINERS_IN_WARNING.finditer(w)
        for name in re.findall(r'"([^"]+)"', m[1])
    }
    has_plugin = any(o["kind"] == "DaemonSet" for o in objects)
    assert len(pod_security) == int(has_plugin), (
        f"expected {int(has_plugin)} PodSecurity warning (the privileged device plugin under the namespace's "
        f"warn=restricted label), got {pod_security}"
    )
    assert named == ({PRIVILEGED_CONTAINER} if has_plugin else set()), pod_security


_PLUGIN_WARNING = (
    'Warning: would violate PodSecurity "restricted:latest": privileged (container "kube-vgpu-device-plugin" '
    'must not set securityContext.privileged=true), restricted volume types (volumes "device-plugins", '
    '"vgpu" use restricted volume type "hostPath")'
)
_DAEMONSET: list[Obj] = [{"kind": "DaemonSet", "metadata": {"name": "kube-vgpu-device-plugin"}}]


@pytest.mark.parametrize(
    ("stderr", "objects", "complaint"),
    [
        (_PLUGIN_WARNING + "\n", _DAEMONSET, None),
        ("", [], None),
        ("", _DAEMONSET, "PodSecurity"),  # the namespace's warn label no longer applies
        (
            _PLUGIN_WARNING
            + '\nWarning: spec.template.spec.containers[1].ports[1]: duplicate port name "grpc"\n',
            _DAEMONSET,
            "duplicate port name",
        ),
        (
            _PLUGIN_WARNING.replace(
                'container "kube-vgpu-device-plugin"',
                'containers "kube-vgpu-device-plugin", "kube-vgpu-monitor"',
            ),
            _DAEMONSET,
            "kube-vgpu-monitor",
        ),
        (
            'Warning: would violate PodSecurity "restricted:latest": runAsNonRoot != true (pod or container '
            '"kube-vgpu-scheduler" must set securityContext.runAsNonRoot=true)',
            [],
            "kube-vgpu-scheduler",
        ),
    ],
    ids=["plugin-only", "nothing", "plugin-not-named", "other-warning", "second-container", "other-pod"],
)
def test_warnings_other_than_the_privileged_plugin_fail(
    stderr: str, objects: list[Obj], complaint: str | None
) -> None:
    if complaint is None:
        check_warnings(stderr, objects)
        return
    with pytest.raises(AssertionError, match=re.escape(complaint)):
        check_warnings(stderr, objects)


# --- the pinned CRDs ---------------------------------------------------------------------------------------


def crd_kinds() -> dict[str, set[str]]:
    """group -> kinds defined by the pinned CRD files."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    kinds: dict[str, set[str]] = {}
    for path in crd_files():
        for doc in yaml.load_all(path.read_text(encoding="utf-8"), Loader=loader):
            if doc:
                assert doc["kind"] == "CustomResourceDefinition", path
                kinds.setdefault(doc["spec"]["group"], set()).add(doc["spec"]["names"]["kind"])
    return kinds


def test_pinned_crds_define_every_custom_kind_the_manifests_use(render: Render, scratch: Path) -> None:
    kinds = crd_kinds()
    assert set(kinds) == CRD_GROUPS
    used = {
        (group_of(o), str(o["kind"]))
        for combo in COMBINATIONS
        for o in render(combo_dir(scratch, combo))
        if group_of(o) in CRD_GROUPS
    }
    assert {("cert-manager.io", "Certificate"), ("cert-manager.io", "Issuer")} <= used
    assert {("monitoring.coreos.com", "ServiceMonitor"), ("monitoring.coreos.com", "PrometheusRule")} <= used
    missing = {(group, kind) for group, kind in used if kind not in kinds.get(group, set())}
    assert not missing, f"no pinned CRD defines {missing}"


def test_a_checksum_other_than_the_pin_is_refused() -> None:
    tampered = CrdModule(
        CERT_MANAGER.module, CERT_MANAGER.version, "h1:" + "A" * 43 + "=", CERT_MANAGER.crd_dir, ()
    )
    with pytest.raises(CrdsUnavailable, match=r"not the pinned h1:A+=.*re-tagged or the module cache"):
        module_dir(tampered)


def test_a_version_the_proxy_lacks_fails_with_a_clear_message() -> None:
    absent = CrdModule(CERT_MANAGER.module, "v0.0.0-no-such-release", "h1:", CERT_MANAGER.crd_dir, ())
    with pytest.raises(CrdsUnavailable, match=r"cannot fetch github.com/cert-manager/cert-manager@v0\.0\.0"):
        module_dir(absent)


def test_every_pinned_module_matches_its_checksum() -> None:
    for module in CRD_MODULES:
        assert (module_dir(module) / module.crd_dir).is_dir(), module.ref


# --- the real API server -----------------------------------------------------------------------------------


@real_only
@pytest.mark.parametrize("overlay", OVERLAY_NAMES)
def test_overlay_passes_server_dry_run(kubectl: Kubectl, render: Render, overlay: str) -> None:
    directory = OVERLAYS / overlay
    server_dry_run(kubectl, directory, render(directory))


@real_only
@pytest.mark.parametrize("combo", COMBINATIONS, ids=["+".join(c) for c in COMBINATIONS])
def test_component_combination_passes_server_dry_run(
    kubectl: Kubectl, render: Render, scratch: Path, combo: tuple[str, ...]
) -> None:
    directory = combo_dir(scratch, combo)
    server_dry_run(kubectl, directory, render(directory))


@real_only
@pytest.mark.parametrize("cert", ["certmanager", "self-signed-certs"])
def test_another_namespace_passes_server_dry_run(
    kubectl: Kubectl, render: Render, scratch: Path, cert: str
) -> None:
    """The README's layer with `namespace: gpu-system` under every component (the namespace is created
    first: a dry run of its Namespace object makes nothing for the rest to land in)."""
    layer = write_kustomization(
        scratch / f"dry-run-ns-layer-{cert}", resources=[BASE], extra={"namespace": "gpu-system"}
    )
    directory = combo_dir(scratch, (cert, *OPTIONAL_COMPONENTS), namespace_layer=layer)
    objects = render(directory)
    assert {o["metadata"].get("namespace") for o in objects} <= {None, "gpu-system"}
    server_dry_run(kubectl, directory, objects)


def _broken(objects: list[Obj], kind: str, name: str, breakage: Any) -> Obj:
    (obj,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    broken = copy.deepcopy(obj)
    breakage(broken)
    return broken


def _set(path: str, value: Any) -> Any:
    """A function setting dotted `path` (list indices as numbers) of an object to `value`."""

    def apply(obj: Obj) -> None:
        *parents, leaf = [int(p) if p.isdigit() else p for p in path.split(".")]
        node: Any = obj
        for part in parents:
            node = node[part]
        node[leaf] = value

    return apply


def _rename(path: str, new_key: str) -> Any:
    def apply(obj: Obj) -> None:
        *parents, leaf = path.split(".")
        node: Any = obj
        for part in parents:
            node = node[part]
        node[new_key] = node.pop(leaf)

    return apply


# (kind, name in the production overlay, how it is broken, what the server must say)
BREAKAGES = [
    (
        "ServiceMonitor",
        "kube-vgpu-monitor",
        _set("spec.endpoints.0.interval", "15 seconds"),
        r'spec\.endpoints\[0\]\.interval: Invalid value: "15 seconds".*should match',
    ),
    (
        "ServiceMonitor",
        "kube-vgpu-scheduler",
        _set("spec.endpoints.0.honorLabels", "yes"),
        r"spec\.endpoints\[0\]\.honorLabels.*must be of type boolean",
    ),
    (
        "ServiceMonitor",
        "kube-vgpu-scheduler",
        _rename("spec.endpoints", "endpoint"),
        r'unknown field "spec\.endpoint"',
    ),
    (
        "Certificate",
        "kube-vgpu-webhook",
        _set("spec.privateKey.algorithm", "DSA"),
        r'spec\.privateKey\.algorithm: Unsupported value: "DSA"',
    ),
    (
        "PrometheusRule",
        "kube-vgpu",
        _set("spec.groups.0.rules.0.for", "5 minutes"),
        r'spec\.groups\[0\]\.rules\[0\]\.for: Invalid value: "5 minutes"',
    ),
]


@real_only
@pytest.mark.parametrize(
    ("kind", "name", "breakage", "message"),
    BREAKAGES,
    ids=[f"{kind}-{message.split(':')[0].split(' ')[0]}" for kind, _n, _b, message in BREAKAGES],
)
def test_schema_rejects_a_broken_object(
    kubectl: Kubectl, render: Render, tmp_path: Path, kind: str, name: str, breakage: Any, message: str
) -> None:
    """The same object, broken one way, is refused by its CRD's schema: the dry runs above prove something."""
    objects = render(OVERLAYS / "production")
    ensure_namespaces(kubectl, objects)
    broken = _broken(objects, kind, name, breakage)
    intact = _broken(objects, kind, name, lambda _obj: None)
    manifest = tmp_path / "object.yaml"
    manifest.write_text(yaml.safe_dump(intact))
    accepted = kubectl("apply", "--dry-run=server", "-f", str(manifest))
    assert accepted.returncode == 0, accepted.stderr
    manifest.write_text(yaml.safe_dump(broken))
    rejected = kubectl("apply", "--dry-run=server", "-f", str(manifest))
    assert rejected.returncode != 0, f"{kind}/{name} was accepted broken:\n{rejected.stdout}"
    assert re.search(message, rejected.stderr), rejected.stderr


def test_every_component_is_dry_run() -> None:
    """New components and overlays are picked up by the parametrisations above."""
    assert {p.name for p in COMPONENTS.iterdir() if p.is_dir()} == {
        name for combo in COMBINATIONS for name in combo
    }
    assert {p.name for p in OVERLAYS.iterdir() if p.is_dir()} == set(OVERLAY_NAMES)
