"""The manifests configure the services the way the services read their configuration: each container's
config file (from its ConfigMap), env and flags load with the service's own model and loader; ports,
probes, Services and mount paths agree with the binds and paths that configuration names; the
KubeSchedulerConfiguration loads with local mode's loader and matches the extender and the device config."""

from __future__ import annotations

import argparse
import importlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from deploy_helpers import (
    DEPLOY,
    NAMESPACE,
    OVERLAY_NAMES,
    OVERLAYS,
    Obj,
    Render,
    by_kind,
    configmap_file,
    container,
    container_port,
    env_value,
    field_ref,
    file_source,
    find,
    host_path_of,
    mount_for,
)
from pydantic import BaseModel

from services.common.config import add_config_flags, apply_env_aliases, flag_overrides, load_config
from services.common.device_config import DeviceConfig, load_device_config
from sim.local.kube_scheduler_config import KubeSchedulerConfiguration, load_scheduler_config

#: fieldRef values the kubelet would fill in.
DOWNWARD = {
    "spec.nodeName": "gpu-node-a",
    "metadata.namespace": NAMESPACE,
    "metadata.name": "kube-vgpu-scheduler-5f7c9d8b6-x2x7q",
}


@dataclass(frozen=True)
class ServiceSpec:
    config_module: str
    model: str
    #: Config module with `HAMI_ENV_ALIASES` (HAMi's NODE_NAME / HOOK_PATH env names), if the service has it.
    hami_env_module: str | None = None


SERVICES = {
    "kube-vgpu-scheduler": ServiceSpec("services.scheduler.config", "SchedulerConfig"),
    "kube-vgpu-webhook": ServiceSpec("services.webhook.config", "WebhookConfig"),
    "kube-vgpu-device-plugin": ServiceSpec(
        "services.device_plugin.config", "DevicePluginConfig", "services.device_plugin.config"
    ),
    "kube-vgpu-monitor": ServiceSpec("services.monitor.config", "MonitorConfig", "services.monitor.config"),
}
WORKLOAD_OF = {
    "kube-vgpu-scheduler": ("Deployment", "kube-vgpu-scheduler"),
    "kube-vgpu-webhook": ("Deployment", "kube-vgpu-webhook"),
    "kube-vgpu-device-plugin": ("DaemonSet", "kube-vgpu-device-plugin"),
    "kube-vgpu-monitor": ("DaemonSet", "kube-vgpu-device-plugin"),
}


