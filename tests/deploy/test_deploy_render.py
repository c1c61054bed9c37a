"""deploy/kustomize renders, for every overlay and every component combination, into objects that are valid
(kubernetes-validate's offline schemas for built-in kinds, structural checks for the CRD kinds) and that hold
together: names, namespaces, selectors, Secrets and ConfigMaps referenced by the pods exist."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml
from deploy_helpers import (
    BASE,
    CERT_COMPONENTS,
    COMBINATIONS,
    COMPONENTS,
    CRD_GROUPS,
    DEPLOY,
    KUSTOMIZE,
    NAMESPACE,
    OPTIONAL_COMPONENTS,
    OUR_IMAGES,
    OVERLAY_NAMES,
    OVERLAYS,
    REPO,
    Obj,
    Render,
    by_kind,
    combo_dir,
    containers,
    find,
    group_of,
    image_name,
    pod_spec,
    volume_sources,
    workloads,
    write_kustomization,
)

from sim.local.kube_scheduler_config import parse_duration

K8S_VERSION = "1.32.0"  # the kubectl/kustomize of CI; the oldest minor the manifests target
CLUSTER_SCOPED = frozenset(
    {
        "Namespace",
        "ClusterRole",
        "ClusterRoleBinding",
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
        "PriorityClass",
        "RuntimeClass",
        "CustomResourceDefinition",
    }
)


@pytest.fixture(scope="module", autouse=True)
def _render_all_at_once(render: Render, scratch: Path) -> None:
    prefetch = getattr(render, "prefetch", None)
    if prefetch is not None:
        prefetch(
            [BASE, *(OVERLAYS / n for n in OVERLAY_NAMES), *(combo_dir(scratch, c) for c in COMBINATIONS)]
        )


# --- layout ----------------------------------------------------------------------------------------------


def test_every_component_and_overlay_is_covered() -> None:
    components = {p.parent.name for p in COMPONENTS.glob("*/kustomization.yaml")}
    assert components == set(CERT_COMPONENTS) | set(OPTIONAL_COMPONENTS)
    overlays = {p.parent.name for p in OVERLAYS.glob("*/kustomization.yaml")}
    assert overlays == set(OVERLAY_NAMES)
    for name in components:
        kustomization = yaml.safe_load((COMPONENTS / name / "kustomization.yaml").read_text())
        assert kustomization["kind"] == "Component", name
        assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1alpha1", name
        readme = COMPONENTS / name / "README.md"
        assert readme.is_file() and len(readme.read_text().strip()) > 200, f"{name} needs a README"
    assert (OVERLAYS / "README.md").is_file()
    assert "local" in (OVERLAYS / "README.md").read_text()


def test_no_kustomization_listing_components_sets_a_namespace() -> None:
    """Components copy the namespace from the rendered Services; a `namespace:` next to them would be applied
    after the copy and leave Certificates, caBundle injection and RBAC subjects in the old namespace."""
    for path in KUSTOMIZE.rglob("kustomization.yaml"):
        data = yaml.safe_load(path.read_text())
        if data.get("components"):
            assert "namespace" not in data, f"{path.relative_to(REPO)}: set the namespace in a layer below"


# --- rendering and validation ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", OVERLAY_NAMES)
def test_overlay_renders(render: Render, name: str) -> None:
    objects = render(OVERLAYS / name)
    check_objects(objects, NAMESPACE)


@pytest.mark.parametrize("combo", COMBINATIONS, ids=["+".join(c) for c in COMBINATIONS])
def test_component_combination_renders(render: Render, scratch: Path, combo: tuple[str, ...]) -> None:
    objects = render(combo_dir(scratch, combo))
    check_objects(objects, NAMESPACE)


def test_base_renders_without_components(render: Render) -> None:
    objects = render(BASE)
    kinds = {o["kind"] for o in objects}
    assert {"Deployment", "DaemonSet", "MutatingWebhookConfiguration", "ConfigMap"} <= kinds
    assert not kinds & {"Certificate", "Job", "ServiceMonitor"}


@pytest.mark.parametrize("cert", CERT_COMPONENTS)
def test_another_namespace_through_a_layer(render: Render, scratch: Path, cert: str) -> None:
    """The documented way to install elsewhere: a layer with `namespace:` under the components."""
    layer = write_kustomization(
        scratch / f"ns-layer-{cert}", resources=[BASE], extra={"namespace": "gpu-system"}
    )
    combo = (cert, *OPTIONAL_COMPONENTS)
    objects = render(combo_dir(scratch, combo, namespace_layer=layer))
    check_objects(objects, "gpu-system")
    assert ".kube-vgpu.svc" not in yaml.safe_dump_all(objects), "a name still carries base's namespace"


def check_objects(objects: list[Obj], namespace: str) -> None:
    assert objects, "nothing rendered"
    keys = [(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objects]
    duplicates = {k for k in keys if keys.count(k) > 1}
    assert not duplicates, f"duplicate objects: {duplicates}"
    validate_core(objects)
    check_namespaces(objects, namespace)
    check_references(objects)
    check_crds(objects, namespace)


_VALID: set[str] = set()  # objects already validated (most repeat across the combinations)


def validate_core(objects: list[Obj]) -> None:
    """Built-in kinds against the offline OpenAPI schemas (strict: unknown fields are errors)."""
    try:
        import kubernetes_validate
    except ImportError:  # not installed: the required fields at least
        for obj in objects:
            if group_of(obj) not in CRD_GROUPS:
                check_required_fields(obj)
        return
    errors = []
    for obj in objects:
        key = json.dumps(obj, sort_keys=True)
        if group_of(obj) in CRD_GROUPS or key in _VALID:
            continue
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = "/".join(str(p) for p in exc.path)
            errors.append(f"{obj['kind']}/{obj['metadata']['name']}: {path}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError:
            errors.append(f"{obj['kind']}/{obj['metadata']['name']}: no schema for {obj['apiVersion']}")
        else:
            _VALID.add(key)
    assert not errors, "\n".join(errors)


def check_required_fields(obj: Obj) -> None:
    """The fallback without kubernetes-validate: the fields the API server would refuse to do without."""
    assert obj.get("apiVersion") and obj.get("kind") and obj["metadata"].get("name"), obj
    kind, name = obj["kind"], obj["metadata"]["name"]
    if kind in ("Deployment", "DaemonSet", "Job"):
        template = obj["spec"]["template"]
        if kind != "Job":
            assert obj["spec"]["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
        for ctr in containers(obj):
            assert ctr.get("name") and ctr.get("image"), f"{kind}/{name}"
            for port in ctr.get("ports") or []:
                assert isinstance(port["containerPort"], int) and len(port.get("name", "")) <= 15
    elif kind == "Service":
        assert obj["spec"]["ports"] and all(isinstance(p["port"], int) for p in obj["spec"]["ports"])
    elif kind in ("Role", "ClusterRole"):
        assert all(r.get("verbs") and "apiGroups" in r for r in obj.get("rules") or []), name
    elif kind in ("RoleBinding", "ClusterRoleBinding"):
        assert obj["roleRef"]["kind"] and obj["roleRef"]["name"] and obj["subjects"], name
    elif kind == "MutatingWebhookConfiguration":
        for hook in obj["webhooks"]:
            required = ("name", "clientConfig", "sideEffects", "admissionReviewVersions")
            assert all(hook.get(k) for k in required), name
    elif kind == "ConfigMap":
        assert all(isinstance(v, str) for v in (obj.get("data") or {}).values()), name


def check_namespaces(objects: list[Obj], namespace: str) -> None:
    for obj in objects:
        meta = obj["metadata"]
        if obj["kind"] in CLUSTER_SCOPED:
            assert "namespace" not in meta, f"cluster-scoped {obj['kind']}/{meta['name']} has a namespace"
        else:
            assert meta.get("namespace") == namespace, (
                f"{obj['kind']}/{meta['name']}: {meta.get('namespace')}"
            )
    assert find(objects, "Namespace", namespace)
    for binding in by_kind(objects, "RoleBinding") + by_kind(objects, "ClusterRoleBinding"):
        for subject in binding["subjects"]:
            if subject["kind"] == "ServiceAccount":
                assert subject.get("namespace") == namespace, binding["metadata"]["name"]
    for config in by_kind(objects, "MutatingWebhookConfiguration"):
        for hook in config["webhooks"]:
            assert hook["clientConfig"]["service"]["namespace"] == namespace
        inject = (config["metadata"].get("annotations") or {}).get("cert-manager.io/inject-ca-from")
        if inject is not None:
            cert_ns, cert_name = inject.split("/")
            assert cert_ns == namespace
            find(objects, "Certificate", cert_name)
    for cert in by_kind(objects, "Certificate"):
        for dns in cert["spec"].get("dnsNames") or []:
            parts = dns.split(".")
            if len(parts) > 2 and parts[2] == "svc":
                assert parts[1] == namespace, f"Certificate {cert['metadata']['name']}: {dns}"
                find(objects, "Service", parts[0])


def check_references(objects: list[Obj]) -> None:
    """Everything a pod or binding names exists in the render (or is a built-in / created at run time)."""
    secrets_written = certificate_secrets(objects)
    for workload in workloads(objects):
        spec = pod_spec(workload)
        name = workload["metadata"]["name"]
        find(objects, "ServiceAccount", spec["serviceAccountName"])
        for vol in spec.get("volumes") or []:
            for kind, ref, items in volume_sources(vol):
                if kind == "ConfigMap":
                    data = find(objects, "ConfigMap", ref).get("data") or {}
                    for item in items or []:
                        assert item["key"] in data, f"{name}: ConfigMap {ref} has no {item['key']}"
                else:
                    assert ref in secrets_written, f"{name}: nothing writes Secret {ref}"
        for ctr in containers(workload):
            mounts = {m["name"] for m in ctr.get("volumeMounts") or []}
            volumes = {v["name"] for v in spec.get("volumes") or []}
            assert mounts <= volumes, f"{name}/{ctr['name']} mounts unknown volumes {mounts - volumes}"
    for binding in by_kind(objects, "RoleBinding") + by_kind(objects, "ClusterRoleBinding"):
        role = binding["roleRef"]
        if not role["name"].startswith("system:"):
            find(objects, role["kind"], role["name"])
        for subject in binding["subjects"]:
            find(objects, "ServiceAccount", subject["name"])
    for service in by_kind(objects, "Service"):
        selector = dict(service["spec"]["selector"])
        selector.pop("hami.io/scheduler-role", None)  # set by the extender at run time (leader|follower)
        matched = [
            w
            for w in workloads(objects)
            if selector.items() <= (w["spec"]["template"]["metadata"].get("labels") or {}).items()
        ]
        assert matched, f"Service {service['metadata']['name']} selects no pod template"
        names = {p["name"] for w in matched for c in containers(w) for p in c.get("ports") or []}
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in names, f"Service {service['metadata']['name']}: {port['targetPort']}"
    for pdb in by_kind(objects, "PodDisruptionBudget"):
        labels = pdb["spec"]["selector"]["matchLabels"]
        assert any(
            labels.items() <= w["spec"]["template"]["metadata"]["labels"].items() for w in workloads(objects)
        )


def certificate_secrets(objects: list[Obj]) -> set[str]:
    """Secrets a certificate component writes: cert-manager Certificates, or the certgen Job's `create`."""
    written = {c["spec"]["secretName"] for c in by_kind(objects, "Certificate")}
    for job in by_kind(objects, "Job"):
        for ctr in containers(job):
            argv = [*(ctr.get("command") or []), *(ctr.get("args") or [])]
            if argv[:2] == ["kube-vgpu-certgen", "create"]:
                written.update(a.split("=", 1)[1] for a in argv if a.startswith("--secret-name="))
    return written


