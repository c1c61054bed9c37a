"""Local mode's process supervisor: every component as its own process, wired the way a cluster wires them.

kube-local (API server) <- webhook (HTTPS, registered through a MutatingWebhookConfiguration with a CA
bundle) <- scheduler extender (HTTP) <- kube-scheduler stand-in (reads a KubeSchedulerConfiguration), plus
per GPU node a device plugin and a kubelet stand-in. Each process logs JSON to `<run dir>/logs/<name>.log`;
configs are written to `<run dir>/config/`. Ports are picked free at start so two suites never collide.
"""

from __future__ import annotations

import base64
import os
import secrets
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from services.common.certs import issue_serving_certificate
from services.common.config import KubeAccess
from services.common.log import get_logger
from sim.backoff import RESTART_RESET_AFTER_SECONDS, restart_delay
from sim.kubelocal.routes import INSTANCE_HEADER
from sim.ports import free_port as free_port  # re-exported: bench/ imports it from here

log = get_logger("kube-vgpu-local")
BIN = Path(sys.executable).parent
REPO_DEPLOY_LOCAL = Path("deploy/local")
REPO_DEPLOY_BASE = Path("deploy/kustomize/base")
CONTROL_PLANES = ("kube-local", "real")
# The deploy's ServiceAccounts: each process runs with exactly the rights the deploy grants its pod.
SCHEDULER_SA, WEBHOOK_SA, NODE_AGENT_SA = (
    "kube-vgpu-scheduler",
    "kube-vgpu-webhook",
    "kube-vgpu-device-plugin",
)
# The name the deploy's KubeSchedulerConfiguration expects on the extender's serving certificate.
EXTENDER_SERVER_NAME = "kube-vgpu-scheduler"


class SuiteError(RuntimeError):
    pass


def port_is_free(host: str, port: int) -> bool:
    """Whether `port` on `host` can be bound now (a port another server holds cannot)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def console_script(name: str, module: str) -> list[str]:
    script = BIN / name
    return [str(script)] if script.exists() else [sys.executable, "-m", module]


@dataclass
class ManagedProcess:
    name: str
    argv: list[str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    env: dict[str, str] | None = None
    restarts: int = 0
    crashes_in_a_row: int = 0
    started_at: float = 0.0
    restart_due: float | None = None  # monotonic time of the pending restart of a dead child

    def start(self, env: dict[str, str] | None = None) -> None:
        if env is not None:
            self.env = env
        env = self.env
        self.started_at = time.monotonic()
        self.restart_due = None
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log_file:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})},
            )
        log.info("process_started", process=self.name, pid=self.proc.pid, log=str(self.log_path))

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def supervise(self, now: float) -> bool:
        """Called periodically: a dead child gets a restart scheduled with backoff, and is restarted once
        it is due. True when it was restarted on this call."""
        if self.proc is None or self.alive():
            if self.alive() and now - self.started_at >= RESTART_RESET_AFTER_SECONDS:
                self.crashes_in_a_row = 0
            return False
        if self.restart_due is None:
            self.crashes_in_a_row += 1
            delay = restart_delay(self.crashes_in_a_row)
            self.restart_due = now + delay
            log.warning(
                "process_exited",
                process=self.name,
                status=self.proc.returncode,
                restart_in_s=delay,
                last_lines=self.tail(5),
            )
            return False
        if now < self.restart_due:
            return False
        self.restarts += 1
        self.start()
        log.info("process_restarted", process=self.name, restarts=self.restarts, pid=self.proc.pid)
        return True

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def wait_until(
    what: str, check: Callable[[], bool], process: ManagedProcess | None = None, timeout: float = 90.0
) -> None:
    """Poll `check` until true; a dead `process` fails at once. The timeout only guards a hang: a loaded
    2-core machine starting a dozen Python processes at once needs well over 30 s for the last of them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and not process.alive():
            code = process.proc.returncode if process.proc else None
            raise SuiteError(f"{process.name} exited with status {code}; last log lines:\n{process.tail()}")
        try:
            if check():
                return
        except (OSError, urllib.error.URLError, ssl.SSLError):
            pass
        time.sleep(0.1)
    tail = f"; last log lines:\n{process.tail()}" if process is not None else ""
    raise SuiteError(f"{what} not ready after {timeout:.0f}s{tail}")