def leaf_paths(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    paths: set[tuple[str, ...]] = set()
    for name, info in model.model_fields.items():
        annotation = info.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            paths |= leaf_paths(annotation, (*prefix, name))
        else:
            paths.add((*prefix, name))
    return paths


@dataclass
class Loaded:
    objects: list[Obj]
    workload: Obj
    container: Obj
    cfg: Any
    config_path: str


def load_container_config(
    objects: list[Obj], service: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Loaded:
    """The configuration the container would start with: its ConfigMap file, env and flags, through the
    service's own loader (flag > env > file > default)."""
    spec = SERVICES[service]
    module = importlib.import_module(spec.config_module)
    model: type[BaseModel] = getattr(module, spec.model)
    prefix: str = module.ENV_PREFIX
    kind, name = WORKLOAD_OF[service]
    workload = find(objects, kind, name)
    ctr = container(workload, service)
    assert not ctr.get("command"), f"{service}: the image's ENTRYPOINT runs the service; pass args only"

    parser = argparse.ArgumentParser(prog=service, exit_on_error=False)
    add_config_flags(parser, model)
    args = parser.parse_args(ctr.get("args") or [])
    assert args.config, f"{service} gets no --config"
    file = tmp_path / f"{service}.yaml"
    file.write_text(configmap_file(objects, workload, ctr, args.config))

    environ = {e["name"]: env_value(workload, ctr, e["name"], DOWNWARD) or "" for e in ctr.get("env") or []}
    known = {prefix + "__".join(p.upper() for p in path) for path in leaf_paths(model)}
    unknown = sorted(n for n in environ if n.startswith(prefix) and n not in known)
    assert not unknown, f"{service}: env {unknown} names no config key (the loader would ignore it)"
    if spec.hami_env_module:
        aliases = importlib.import_module(spec.hami_env_module).HAMI_ENV_ALIASES
        apply_env_aliases(environ, aliases, prefix)
    for key, value in environ.items():  # for default factories that read os.environ (POD_NAME, ...)
        monkeypatch.setenv(key, value)
    cfg = load_config(model, path=file, env_prefix=prefix, overrides=flag_overrides(args), environ=environ)
    return Loaded(objects, workload, ctr, cfg, args.config)


def port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def listens_on_pod_ip(address: str) -> bool:
    host = address.rsplit(":", 1)[0].strip("[]")
    return host in ("", "0.0.0.0", "::")


def assert_secret_file(loaded: Loaded, path: str, key: str) -> str:
    kind, name, got = file_source(loaded.workload, loaded.container, path)
    assert (kind, got) == ("Secret", key), f"{path} should be key {key} of a Secret"
    return name


def device_config_at(loaded: Loaded, path: str | None, tmp_path: Path) -> DeviceConfig:
    assert path, "device_config_file is not set"
    file = tmp_path / "device-config.yaml"
    file.write_text(configmap_file(loaded.objects, loaded.workload, loaded.container, path))
    return load_device_config(file)


@pytest.fixture(params=OVERLAY_NAMES)
def objects(request: pytest.FixtureRequest, render: Render) -> list[Obj]:
    return render(OVERLAYS / request.param)


# --- scheduler ---------------------------------------------------------------------------------------------


def probe_port(probe: Obj, ctr: Obj) -> int:
    handler = probe.get("httpGet") or probe.get("grpc") or probe.get("tcpSocket")
    assert handler is not None
    port = handler["port"]
    return port if isinstance(port, int) else container_port(ctr, port)


def test_scheduler_config(objects: list[Obj], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = load_container_config(objects, "kube-vgpu-scheduler", tmp_path, monkeypatch)
    cfg, ctr = loaded.cfg, loaded.container
    assert port_of(cfg.http_bind) == container_port(ctr, "https") and listens_on_pod_ip(cfg.http_bind)
    assert port_of(cfg.grpc_bind) == container_port(ctr, "grpc") and listens_on_pod_ip(cfg.grpc_bind)
    assert port_of(cfg.metrics_bind_address) == container_port(ctr, "metrics")
    assert listens_on_pod_ip(cfg.metrics_bind_address)
    for probe in ("readinessProbe", "livenessProbe"):
        assert probe_port(ctr[probe], ctr) == port_of(cfg.http_bind)
        assert ctr[probe]["httpGet"]["scheme"] == ("HTTPS" if cfg.cert_file else "HTTP")
    assert ctr["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert ctr["livenessProbe"]["httpGet"]["path"] == "/healthz"
    secret = assert_secret_file(loaded, cfg.cert_file, "tls.crt")
    assert assert_secret_file(loaded, cfg.key_file, "tls.key") == secret == "kube-vgpu-scheduler-tls"
    device_config_at(loaded, cfg.device_config_file, tmp_path)
    # Leadership follows kube-scheduler's Lease in the pod's namespace; the pod is labelled with its role.
    assert cfg.leader_elect and cfg.lease_namespace == NAMESPACE
    assert field_ref(ctr, "KUBE_VGPU_SCHEDULER_LEASE_NAMESPACE") == "metadata.namespace"
    assert cfg.pod_name == DOWNWARD["metadata.name"] and cfg.pod_namespace == NAMESPACE
    service = find(objects, "Service", "kube-vgpu-scheduler")
    ports = {p["name"]: p["targetPort"] for p in service["spec"]["ports"]}
    assert ports == {"https": "https", "grpc": "grpc", "metrics": "metrics"}
    assert service["spec"]["selector"]["hami.io/scheduler-role"] == "leader"


def kube_scheduler_config(objects: list[Obj], tmp_path: Path) -> tuple[KubeSchedulerConfiguration, Obj, Obj]:
    workload = find(objects, "Deployment", "kube-vgpu-scheduler")
    ctr = container(workload, "kube-scheduler")
    flags = dict(a.split("=", 1) for a in ctr["command"][1:] if a.startswith("--") and "=" in a)
    assert ctr["command"][0] == "kube-scheduler"
    file = tmp_path / "kube-scheduler.yaml"
    file.write_text(configmap_file(objects, workload, ctr, flags["--config"]))
    return load_scheduler_config(file), workload, ctr


def test_kube_scheduler_configuration(
    objects: list[Obj], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    extender = load_container_config(objects, "kube-vgpu-scheduler", tmp_path, monkeypatch)
    cfg = extender.cfg
    ksc, workload, ctr = kube_scheduler_config(objects, tmp_path)
    assert ksc.scheduler_names == {cfg.scheduler_name} == {"hami-scheduler"}
    (ext,) = ksc.extenders
    assert ext.url_prefix == f"https://127.0.0.1:{port_of(cfg.http_bind)}"
    assert (ext.filter_verb, ext.prioritize_verb, ext.bind_verb) == ("filter", "prioritize", "bind")
    assert ext.weight > 0 and ext.node_cache_capable and not ext.ignorable
    # HAMi pairs its 28 s node-lock retry with a 30 s extender timeout: the bind's lock wait must fit.
    assert ext.http_timeout == 30.0 > cfg.bind_lock_wait_seconds
    # TLS verified against the CA of the extender's own serving Secret, not `insecure: true`.
    assert ext.enable_https and cfg.cert_file and ext.tls_config is not None
    assert not ext.tls_config.insecure and ext.tls_config.server_name
    kind, secret, key = file_source(workload, ctr, ext.tls_config.ca_file)
    assert (kind, secret, key) == ("Secret", "kube-vgpu-scheduler-tls", "ca.crt")
    assert ext.tls_config.server_name in serving_names(objects, secret)
    # Every resource the device config names is left to the extender.
    device = device_config_at(extender, cfg.device_config_file, tmp_path).nvidia
    names = {
        device.resource_count_name,
        device.resource_memory_name,
        device.resource_memory_percentage_name,
        device.resource_core_name,
        device.resource_priority_name,
    }
    assert {r.name for r in ext.managed_resources} == names
    assert all(r.ignored_by_scheduler for r in ext.managed_resources)
    # Leader election on Lease hami-scheduler in the pod's namespace (flag overrides the file's value).
    election = ksc.leader_election
    assert election["leaderElect"] is True and election["resourceName"] == cfg.lease_name
    assert "--leader-elect-resource-namespace=$(POD_NAMESPACE)" in ctr["command"]
    assert field_ref(ctr, "POD_NAMESPACE") == "metadata.namespace"
    assert election["resourceNamespace"] == NAMESPACE


def serving_names(objects: list[Obj], secret: str) -> set[str]:
    """The SANs the certificate component puts into `secret`."""
    names: set[str] = set()
    for cert in by_kind(objects, "Certificate"):
        if cert["spec"]["secretName"] == secret:
            names |= set(cert["spec"].get("dnsNames") or []) | set(cert["spec"].get("ipAddresses") or [])
    for job in by_kind(objects, "Job"):
        for ctr in job["spec"]["template"]["spec"].get("initContainers") or []:
            argv = ctr.get("command") or []
            if f"--secret-name={secret}" in argv:
                values = [a.split("=", 1) for a in argv if a.startswith("--")]
                names |= {v for k, v in values if k in ("--service", "--host")}
    assert names, f"nothing issues Secret {secret}"
    return names


# --- webhook -----------------------------------------------------------------------------------------------


def test_webhook_config(objects: list[Obj], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = load_container_config(objects, "kube-vgpu-webhook", tmp_path, monkeypatch)
    cfg, ctr = loaded.cfg, loaded.container
    assert not cfg.insecure_http
    assert port_of(cfg.http_bind) == container_port(ctr, "https") and listens_on_pod_ip(cfg.http_bind)
    for probe in ("readinessProbe", "livenessProbe"):
        assert probe_port(ctr[probe], ctr) == port_of(cfg.http_bind)
        assert ctr[probe]["httpGet"]["scheme"] == "HTTPS"
    secret = assert_secret_file(loaded, cfg.cert_file, "tls.crt")
    assert assert_secret_file(loaded, cfg.key_file, "tls.key") == secret == "kube-vgpu-webhook-tls"
    device_config_at(loaded, cfg.device_config_file, tmp_path)
    scheduler = load_container_config(objects, "kube-vgpu-scheduler", tmp_path, monkeypatch).cfg
    assert cfg.scheduler_name == scheduler.scheduler_name
    service = find(objects, "Service", "kube-vgpu-webhook")
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] == "https"

    (hook,) = find(objects, "MutatingWebhookConfiguration", "kube-vgpu-webhook")["webhooks"]
    assert hook["clientConfig"]["service"] == {
        "name": "kube-vgpu-webhook",
        "namespace": NAMESPACE,
        "path": "/webhook",
        "port": port["port"],
    }
    assert f'"{hook["clientConfig"]["service"]["path"]}"' in webhook_routes()
    assert hook["rules"] == [
        {
            "operations": ["CREATE"],
            "apiGroups": [""],
            "apiVersions": ["v1"],
            "resources": ["pods"],
            "scope": "Namespaced",
        }
    ]
    assert hook["failurePolicy"] == "Ignore" and hook["sideEffects"] == "None"
    assert hook["timeoutSeconds"] == 10 and hook["matchPolicy"] == "Equivalent"
    assert hook["reinvocationPolicy"] == "Never"
    ignore = {"matchExpressions": [{"key": "hami.io/webhook", "operator": "NotIn", "values": ["ignore"]}]}
    assert hook["namespaceSelector"] == ignore and hook["objectSelector"] == ignore
    from services.webhook import server

    supported = {v.rsplit("/", 1)[1] for v in (server.ADMISSION_V1, server.ADMISSION_V1BETA1)}
    assert set(hook["admissionReviewVersions"]) <= supported
    # kube-vgpu's own namespace and pods are never sent to the webhook.
    assert find(objects, "Namespace", NAMESPACE)["metadata"]["labels"]["hami.io/webhook"] == "ignore"


def webhook_routes() -> str:
    return (Path(__file__).resolve().parents[2] / "services/webhook/server.py").read_text()


# --- device plugin and monitor -----------------------------------------------------------------------------


def test_device_plugin_config(objects: list[Obj], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = load_container_config(objects, "kube-vgpu-device-plugin", tmp_path, monkeypatch)
    cfg, ctr, ds = loaded.cfg, loaded.container, loaded.workload
    assert cfg.node_name == DOWNWARD["spec.nodeName"] and field_ref(ctr, "NODE_NAME") == "spec.nodeName"
    assert port_of(cfg.grpc_bind) == container_port(ctr, "grpc") and listens_on_pod_ip(cfg.grpc_bind)
    from services.device_plugin.hostfs import HostLayout
    from services.device_plugin.kubelet import SERVICE_NAME

    assert ctr["readinessProbe"]["grpc"] == {"port": port_of(cfg.grpc_bind), "service": SERVICE_NAME}
    assert ctr["livenessProbe"]["grpc"]["port"] == port_of(cfg.grpc_bind)
    # The kubelet's socket dir, the vgpu dir and the lock dir are the host's, at the same paths: Allocate
    # hands the kubelet host paths built from what this process sees.
    assert host_path_of(ds, ctr, cfg.plugin_dir) == cfg.plugin_dir == "/var/lib/kubelet/device-plugins"
    layout = HostLayout(cfg.hook_path, cfg.host_hook_dir, cfg.vgpulock_dir)
    assert host_path_of(ds, ctr, str(layout.host_vgpu)) == str(layout.host_vgpu) == "/usr/local/vgpu"
    assert layout.container_vgpu == "/usr/local/vgpu"  # HAMi's path inside GPU containers
    assert host_path_of(ds, ctr, cfg.vgpulock_dir) == cfg.vgpulock_dir == "/tmp/vgpulock"
    for path in (cfg.plugin_dir, str(layout.host_vgpu), cfg.vgpulock_dir):
        assert not mount_for(ds, ctr, path)[0].get("readOnly")
    # libvgpu ships in the image at libvgpu_source.
    dockerfile = (DEPLOY / "docker/device-plugin.Dockerfile").read_text()
    assert re.search(rf"^COPY --from=\S+ \S+/libvgpu\.so {re.escape(cfg.libvgpu_source)}$", dockerfile, re.M)
    device_config_at(loaded, cfg.device_config_file, tmp_path)
    node_config = configmap_file(objects, ds, ctr, cfg.node_config_file)
    node_file = tmp_path / "node-config.json"
    node_file.write_text(node_config)
    from services.device_plugin.config import load_node_override

    assert load_node_override(node_file, cfg.node_name) is None  # an empty nodeconfig list to fill in
    assert ctr["securityContext"]["privileged"] is True
    assert ds["spec"]["template"]["spec"]["nodeSelector"]["gpu"] == "on"


def test_monitor_config(objects: list[Obj], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    loaded = load_container_config(objects, "kube-vgpu-monitor", tmp_path, monkeypatch)
    cfg, ctr, ds = loaded.cfg, loaded.container, loaded.workload
    assert cfg.node_name == DOWNWARD["spec.nodeName"]
    assert port_of(cfg.metrics_bind_address) == container_port(ctr, "metrics") == 9394
    assert listens_on_pod_ip(cfg.metrics_bind_address)
    # Named apart from the device plugin's `grpc` port: names are unique across a pod's containers.
    assert port_of(cfg.grpc_bind) == container_port(ctr, "monitor-grpc") and listens_on_pod_ip(cfg.grpc_bind)
    for probe in ("readinessProbe", "livenessProbe"):
        assert ctr[probe]["grpc"]["port"] == port_of(cfg.grpc_bind)
    # The monitor reads the caches the device plugin creates: the same host directory.
    plugin = load_container_config(objects, "kube-vgpu-device-plugin", tmp_path, monkeypatch).cfg
    from services.device_plugin.hostfs import HostLayout

    plugin_vgpu = HostLayout(plugin.hook_path, plugin.host_hook_dir, plugin.vgpulock_dir).host_vgpu
    assert host_path_of(ds, ctr, str(cfg.containers_dir)) == f"{plugin_vgpu}/containers"
    service = find(objects, "Service", "kube-vgpu-monitor")
    (port,) = service["spec"]["ports"]
    assert (port["port"], port["targetPort"]) == (9394, "metrics")
    assert ctr["securityContext"]["runAsNonRoot"] is True


def test_every_config_file_is_used_and_valid(objects: list[Obj], tmp_path: Path) -> None:
    """Each generated ConfigMap key is mounted somewhere, and device-config.yaml loads on its own."""
    mounted: set[tuple[str, str]] = set()
    for workload in by_kind(objects, "Deployment") + by_kind(objects, "DaemonSet"):
        for vol in workload["spec"]["template"]["spec"].get("volumes") or []:
            sources = [vol.get("configMap")] + [
                s.get("configMap") for s in (vol.get("projected") or {}).get("sources") or []
            ]
            for source in filter(None, sources):
                mounted |= {(source["name"], item["key"]) for item in source.get("items") or []}
    for config_map in by_kind(objects, "ConfigMap"):
        for key in config_map["data"]:
            assert (config_map["metadata"]["name"], key) in mounted, f"{key} is never mounted"
    (device,) = [c for c in by_kind(objects, "ConfigMap") if "device-config.yaml" in c["data"]]
    file = tmp_path / "device-config.yaml"
    file.write_text(device["data"]["device-config.yaml"])
    assert load_device_config(file) == DeviceConfig()  # HAMi's defaults, spelled out
