"""Least privilege, checked against the code: every Kubernetes API call a service makes is granted to its
ServiceAccount, and nothing else is.

The calls are read from the sources (ast): every name of a `CoreV1Api` / `CoordinationV1Api` /
`AdmissionregistrationV1Api` method, called directly (`core.patch_node(...)`) or passed on
(`raw_json(core.read_node, ...)`, `getattr(core, "read_node")`); a list method handed to a `Reflector` is
also a watch. Each method becomes (API group, resource[/subresource], verb) from the HTTP method and path
the kubernetes client itself sends (its `_<method>_serialize`), so nothing here is a hand-kept table.
"""

from __future__ import annotations

import ast
import functools
import inspect
import re
from collections.abc import Iterable
from pathlib import Path

import pytest
from deploy_helpers import OVERLAYS, REPO, Obj, Render, by_kind, find, pod_spec
from kubernetes import client

API_CLASSES = (client.CoreV1Api, client.CoordinationV1Api, client.AdmissionregistrationV1Api)
Grant = tuple[str, str, str]  # (apiGroup, resource, verb)

#: Which code runs under which workload (the DaemonSet's pod carries two services).
SERVICE_CODE: dict[str, list[Path]] = {
    "scheduler": [REPO / "services/scheduler"],
    "webhook": [REPO / "services/webhook"],
    "device-plugin": [REPO / "services/device_plugin"],
    "monitor": [REPO / "services/monitor"],
    "certgen": [REPO / "services/common/certgen.py"],
}
#: The workload whose ServiceAccount each service runs under (kind, name), and its roles (by name).
SERVICE_WORKLOAD: dict[str, tuple[str, str]] = {
    "scheduler": ("Deployment", "kube-vgpu-scheduler"),
    "webhook": ("Deployment", "kube-vgpu-webhook"),
    "device-plugin": ("DaemonSet", "kube-vgpu-device-plugin"),
    "monitor": ("DaemonSet", "kube-vgpu-device-plugin"),
    "certgen": ("Job", "kube-vgpu-certgen"),
}
SERVICE_ROLES: dict[str, set[str]] = {
    "scheduler": {"kube-vgpu-scheduler", "kube-vgpu-scheduler-lease"},
    "webhook": {"kube-vgpu-webhook"},
    "device-plugin": {"kube-vgpu-device-plugin"},
    "monitor": {"kube-vgpu-monitor"},
    "certgen": {"kube-vgpu-certgen"},
}
#: Roles of third-party containers sharing a ServiceAccount: kube-scheduler in the scheduler pod.
KUBE_SCHEDULER_ROLES = {"kube-vgpu-kube-scheduler-lease", "system:kube-scheduler", "system:volume-scheduler"}
KUBE_SCHEDULER_LEASE_GRANTS = {
    ("coordination.k8s.io", "leases", "create"),
    ("coordination.k8s.io", "leases", "get"),
    ("coordination.k8s.io", "leases", "update"),
}


# --- the code's calls ------------------------------------------------------------------------------------


@functools.cache
def api_methods() -> dict[str, type]:
    methods: dict[str, type] = {}
    for cls in API_CLASSES:
        for name in dir(cls):
            if name.startswith("_") or name.endswith(("_with_http_info", "_without_preload_content")):
                continue
            if callable(getattr(cls, name)) and hasattr(cls, f"_{name}_serialize"):
                methods[name] = cls
    return methods


@functools.cache
def grant_of(method: str, *, watch: bool = False) -> frozenset[Grant]:
    """What calling `method` needs, from the request the client builds."""
    cls = api_methods()[method]
    source = inspect.getsource(getattr(cls, f"_{method}_serialize"))
    http = re.search(r"method='([A-Z]+)'", source)
    path = re.search(r"resource_path='([^']+)'", source)
    assert http and path, f"cannot read the request of {cls.__name__}.{method}"
    parts = [p for p in path.group(1).split("/") if p]
    if parts[0] == "api":
        group, rest = "", parts[2:]
    else:
        group, rest = parts[1], parts[3:]
    if rest[:2] == ["namespaces", "{namespace}"]:
        rest = rest[2:]
    resource, named, sub = rest[0], len(rest) > 1 and rest[1].startswith("{"), rest[2:3]
    full = f"{resource}/{sub[0]}" if sub else resource
    verb = {
        "GET": "get" if named else "list",
        "POST": "create",
        "PUT": "update",
        "PATCH": "patch",
        "DELETE": "delete" if named else "deletecollection",
    }[http.group(1)]
    grants = {(group, full, verb)}
    if watch:
        assert verb == "list", f"{method} is handed to a Reflector but is not a list call"
        grants.add((group, full, "watch"))
    return frozenset(grants)