# --- custom resources (no offline schema): structure -------------------------------------------------------

CERT_USAGES = frozenset({"server auth", "client auth", "digital signature", "key encipherment", "cert sign"})


def check_crds(objects: list[Obj], namespace: str) -> None:
    issuers = {i["metadata"]["name"]: i for i in by_kind(objects, "Issuer")}
    for issuer in issuers.values():
        assert issuer["apiVersion"] == "cert-manager.io/v1"
        kinds = set(issuer["spec"]) & {"selfSigned", "ca", "acme", "vault", "venafi"}
        assert len(kinds) == 1, f"Issuer {issuer['metadata']['name']} needs exactly one issuer type"
        if "ca" in kinds:
            secret = issuer["spec"]["ca"]["secretName"]
            assert any(c["spec"]["secretName"] == secret for c in by_kind(objects, "Certificate"))
    for cert in by_kind(objects, "Certificate"):
        spec, name = cert["spec"], cert["metadata"]["name"]
        assert cert["apiVersion"] == "cert-manager.io/v1"
        assert spec["secretName"] and spec["issuerRef"]["kind"] == "Issuer"
        assert spec["issuerRef"]["name"] in issuers, f"Certificate {name}: no Issuer {spec['issuerRef']}"
        assert spec.get("dnsNames") or spec.get("ipAddresses") or spec.get("commonName"), name
        assert set(spec.get("usages") or []) <= CERT_USAGES, name
        for field in ("duration", "renewBefore"):
            if field in spec:
                assert parse_duration(spec[field]) > 0, f"Certificate {name}: {field}"
        assert spec.get("privateKey", {}).get("algorithm", "RSA") in {"RSA", "ECDSA", "Ed25519"}
    services = by_kind(objects, "Service")
    for monitor in by_kind(objects, "ServiceMonitor"):
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        labels = monitor["spec"]["selector"]["matchLabels"]
        selected = [s for s in services if labels.items() <= (s["metadata"].get("labels") or {}).items()]
        assert selected, f"ServiceMonitor {monitor['metadata']['name']} selects no Service"
        ports = {p["name"] for s in selected for p in s["spec"]["ports"]}
        for endpoint in monitor["spec"]["endpoints"]:
            assert endpoint["port"] in ports
            assert endpoint.get("honorLabels") is True, "keep the series' own namespace/pod labels"
            assert parse_duration(endpoint["interval"]) > 0
    for rule in by_kind(objects, "PrometheusRule"):
        check_prometheus_rule(rule)