def http_ok(url: str, ca_file: Path | None = None) -> bool:
    context = ssl.create_default_context(cafile=str(ca_file)) if ca_file else None
    with urllib.request.urlopen(url, timeout=1, context=context) as resp:
        return bool(resp.status == 200)


def kube_local_ready(url: str, token: str) -> bool:
    """Whether the kube-local at `url` answers ready and is the one started with `token`: its /readyz
    carries the token in the instance header. Another server answering ready there (one that took the port
    between port_is_free and our child's bind, or after our child died) is refused with SuiteError rather
    than used: local mode never registers nodes or webhooks on an API server it did not start."""
    with urllib.request.urlopen(f"{url}/readyz", timeout=1) as resp:
        if resp.status != 200:
            return False
        answered = resp.headers.get(INSTANCE_HEADER)
    if answered != token:
        raise SuiteError(
            f"another server answers at {url}: its /readyz does not carry this run's {INSTANCE_HEADER} "
            "token, so it is not the kube-local local mode started; stop that server, or pick another port "
            "with --port (0 picks a free one)"
        )
    return True


@dataclass
class Suite:
    """Starts and stops the processes of local mode; `url` is the kube-local API server."""

    run_dir: Path
    host: str = "127.0.0.1"
    kube_local_port: int = 0
    state_dir: str | None = None
    processes: list[ManagedProcess] = field(default_factory=list)
    url: str = ""
    extender_port: int = 0
    scheduler_grpc: str = ""
    # node -> (metrics URL, MonitorService address)
    monitors: dict[str, tuple[str, str]] = field(default_factory=dict)
    # "kube-local" (our stand-in, starts in seconds) or "real" (upstream etcd, kube-apiserver,
    # kube-controller-manager and kube-scheduler built from Kubernetes' Go modules).
    control_plane: str = "kube-local"
    real: Any = None  # sim.controlplane.launcher.RealControlPlane in real mode
    install_namespace: str = "kube-system"
    admin: KubeAccess = field(default_factory=KubeAccess)
    kubeconfig: Path | None = None  # admin kubeconfig of the real control plane, for kubectl
    webhook_registration: tuple[str, bytes] | None = None  # (URL, CA bundle) once the webhook is up
    device_config: Path | None = None  # the one device-config.yaml every component reads
    scheduler_metrics: str = ""
    # Passed to kube-local (--instance-token, the same on every restart) and required back on its /readyz.
    instance_token: str = field(default_factory=lambda: secrets.token_hex(16))

    def _process(self, name: str, argv: list[str]) -> ManagedProcess:
        process = ManagedProcess(name, argv, self.run_dir / "logs" / f"{name}.log")
        self.processes.append(process)
        return process

    def _write_config(self, name: str, data: dict[str, Any]) -> Path:
        path = self.run_dir / "config" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return path

    def start_api(self) -> KubeAccess:
        """Start the API server of the chosen control plane; the admin access every setup step uses."""
        if self.control_plane not in CONTROL_PLANES:
            raise SuiteError(
                f"unknown control plane {self.control_plane!r}: one of {', '.join(CONTROL_PLANES)}"
            )
        if self.control_plane == "real":
            return self.start_real_control_plane()
        self.start_kube_local()
        self.admin = KubeAccess(server=self.url)
        return self.admin

    def start_real_control_plane(self) -> KubeAccess:
        """etcd, kube-apiserver (Node,RBAC) and kube-controller-manager, with the deploy's RBAC applied."""
        from sim.controlplane.launcher import ControlPlaneError, RealControlPlane

        self.real = RealControlPlane(self.run_dir, host=self.host)
        try:
            self.real.start()
            self.install_namespace = self.real.apply_deploy_rbac()
        except ControlPlaneError as exc:
            raise SuiteError(str(exc)) from exc
        self.url = self.real.url
        self.kubeconfig = self.real.admin_kubeconfig
        self.admin = self.real.admin_access()
        return self.admin

    def service_kube(self, service_account: str) -> dict[str, str]:
        """The `kube` config block of a service: kube-local's URL, or a token of its deploy ServiceAccount."""
        if self.real is None:
            return {"server": self.url}
        path = self.real.service_kubeconfig(service_account, self.install_namespace)
        return {"kubeconfig": str(path)}

    def node_kube_args(self, node: str) -> list[str]:
        """How a kubelet stand-in reaches the API: kube-local's URL, or the node's own client certificate."""
        if self.real is None:
            return ["--server", self.url]
        return ["--kubeconfig", str(self.real.node_kubeconfig(node))]

    def start_kube_local(self) -> str:
        port = self.kube_local_port or free_port(self.host)
        if not port_is_free(self.host, port):
            # Probing a port someone else serves would pass readiness against their server, and the suite
            # would then register nodes and webhooks there: refuse before anything is written.
            raise SuiteError(
                f"port {port} on {self.host} is already in use by another process; stop it, or pick another "
                "port with --port (0 picks a free one)"
            )
        argv = [
            *console_script("kube-local", "sim.kubelocal"),
            "--host",
            self.host,
            "--port",
            str(port),
            "--instance-token",
            self.instance_token,
        ]
        if self.state_dir:
            Path(self.state_dir).mkdir(parents=True, exist_ok=True)
            argv += ["--state-dir", self.state_dir]
        process = self._process("kube-local", argv)
        process.start()
        self.url = f"http://{self.host}:{port}"
        self._wait_kube_local(process)
        return self.url

    def _wait_kube_local(self, process: ManagedProcess) -> None:
        """Until our kube-local (`process`, started with this suite's token) answers ready at self.url; a
        foreign server answering there instead, or our child not coming up, is a SuiteError
        (kube_local_ready), and our child is stopped first."""
        try:
            wait_until("kube-local", lambda: kube_local_ready(self.url, self.instance_token), process)
        except SuiteError:
            process.stop()
            raise

    def write_device_config(self, device_split_count: int) -> Path:
        """HAMi's device-config.yaml with the cluster file's split count, for the webhook, the extender and
        every device plugin alike: a plugin left on its default would register a different number of shares
        per card than the nodes local mode registers (and re-registers after a kube-local restart)."""
        self.device_config = self._write_config(
            "device-config.yaml", {"nvidia": {"deviceSplitCount": device_split_count}}
        )
        return self.device_config

    def start_control_plane(self, device_config: Path | None = None) -> None:
        """Webhook (HTTPS) + scheduler extender + kube-scheduler stand-in, and the webhook registration."""
        device_config = device_config or self.device_config
        tls_dir = self.run_dir / "tls"
        ca, cert, key = issue_serving_certificate([self.host, "localhost", EXTENDER_SERVER_NAME]).write(
            tls_dir
        )
        logs = {"format": "json"}
        real = self.real is not None
        webhook_port = free_port(self.host)
        webhook_cfg = self._write_config(
            "webhook.yaml",
            {
                "http_bind": f"{self.host}:{webhook_port}",
                "cert_file": str(cert),
                "key_file": str(key),
                "device_config_file": str(device_config) if device_config else None,
                "kube": self.service_kube(WEBHOOK_SA),
                "log": logs,
            },
        )
        webhook = self._process(
            "webhook",
            [*console_script("kube-vgpu-webhook", "services.webhook"), "--config", str(webhook_cfg)],
        )
        webhook.start()

        self.extender_port = free_port(self.host)
        self.scheduler_grpc = f"{self.host}:{free_port(self.host)}"
        self.scheduler_metrics = f"http://{self.host}:{free_port(self.host)}/metrics"
        scheduler_settings: dict[str, Any] = {
            "http_bind": f"{self.host}:{self.extender_port}",
            "grpc_bind": self.scheduler_grpc,
            "metrics_bind_address": self.scheduler_metrics.removeprefix("http://").removesuffix("/metrics"),
            "device_config_file": str(device_config) if device_config else None,
            "health_interval_seconds": 2,
            "kube": self.service_kube(SCHEDULER_SA),
            "log": logs,
        }
        if real:
            # As the deploy runs it: HTTPS for kube-scheduler, leadership following its Lease.
            scheduler_settings |= {
                "cert_file": str(cert),
                "key_file": str(key),
                "leader_elect": True,
                "lease_name": "hami-scheduler",
                "lease_namespace": self.install_namespace,
            }
        scheduler_cfg = self._write_config("scheduler.yaml", scheduler_settings)
        scheduler = self._process(
            "scheduler",
            [*console_script("kube-vgpu-scheduler", "services.scheduler"), "--config", str(scheduler_cfg)],
        )
        scheduler.start()

        wait_until(
            "webhook", lambda: http_ok(f"https://{self.host}:{webhook_port}/readyz", ca_file=ca), webhook
        )
        scheme = "https" if real else "http"
        wait_until(
            "scheduler extender",
            lambda: http_ok(
                f"{scheme}://{self.host}:{self.extender_port}/readyz", ca_file=ca if real else None
            ),
            scheduler,
        )
        self.webhook_registration = (f"https://{self.host}:{webhook_port}/webhook", ca.read_bytes())
        self._register_webhook(*self.webhook_registration)
        if real:
            self._start_real_kube_scheduler(ca)
            return

        standin_cfg = yaml.safe_load((REPO_DEPLOY_LOCAL / "kube-scheduler.yaml").read_text())
        for extender in standin_cfg.get("extenders") or []:
            extender["urlPrefix"] = f"http://{self.host}:{self.extender_port}"
        standin_path = self._write_config("kube-scheduler.yaml", standin_cfg)
        standin = self._process(
            "kube-scheduler",
            [
                *console_script("kube-vgpu-local", "sim.local"),
                "kube-scheduler",
                "--server",
                self.url,
                "--config",
                str(standin_path),
            ],
        )
        standin.start()

    def start_nodes(self, cluster_file: Path, node_names: list[str]) -> None:
        """Per GPU node: a kubelet stand-in and our device plugin on simulated GPUs, sharing a plugin dir."""
        for node in node_names:
            node_dir = self.run_dir / "nodes" / node
            node_dir.mkdir(parents=True, exist_ok=True)
            kubelet = self._process(
                f"kubelet-{node}",
                [
                    *console_script("kube-vgpu-local", "sim.local"),
                    "kubelet",
                    "--dir",
                    str(node_dir),
                    "--node-name",
                    node,
                    *self.node_kube_args(node),
                ],
            )
            kubelet.start()
            plugin = self._process(
                f"device-plugin-{node}",
                [
                    *console_script("kube-vgpu-sim-device-plugin", "sim.gpus.device_plugin"),
                    "--node-name",
                    node,
                    "--simulated-inventory",
                    str(cluster_file),
                    "--plugin-dir",
                    str(node_dir),
                    "--host-hook-path",
                    str(node_dir / "hook"),
                    "--vgpulock-dir",
                    str(node_dir / "vgpulock"),
                    *(["--device-config-file", str(self.device_config)] if self.device_config else []),
                    "--grpc-bind",
                    f"{self.host}:0",
                    *self._kube_flags(NODE_AGENT_SA),
                    "--set",
                    "log.format=json",
                ],
            )
            plugin.start()
            metrics_port, grpc_port = free_port(self.host), free_port(self.host)
            monitor = self._process(
                f"monitor-{node}",
                [
                    *console_script("kube-vgpu-monitor", "services.monitor"),
                    "--node-name",
                    node,
                    "--hook-path",
                    str(node_dir / "hook" / "vgpu"),
                    "--metrics-bind-address",
                    f"{self.host}:{metrics_port}",
                    "--grpc-bind",
                    f"{self.host}:{grpc_port}",
                    "--host-gpus",
                    "none",
                    *self._kube_flags(NODE_AGENT_SA),
                    "--set",
                    "log.format=json",
                ],
            )
            monitor.start()
            self.monitors[node] = (f"http://{self.host}:{metrics_port}/metrics", f"{self.host}:{grpc_port}")
        for node in node_names:
            sock = self.run_dir / "nodes" / node / "kubelet.sock"
            wait_until(f"kubelet stand-in of {node}", sock.exists, self._by_name(f"kubelet-{node}"))

    def allocation_record(self, node: str, namespace: str, name: str) -> str | None:
        """What the node's kubelet stand-in recorded Allocate handed the pod's containers (its
        allocations/ file; on a real API server NodeRestriction keeps the stand-in from annotating pods)."""
        path = self.run_dir / "nodes" / node / "allocations" / f"{namespace}_{name}.json"
        try:
            return path.read_text()
        except OSError:
            return None

    def _kube_flags(self, service_account: str) -> list[str]:
        return [
            arg
            for key, value in self.service_kube(service_account).items()
            for arg in ("--set", f"kube.{key}={value}")
        ]

    def _start_real_kube_scheduler(self, ca: Path) -> None:
        """The upstream kube-scheduler with the KubeSchedulerConfiguration the deploy ships, pointed at our
        extender (HTTPS, our CA), leading on the install namespace's Lease as the deploy's sidecar does."""
        config = yaml.safe_load((REPO_DEPLOY_BASE / "config" / "kube-scheduler.yaml").read_text())
        config["leaderElection"]["resourceNamespace"] = self.install_namespace
        for extender in config.get("extenders") or []:
            extender["urlPrefix"] = f"https://{self.host}:{self.extender_port}"
            extender.setdefault("tlsConfig", {})["caFile"] = str(ca)
        self.real.start_scheduler(config, SCHEDULER_SA, self.install_namespace)

    def _by_name(self, name: str) -> ManagedProcess:
        return next(p for p in self.processes if p.name == name)

    def _register_webhook(self, url: str, ca_pem: bytes) -> None:
        """The deploy's MutatingWebhookConfiguration (docs/hami-wire.md#webhook), pointed at our process by
        URL instead of the in-cluster Service, with our CA as its caBundle."""
        from kubernetes import client

        from services.common.kube import new_api_client

        body: Any = yaml.safe_load((REPO_DEPLOY_BASE / "webhook" / "mutatingwebhook.yaml").read_text())
        for webhook in body["webhooks"]:
            webhook["clientConfig"] = {"url": url, "caBundle": base64.b64encode(ca_pem).decode()}
        with new_api_client(self.admin) as api:
            admission = client.AdmissionregistrationV1Api(api)
            try:
                admission.delete_mutating_webhook_configuration(body["metadata"]["name"])
            except client.exceptions.ApiException as exc:
                if exc.status != 404:
                    raise
            admission.create_mutating_webhook_configuration(body)

    def check_alive(self) -> None:
        if self.real is not None:
            from sim.controlplane.launcher import ControlPlaneError

            try:
                self.real.check_alive()
            except ControlPlaneError as exc:
                raise SuiteError(str(exc)) from exc
        for process in self.processes:
            if not process.alive():
                code = process.proc.returncode if process.proc else None
                raise SuiteError(
                    f"{process.name} exited with status {code}; last log lines:\n{process.tail()}"
                )

    def supervise(self) -> list[str]:
        """Restart dead children with backoff; of the upstream control plane a dead kube-apiserver,
        kube-controller-manager or kube-scheduler is relaunched with crash backoff (etcd keeps the data), a
        dead etcd is an error (RealControlPlane.supervise). A restarted kube-local without --state-dir has
        lost the webhook registration, which is written again here; the caller re-registers what else it owns
        (the nodes). Returns the names of the children (and control-plane programs) restarted on this call."""
        restarted: list[str] = []
        if self.real is not None:
            from sim.controlplane.launcher import ControlPlaneError

            try:
                restarted += self.real.supervise()
            except ControlPlaneError as exc:
                raise SuiteError(str(exc)) from exc
        now = time.monotonic()
        restarted += [process.name for process in self.processes if process.supervise(now)]
        if "kube-local" in restarted:
            self._wait_kube_local(self._by_name("kube-local"))
            if self.webhook_registration is not None:
                self._register_webhook(*self.webhook_registration)
        return restarted

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        if self.real is not None:
            self.real.stop()