def python_files(paths: Iterable[Path]) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return files


def calls_in(paths: Iterable[Path]) -> dict[str, bool]:
    """API method names the code uses -> whether some use is a watch (handed to a Reflector)."""
    methods = api_methods()
    used: dict[str, bool] = {}
    for file in python_files(paths):
        tree = ast.parse(file.read_text(), str(file))
        for node in ast.walk(tree):
            name = None
            if isinstance(node, ast.Attribute):
                name = node.attr
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                name = node.value
            if name in methods:
                used.setdefault(name, False)
            if isinstance(node, ast.Call) and node.args:
                func = node.func
                callee = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
                first = node.args[0]
                if callee == "Reflector" and isinstance(first, ast.Attribute) and first.attr in methods:
                    used[first.attr] = True
    return used


_HTTP_VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch"}


def raw_calls_in(paths: Iterable[Path]) -> set[Grant]:
    """What the `call_json(api, "<METHOD>", core_path("<resource>", [name], subresource=...))` calls need
    (the hot paths send requests through the client's REST layer rather than its generated methods)."""
    grants: set[Grant] = set()
    for file in python_files(paths):
        for node in ast.walk(ast.parse(file.read_text(), str(file))):
            if not isinstance(node, ast.Call):
                continue
            for before, arg in zip(node.args, node.args[1:], strict=False):
                if not (
                    isinstance(arg, ast.Call)
                    and getattr(arg.func, "id", None) == "core_path"
                    and isinstance(before, ast.Constant)
                    and before.value in ("GET", "POST", "PUT", "PATCH", "DELETE")
                ):
                    continue
                first = arg.args[0]
                assert isinstance(first, ast.Constant), f"{file}: core_path with a computed resource"
                named = len(arg.args) > 1
                sub = [k.value for k in arg.keywords if k.arg == "subresource"]
                assert all(isinstance(v, ast.Constant) for v in sub), f"{file}: computed subresource"
                resource = str(first.value) + "".join(
                    f"/{v.value}" for v in sub if isinstance(v, ast.Constant)
                )
                method = str(before.value)
                if method == "GET":
                    verb = "get" if named else "list"
                elif method == "DELETE":
                    verb = "delete" if named else "deletecollection"
                else:
                    verb = _HTTP_VERBS[method]
                grants.add(("", resource, verb))
    return grants


def needs_of(service: str) -> set[Grant]:
    needs: set[Grant] = raw_calls_in(SERVICE_CODE[service])
    for method, watched in calls_in(SERVICE_CODE[service]).items():
        needs |= grant_of(method, watch=watched)
    return needs


# --- the manifests' grants ---------------------------------------------------------------------------------


def expand(role: Obj) -> set[Grant]:
    grants: set[Grant] = set()
    for rule in role.get("rules") or []:
        for group in rule.get("apiGroups") or []:
            for resource in rule.get("resources") or []:
                for verb in rule.get("verbs") or []:
                    assert "*" not in (group, resource, verb), f"{role['metadata']['name']}: wildcard rule"
                    grants.add((group, resource, verb))
    return grants


def roles_by_name(objects: list[Obj]) -> dict[str, list[Obj]]:
    roles: dict[str, list[Obj]] = {}
    for role in by_kind(objects, "Role") + by_kind(objects, "ClusterRole"):
        roles.setdefault(role["metadata"]["name"], []).append(role)
    return roles


def bound_role_names(objects: list[Obj], service_account: str) -> set[str]:
    names = set()
    for binding in by_kind(objects, "RoleBinding") + by_kind(objects, "ClusterRoleBinding"):
        if any(s["kind"] == "ServiceAccount" and s["name"] == service_account for s in binding["subjects"]):
            names.add(binding["roleRef"]["name"])
    return names


@pytest.fixture(scope="module", params=["dev", "production"])
def objects(request: pytest.FixtureRequest, render: Render) -> list[Obj]:
    return render(OVERLAYS / request.param)


