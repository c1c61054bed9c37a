"""The real, unmodified upstream control plane on one machine: etcd, kube-apiserver (secure port,
client-certificate and service-account authentication, Node+RBAC authorization, the default admission
plugins plus NodeRestriction), kube-controller-manager and, on request, kube-scheduler, all built by
sim/controlplane/build.py and listening on loopback ports chosen at start.

    cp = RealControlPlane(tmp_path)
    cp.start()                                  # PKI, etcd, apiserver (/readyz), controller-manager
    namespace = cp.apply_deploy_rbac()          # the deploy's ServiceAccounts and RBAC
    cp.start_scheduler(config, "kube-vgpu-scheduler", namespace)
    ...
    cp.stop()

Every service gets a kubeconfig with a TokenRequest token for the ServiceAccount the deploy gives it
(`service_kubeconfig`), so it runs with exactly the rights the deploy grants, as in a cluster.
"""

from __future__ import annotations

import atexit
import copy
import json
import shutil
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml

from services.common.config import KubeAccess
from sim.backoff import CrashLoop
from sim.controlplane import rbac
from sim.controlplane.kubeconfig import write_kubeconfig
from sim.controlplane.pki import CertificateFiles, ClusterAuthority, write_service_account_keys
from sim.controlplane.processes import ControlPlaneError, LaunchedProcess, launch, wait_healthy
from sim.ports import free_port

__all__ = ["BinariesUnavailable", "ControlPlaneError", "LaunchedProcess", "RealControlPlane"]

BUILD_SCRIPT = Path(__file__).resolve().parent / "build.py"
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
# Names clients use for the apiserver: loopback for us, the in-cluster Service names for pods' clients.
APISERVER_NAMES = ("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc")
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
# The apiserver's cap on TokenRequest lifetimes (--service-account-max-token-expiration), and what we
# request: a test or a demo session never outlives it, so no service needs to refresh its token.
TOKEN_LIFETIME_SECONDS = 24 * 3600
# Every default-on controller runs, the node lifecycle controller included: it alone removes the
# `node.kubernetes.io/not-ready:NoSchedule` taint that the TaintNodesByCondition admission plugin puts on
# every new Node, once the Node reports Ready (NodeRestriction forbids a node to change its own taints, so
# a kubelet stand-in could not). Its grace periods are a day, longer than any test or demo, so a stand-in
# node whose heartbeats pause is never marked unreachable, tainted NoExecute or emptied.
CONTROLLERS = "*"
NODE_GRACE_PERIOD = "24h"
HEALTH_TIMEOUT_SECONDS = 90.0
ADMIN_USER = "kube-vgpu-admin"


class BinariesUnavailable(ControlPlaneError):
    """The upstream binaries cannot be built here (no Go toolchain); tests skip on this, nothing else."""


def locate_binaries(bin_dir: Path | None) -> Path:
    """`bin_dir`, or the cached build of the pinned release (build.py builds it on first use)."""
    if bin_dir is None:
        if shutil.which("go") is None:
            raise BinariesUnavailable("the Go toolchain (`go`) is not on PATH, so build.py cannot build")
        # Progress of a first build goes to our stderr; the last stdout line is the bin folder.
        built = subprocess.run(
            [sys.executable, str(BUILD_SCRIPT)], stdout=subprocess.PIPE, text=True, check=False
        )
        if built.returncode != 0 or not built.stdout.strip():
            raise ControlPlaneError(f"{BUILD_SCRIPT} failed with exit status {built.returncode}")
        bin_dir = Path(built.stdout.strip().splitlines()[-1])
    missing = [name for name in BINARIES if not (bin_dir / name).is_file()]
    if missing:
        raise ControlPlaneError(f"{bin_dir} lacks {', '.join(missing)}")
    return bin_dir