def check_prometheus_rule(rule: Obj) -> None:
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    groups = rule["spec"]["groups"]
    names = [g["name"] for g in groups]
    assert len(names) == len(set(names))
    for group in groups:
        for entry in group["rules"]:
            assert ("alert" in entry) != ("record" in entry)
            expr = entry["expr"]
            for open_, close in ("()", "{}", "[]"):
                assert expr.count(open_) == expr.count(close), f"{entry.get('alert')}: unbalanced {open_}"
            if "alert" in entry:
                assert re.fullmatch(r"KubeVgpu[A-Za-z]+", entry["alert"])
                assert entry["labels"]["severity"] in {"critical", "warning", "info"}
                assert {"summary", "description", "runbook"} <= set(entry["annotations"]), entry["alert"]
                assert parse_duration(entry["for"]) > 0


# --- what differs between the overlays ---------------------------------------------------------------------


def test_dev_is_single_replica_with_self_signed_certs(render: Render) -> None:
    objects = render(OVERLAYS / "dev")
    for deployment in by_kind(objects, "Deployment"):
        assert deployment["spec"]["replicas"] == 1
    assert find(objects, "Job", "kube-vgpu-certgen")
    assert not by_kind(objects, "Certificate")


def test_production_is_ha_with_cert_manager_monitoring_and_resources(render: Render) -> None:
    objects = render(OVERLAYS / "production")
    scheduler = find(objects, "Deployment", "kube-vgpu-scheduler")
    assert scheduler["spec"]["replicas"] == 2
    anti = pod_spec(scheduler)["affinity"]["podAntiAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]
    assert anti[0]["topologyKey"] == "kubernetes.io/hostname"
    assert find(objects, "Deployment", "kube-vgpu-webhook")["spec"]["replicas"] == 2
    for name in ("kube-vgpu-scheduler", "kube-vgpu-webhook"):
        assert find(objects, "PodDisruptionBudget", name)["spec"]["minAvailable"] == 1
    assert {c["metadata"]["name"] for c in by_kind(objects, "Certificate")} >= {
        "kube-vgpu-webhook",
        "kube-vgpu-scheduler",
    }
    assert not by_kind(objects, "Job")
    assert len(by_kind(objects, "ServiceMonitor")) == 2 and by_kind(objects, "PrometheusRule")
    for workload in workloads(objects):
        for ctr in containers(workload):
            resources = ctr.get("resources") or {}
            assert {"cpu", "memory"} <= set(resources.get("requests") or {}), ctr["name"]
            assert "memory" in (resources.get("limits") or {}), ctr["name"]


def test_images_are_pinned_and_match_the_package_version(render: Render) -> None:
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    for name in OVERLAY_NAMES:
        for workload in workloads(render(OVERLAYS / name)):
            for ctr in containers(workload):
                image = ctr["image"]
                assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), image
                if image_name(image) in OUR_IMAGES:
                    assert image.endswith(f":{version}"), f"{image}: the images are built at {version}"
                    assert (DEPLOY / "docker" / f"{image_name(image).split('/')[1]}.Dockerfile").is_file()
                else:
                    assert re.fullmatch(r"registry\.k8s\.io/kube-scheduler:v1\.\d+\.\d+", image), image


def test_yaml_lint() -> None:
    yamllint_config = pytest.importorskip("yamllint.config", reason="yamllint is not installed")
    linter = pytest.importorskip("yamllint.linter")
    config = yamllint_config.YamlLintConfig(file=str(DEPLOY / ".yamllint.yaml"))
    problems = []
    for path in sorted([*KUSTOMIZE.rglob("*.yaml"), *(DEPLOY / "prometheus").rglob("*.yaml")]):
        for problem in linter.run(path.read_text(), config, str(path)):
            problems.append(f"{path.relative_to(REPO)}:{problem.line}:{problem.column} {problem.message}")
    assert not problems, "\n".join(problems)