def test_method_mapping_matches_the_api() -> None:
    assert grant_of("create_namespaced_pod_binding") == {("", "pods/binding", "create")}
    assert grant_of("patch_node_status") == {("", "nodes/status", "patch")}
    assert grant_of("list_pod_for_all_namespaces", watch=True) == {
        ("", "pods", "list"),
        ("", "pods", "watch"),
    }
    assert grant_of("read_namespaced_pod") == {("", "pods", "get")}
    assert grant_of("list_namespaced_lease") == {("coordination.k8s.io", "leases", "list")}
    assert grant_of("patch_mutating_webhook_configuration") == {
        ("admissionregistration.k8s.io", "mutatingwebhookconfigurations", "patch")
    }


def test_every_service_makes_calls_and_common_makes_none() -> None:
    for service in SERVICE_CODE:
        assert needs_of(service), f"no API call found in {service}: is the scan still right?"
    common = [p for p in (REPO / "services/common").rglob("*.py") if p.name != "certgen.py"]
    assert not calls_in(common), "services/common calls the API itself: map that code to its services here"


def test_each_services_roles_grant_exactly_what_its_code_calls(objects: list[Obj]) -> None:
    roles = roles_by_name(objects)
    for service, role_names in SERVICE_ROLES.items():
        if service == "certgen" and "kube-vgpu-certgen" not in roles:
            continue  # the cert-manager overlay has no certgen Job
        granted: set[Grant] = set()
        for name in role_names:
            assert name in roles, f"no Role/ClusterRole {name}"
            for role in roles[name]:
                granted |= expand(role)
        needs = needs_of(service)
        missing, unused = needs - granted, granted - needs
        assert not missing, f"{service}: the code calls {sorted(missing)} but RBAC does not grant it"
        assert not unused, f"{service}: RBAC grants {sorted(unused)} that the code never uses"


def test_roles_are_bound_to_the_service_account_that_runs_the_code(objects: list[Obj]) -> None:
    roles = roles_by_name(objects)
    accounted = set(KUBE_SCHEDULER_ROLES)
    for service, (kind, name) in SERVICE_WORKLOAD.items():
        if service == "certgen" and "kube-vgpu-certgen" not in roles:
            continue
        account = pod_spec(find(objects, kind, name))["serviceAccountName"]
        bound = bound_role_names(objects, account)
        assert SERVICE_ROLES[service] <= bound, f"{account} lacks {SERVICE_ROLES[service] - bound}"
        accounted |= SERVICE_ROLES[service]
    assert set(roles) <= accounted, f"roles nobody's code needs: {set(roles) - accounted}"


def test_service_accounts_hold_nothing_beyond_their_containers(objects: list[Obj]) -> None:
    roles = roles_by_name(objects)
    by_account: dict[str, set[str]] = {}
    for service, (kind, name) in SERVICE_WORKLOAD.items():
        if service == "certgen" and "kube-vgpu-certgen" not in roles:
            continue
        account = pod_spec(find(objects, kind, name))["serviceAccountName"]
        by_account.setdefault(account, set()).update(SERVICE_ROLES[service])
    by_account["kube-vgpu-scheduler"] |= KUBE_SCHEDULER_ROLES
    for account, allowed in by_account.items():
        extra = bound_role_names(objects, account) - allowed
        assert not extra, f"ServiceAccount {account} is also bound to {extra}"
    assert {sa["metadata"]["name"] for sa in by_kind(objects, "ServiceAccount")} == set(by_account)


def test_kube_scheduler_gets_the_builtin_roles_and_only_its_lease(objects: list[Obj]) -> None:
    bound = bound_role_names(objects, "kube-vgpu-scheduler")
    assert bound >= KUBE_SCHEDULER_ROLES
    (lease_role,) = roles_by_name(objects)["kube-vgpu-kube-scheduler-lease"]
    assert lease_role["kind"] == "Role"
    assert expand(lease_role) == KUBE_SCHEDULER_LEASE_GRANTS
    names = {n for rule in lease_role["rules"] for n in rule.get("resourceNames") or []}
    scheduler_config = find(objects, "ConfigMap", _configmap_name(objects, "kube-vgpu-scheduler-config"))
    assert "resourceName: hami-scheduler" in scheduler_config["data"]["kube-scheduler.yaml"]
    assert names == {"hami-scheduler"}


def _configmap_name(objects: list[Obj], prefix: str) -> str:
    (name,) = [
        c["metadata"]["name"]
        for c in by_kind(objects, "ConfigMap")
        if c["metadata"]["name"].startswith(prefix)
    ]
    return str(name)