class RealControlPlane:
    """etcd + kube-apiserver + kube-controller-manager (+ kube-scheduler instances) under `run_dir`:
    pki/, kubeconfigs/, logs/<name>.log, etcd/ and the scheduler configurations."""

    def __init__(self, run_dir: Path, host: str = "127.0.0.1", bin_dir: Path | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.host = host
        self._bin_dir = bin_dir
        self._port = free_port(host)
        self.url = f"https://{host}:{self._port}"
        self._pki_dir = self.run_dir / "pki"
        self._kubeconfig_dir = self.run_dir / "kubeconfigs"
        self._log_dir = self.run_dir / "logs"
        self.ca_file = self._pki_dir / "ca.crt"
        self.admin_kubeconfig = self._kubeconfig_dir / "admin.kubeconfig"
        self.startup_seconds: float | None = None
        self._ca: ClusterAuthority | None = None
        self._admin: CertificateFiles | None = None
        self._processes: list[LaunchedProcess] = []
        self.restarts: dict[str, int] = {}  # program name -> restarts by restart()
        self._crash_loops: dict[str, CrashLoop] = {}  # program name -> its relaunch backoff in supervise()
        self._health_urls: dict[str, str] = {}  # program name -> the URL that says it is up again
        self._node_kubeconfigs: dict[str, Path] = {}
        self._started = False

    # ----- lifecycle

    def start(self) -> None:
        """PKI, etcd, kube-apiserver (until /readyz), kube-controller-manager (until /healthz and the
        `default` ServiceAccount of namespace `default` exists, so pods can be created right away)."""
        if self._started:
            raise ControlPlaneError("this control plane was already started")
        self._started = True
        began = time.monotonic()
        bin_dir = self._bin_dir = locate_binaries(self._bin_dir)
        atexit.register(self.stop)
        try:
            self._write_pki()
            self._start_etcd(bin_dir)
            self._start_apiserver(bin_dir)
            self._start_controller_manager(bin_dir)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began

    def stop(self) -> None:
        """Stop every program, newest first (schedulers and controller-manager before the apiserver,
        the apiserver before etcd); SIGTERM, then SIGKILL after 10 s. Safe to call again."""
        while self._processes:
            self._processes.pop().stop()
        atexit.unregister(self.stop)

    @property
    def processes(self) -> list[LaunchedProcess]:
        """The programs started so far, in start order (name, pid, log_path)."""
        return list(self._processes)

    def alive(self) -> bool:
        return bool(self._processes) and all(process.alive() for process in self._processes)

    def check_alive(self) -> None:
        """Raise ControlPlaneError naming the first program that exited, with its log tail."""
        if not self._processes:
            raise ControlPlaneError("the control plane is not running")
        for process in self._processes:
            if not process.alive():
                raise process.failure("died")

    def restart(self, name: str) -> LaunchedProcess:
        """Launch program `name` again with its original command line (same ports, certificates and
        etcd data dir), stopping it first if it still runs; returns once it is healthy again at the URL
        its start waited on (kube-apiserver /readyz, etcd /health, the others /healthz). The restarted
        program keeps its place in the stop order."""
        index = next((i for i, process in enumerate(self._processes) if process.name == name), None)
        if index is None:
            raise ControlPlaneError(f"no control-plane program named {name!r}")
        old = self._processes[index]
        old.stop()
        process = launch(name, old.argv, self._log_dir)
        self._processes[index] = process
        self.restarts[name] = self.restarts.get(name, 0) + 1
        if name in self._health_urls:
            wait_healthy(process, self._health_urls[name], self._tls(), timeout=HEALTH_TIMEOUT_SECONDS)
        return process

    def supervise(self) -> list[str]:
        """Restart a dead kube-apiserver, kube-controller-manager or kube-scheduler (replicas included):
        they are stateless, etcd keeps every object and the Leases, so a relaunch on the same command line
        is the whole recovery, as a static pod's restart in a cluster; a relaunch that does not become
        healthy raises. A program that dies again soon after is relaunched with kubelet's crash backoff
        (`sim.backoff.CrashLoop`), not on every call. A dead etcd (the data) raises, as check_alive does.
        Returns the names restarted on this call."""
        if not self._processes:
            raise ControlPlaneError("the control plane is not running")
        restarted = []
        now = time.monotonic()
        for process in list(self._processes):
            if process.alive():
                continue
            if process.name == "etcd":
                raise process.failure("died")
            if not self._crash_loops.setdefault(process.name, CrashLoop()).relaunch_now(now):
                continue
            self.restart(process.name)
            restarted.append(process.name)
        return restarted

    def admin_ssl_context(self) -> ssl.SSLContext:
        """TLS for admin calls to the apiserver: our CA, and the system:masters client certificate."""
        return self._tls()

    # ----- credentials

    def admin_access(self) -> KubeAccess:
        """system:masters credentials, in the form the services' config takes."""
        return KubeAccess(kubeconfig=str(self.admin_kubeconfig))

    def node_kubeconfig(self, node: str) -> Path:
        """A kubeconfig with a client certificate for `system:node:<node>` in `system:nodes`, the identity
        the Node authorizer and NodeRestriction admission plugin confine to that node's objects."""
        if node not in self._node_kubeconfigs:
            client = self._authority().issue_client(f"node-{node}", f"system:node:{node}", ["system:nodes"])
            self._node_kubeconfigs[node] = write_kubeconfig(
                self._kubeconfig_dir / f"node-{node}.kubeconfig",
                server=self.url,
                ca_file=self.ca_file,
                user=f"system:node:{node}",
                client=client,
            )
        return self._node_kubeconfigs[node]

    def service_kubeconfig(self, service_account: str, namespace: str) -> Path:
        """A kubeconfig holding a fresh TokenRequest token (24 h, the apiserver's maximum here) for
        ServiceAccount `namespace/service_account`, which must exist (apply_deploy_rbac creates them)."""
        request = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {"expirationSeconds": TOKEN_LIFETIME_SECONDS},
        }
        path = f"/api/v1/namespaces/{namespace}/serviceaccounts/{service_account}/token"
        answer = self._admin_request("POST", path, request)
        token = str(answer["status"]["token"])
        return write_kubeconfig(
            self._kubeconfig_dir / f"sa-{namespace}-{service_account}.kubeconfig",
            server=self.url,
            ca_file=self.ca_file,
            user=f"system:serviceaccount:{namespace}:{service_account}",
            token=token,
        )

    def apply_deploy_rbac(self, overlay: Path = Path("deploy/kustomize/overlays/dev")) -> str:
        """Apply the overlay's Namespace, ServiceAccounts, (Cluster)Roles and (Cluster)RoleBindings as
        admin; returns the namespace the ServiceAccounts live in."""
        objects = rbac.rbac_objects(rbac.render_overlay(overlay))
        namespace = rbac.install_namespace(objects)
        rbac.apply_objects(objects, self.admin_kubeconfig)
        return namespace

    # ----- kube-scheduler

    def start_scheduler(self, config: dict[str, Any], service_account: str, namespace: str) -> None:
        """The real kube-scheduler with KubeSchedulerConfiguration `config`, authenticating as the given
        ServiceAccount (clientConnection.kubeconfig is set here), serving /healthz on a free loopback
        port with a certificate from our CA; returns once /healthz answers. Call again for a replica."""
        replicas = sum(1 for process in self._processes if process.name.startswith("kube-scheduler"))
        name = "kube-scheduler" if replicas == 0 else f"kube-scheduler-{replicas + 1}"
        document = copy.deepcopy(config)
        client_connection = dict(document.get("clientConnection") or {})
        client_connection["kubeconfig"] = str(self.service_kubeconfig(service_account, namespace))
        document["clientConnection"] = client_connection
        config_path = self.run_dir / f"{name}.yaml"
        config_path.write_text(yaml.safe_dump(document, sort_keys=False), encoding="utf-8")
        serving = self._authority().issue_serving(name, [self.host, "localhost"])
        port = free_port(self.host)
        # Without --authentication/--authorization-kubeconfig only the always-allowed paths (/healthz,
        # /readyz, /livez) answer on this port, which is all we probe; the ServiceAccount keeps exactly the
        # deploy's rights instead of gaining the extension-apiserver-authentication reader role.
        process = self._launch(
            name,
            [
                str(self._binaries() / "kube-scheduler"),
                f"--config={config_path}",
                f"--bind-address={self.host}",
                f"--secure-port={port}",
                f"--tls-cert-file={serving.cert}",
                f"--tls-private-key-file={serving.key}",
            ],
        )
        self._wait_healthy(process, f"https://{self.host}:{port}/healthz")

    # ----- start-up steps

    def _binaries(self) -> Path:
        if self._bin_dir is None:
            raise ControlPlaneError("start() the control plane first")
        return self._bin_dir

    def _authority(self) -> ClusterAuthority:
        if self._ca is None:
            raise ControlPlaneError("start() the control plane first")
        return self._ca

    def _write_pki(self) -> None:
        self._ca = ClusterAuthority(self._pki_dir)
        self._ca.issue_serving("apiserver", [self.host, *APISERVER_NAMES])
        self._admin = self._ca.issue_client("admin", ADMIN_USER, ["system:masters"])
        write_service_account_keys(self._pki_dir)
        write_kubeconfig(
            self.admin_kubeconfig, server=self.url, ca_file=self.ca_file, user=ADMIN_USER, client=self._admin
        )

    def _launch(self, name: str, argv: list[str]) -> LaunchedProcess:
        process = launch(name, argv, self._log_dir)
        self._processes.append(process)
        return process

    def _wait_healthy(self, process: LaunchedProcess, url: str) -> None:
        """Wait until `process` answers on `url`, and remember the URL for its restart."""
        self._health_urls[process.name] = url
        wait_healthy(process, url, self._tls(), timeout=HEALTH_TIMEOUT_SECONDS)

    def _tls(self) -> ssl.SSLContext:
        """Verifies servers against our CA and presents the admin client certificate."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        if self._admin is not None:
            context.load_cert_chain(str(self._admin.cert), str(self._admin.key))
        return context

    def _start_etcd(self, bin_dir: Path) -> None:
        client, peer = free_port(self.host), free_port(self.host)
        self._etcd_url = f"http://{self.host}:{client}"
        peer_url = f"http://{self.host}:{peer}"
        process = self._launch(
            "etcd",
            [
                str(bin_dir / "etcd"),
                "--name=kube-vgpu",
                f"--data-dir={self.run_dir / 'etcd'}",
                f"--listen-client-urls={self._etcd_url}",
                f"--advertise-client-urls={self._etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=kube-vgpu={peer_url}",
                # Tests and demos throw the data away: skipping fsync keeps writes fast on slow disks,
                # at the price of durability across a machine crash that nobody here needs.
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        self._wait_healthy(process, f"{self._etcd_url}/health")

    def _start_apiserver(self, bin_dir: Path) -> None:
        pki = self._pki_dir
        process = self._launch(
            "kube-apiserver",
            [
                str(bin_dir / "kube-apiserver"),
                f"--etcd-servers={self._etcd_url}",
                f"--bind-address={self.host}",
                f"--advertise-address={self.host}",
                f"--secure-port={self._port}",
                f"--cert-dir={self.run_dir / 'apiserver'}",
                f"--tls-cert-file={pki / 'apiserver.crt'}",
                f"--tls-private-key-file={pki / 'apiserver.key'}",
                f"--client-ca-file={self.ca_file}",
                "--authorization-mode=Node,RBAC",
                # On top of the default plugins (none disabled): what kubeadm adds to pair with the Node
                # authorizer, so a node's credentials can modify only its own Node and pods.
                "--enable-admission-plugins=NodeRestriction",
                # As kubeadm: the deploy's device plugin runs privileged.
                "--allow-privileged=true",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                f"--service-account-max-token-expiration={TOKEN_LIFETIME_SECONDS}s",
                "--service-cluster-ip-range=10.96.0.0/16",
                # The default (lease) reconciler refuses a loopback advertise address; no pod reaches the
                # apiserver through the in-cluster `kubernetes` Service here, so none is the honest choice.
                "--endpoint-reconciler-type=none",
            ],
        )
        self._wait_healthy(process, f"{self.url}/readyz")

    def _start_controller_manager(self, bin_dir: Path) -> None:
        authority = self._authority()
        client = authority.issue_client("controller-manager", "system:kube-controller-manager")
        serving = authority.issue_serving("controller-manager-serving", [self.host, "localhost"])
        kubeconfig = write_kubeconfig(
            self._kubeconfig_dir / "controller-manager.kubeconfig",
            server=self.url,
            ca_file=self.ca_file,
            user="system:kube-controller-manager",
            client=client,
        )
        port = free_port(self.host)
        process = self._launch(
            "kube-controller-manager",
            [
                str(bin_dir / "kube-controller-manager"),
                f"--kubeconfig={kubeconfig}",
                f"--bind-address={self.host}",
                f"--secure-port={port}",
                f"--tls-cert-file={serving.cert}",
                f"--tls-private-key-file={serving.key}",
                f"--service-account-private-key-file={self._pki_dir / 'sa.key'}",
                f"--root-ca-file={self.ca_file}",
                # Each controller acts as its own kube-system ServiceAccount with its bootstrap role.
                "--use-service-account-credentials",
                f"--controllers={CONTROLLERS}",
                f"--node-monitor-grace-period={NODE_GRACE_PERIOD}",
                f"--node-startup-grace-period={NODE_GRACE_PERIOD}",
                # Lets the CSR signer issue kubelet-style certificates from our CA, as in a cluster.
                f"--cluster-signing-cert-file={self.ca_file}",
                f"--cluster-signing-key-file={self._pki_dir / 'ca.key'}",
            ],
        )
        self._wait_healthy(process, f"https://{self.host}:{port}/healthz")
        # The serviceaccount controller creates `default` in every namespace; the ServiceAccount admission
        # plugin rejects pods until it exists, so start() returns only once the controllers really run.
        deadline = time.monotonic() + HEALTH_TIMEOUT_SECONDS
        while not self._exists("/api/v1/namespaces/default/serviceaccounts/default"):
            if not process.alive() or time.monotonic() > deadline:
                raise process.failure("did not create the default ServiceAccount")
            time.sleep(0.2)

    # ----- admin calls to the apiserver

    def _admin_request(self, method: str, path: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            f"{self.url}{path}", data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, context=self._tls(), timeout=10) as response:
                answer: dict[str, Any] = json.loads(response.read())
                return answer
        except urllib.error.HTTPError as error:
            raise ControlPlaneError(f"{method} {path}: HTTP {error.code}: {error.read(500)!r}") from error

    def _exists(self, path: str) -> bool:
        try:
            self._admin_request("GET", path)
        except ControlPlaneError:
            return False
        return True
