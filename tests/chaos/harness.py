"""The chaos suite's harness: a real local-mode suite started in-process as `kube-vgpu-local up` starts it,
on kube-local or on the real upstream control plane, supervised the way its `up` loop supervises it, plus an
observer that checks the cheap invariants continuously while faults are injected."""

from __future__ import annotations

import json
import os
import signal
import ssl
import threading
import time
import traceback
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from services.common.kube import new_api_client
from sim.controlplane.processes import LaunchedProcess
from sim.local.cli import register_cluster
from sim.local.cluster import LocalCluster, load_cluster
from sim.local.suite import ManagedProcess, Suite
from tests.chaos.invariants import locks_held_too_long, overcommitted_cards

NAMESPACE = "chaos"
NODE_LOCK_TTL_SECONDS = 30.0  # the scheduler's default node_lock_ttl_seconds
# The leader clears a lock past its TTL on its next registration pass (every 2 s in local mode): a lock
# older than this has outlived the sweep too.
NODE_LOCK_MAX_AGE_SECONDS = NODE_LOCK_TTL_SECONDS + 5.0
SUPERVISE_PERIOD_SECONDS = 0.5  # as `kube-vgpu-local up` calls Suite.supervise
API_ERRORS = (OSError, urllib.error.URLError, ssl.SSLError, json.JSONDecodeError)

Obj = dict[str, Any]


class ApiError(RuntimeError):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:300]}")
        self.status = status


def resource_version(obj: Obj) -> int:
    return int((obj.get("metadata") or {}).get("resourceVersion") or 0)


@dataclass
class Api:
    """Plain JSON over HTTP(S) to the API server: every answer's status is visible, so a 201 is an
    acknowledged write and nothing is retried behind the test's back. `context` carries the real server's
    CA and admin client certificate."""

    url: str
    timeout: float = 10.0
    context: ssl.SSLContext | None = None

    def call(self, method: str, path: str, body: Obj | None = None) -> tuple[int, Obj]:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout, context=self.context) as resp:
                return resp.status, json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as exc:
            raise ApiError(exc.code, exc.read().decode(errors="replace")) from None

    def list(self, path: str) -> tuple[list[Obj], int]:
        _, answer = self.call("GET", path)
        return list(answer.get("items") or []), resource_version(answer)

    def ready(self) -> bool:
        """/readyz answers 200 (its body is plain text, not JSON)."""
        with urllib.request.urlopen(f"{self.url}/readyz", timeout=2, context=self.context) as resp:
            return bool(resp.status == 200)


@dataclass
class Observer:
    """Polls nodes and pods while the scenario runs: over-committed cards, locks held past their TTL and a
    list resourceVersion lower than one already seen are recorded against the fault in progress."""

    api: Api
    period: float = 0.5
    phase: str = "setup"
    violations: dict[str, list[str]] = field(default_factory=dict)
    highest_rv: int = 0
    polls: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, violation: str) -> None:
        with self._lock:
            found = self.violations.setdefault(self.phase, [])
            if violation not in found:
                found.append(violation)

    def seen(self) -> int:
        """The highest resourceVersion seen so far: the floor for an answer to a request sent now."""
        with self._lock:
            return self.highest_rv

    def saw_resource_version(self, rv: int, what: str, floor: int | None = None) -> None:
        """Record `rv`; a violation when it is lower than `floor`, the highest resourceVersion seen before
        its request was sent (default: now). Only such a floor is a promise: a request still in flight
        while another answer arrives may be served at the earlier revision, on a real server as anywhere."""
        with self._lock:
            highest = self.highest_rv if floor is None else floor
            self.highest_rv = max(self.highest_rv, rv)
        if rv < highest:
            self.record(f"resourceVersion went backwards: {what} at {rv} after {highest} was seen")

    def check_once(self) -> None:
        floor = self.seen()
        nodes, nodes_rv = self.api.list("/api/v1/nodes")
        self.saw_resource_version(nodes_rv, "node list", floor)
        floor = self.seen()
        pods, pods_rv = self.api.list(f"/api/v1/namespaces/{NAMESPACE}/pods")
        self.saw_resource_version(pods_rv, "pod list", floor)
        for violation in overcommitted_cards(nodes, pods):
            self.record(violation)
        for violation in locks_held_too_long(nodes, datetime.now(UTC), NODE_LOCK_MAX_AGE_SECONDS):
            self.record(violation)
        self.polls += 1

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            try:
                self.check_once()
            except (*API_ERRORS, ApiError):
                continue  # the API server is down: nothing to read, the fault's own checks cover it

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="chaos-observer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)


@dataclass
class Supervisor:
    """`kube-vgpu-local up`'s loop in a thread: Suite.supervise every 0.5 s (which relaunches a dead
    kube-apiserver of the real control plane too), and the cluster registered again when kube-local was
    restarted."""

    suite: Suite
    cluster: LocalCluster
    restarts: list[tuple[float, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _run(self) -> None:
        while not self._stop.wait(SUPERVISE_PERIOD_SECONDS):
            try:
                restarted = self.suite.supervise()
                if "kube-local" in restarted:
                    with new_api_client(self.suite.admin) as api:
                        register_cluster(api, self.cluster)
            except Exception:  # a supervisor that dies would turn every later fault into a hang
                self.errors.append(traceback.format_exc(limit=5))
                continue
            self.restarts.extend((time.monotonic(), name) for name in restarted)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="chaos-supervisor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=120)


@dataclass
class ChaosSuite:
    suite: Suite
    cluster: LocalCluster
    api: Api
    supervisor: Supervisor
    observer: Observer

    @property
    def api_server(self) -> str:
        """The API server's process name: kube-local, or the real control plane's kube-apiserver."""
        return "kube-apiserver" if self.suite.real is not None else "kube-local"

    def process(self, name: str) -> ManagedProcess:
        return next(p for p in self.suite.processes if p.name == name)

    def _control_plane_program(self, name: str) -> LaunchedProcess | None:
        if self.suite.real is None:
            return None
        programs: list[LaunchedProcess] = self.suite.real.processes
        return next((p for p in programs if p.name == name), None)

    def pid(self, name: str) -> int | None:
        """The pid of a live process or control-plane program `name`, None while it is down."""
        program = self._control_plane_program(name)
        if program is not None:
            return program.pid if program.alive() else None
        process = self.process(name)
        return process.proc.pid if process.proc is not None and process.alive() else None

    def tail(self, name: str, lines: int = 10) -> str:
        program = self._control_plane_program(name)
        return program.log_tail(lines) if program is not None else self.process(name).tail(lines)

    def restart_counts(self) -> dict[str, tuple[int, str]]:
        """Every process and control-plane program -> (restarts so far, its last log lines)."""
        counts = {p.name: (p.restarts, p.tail(10)) for p in self.suite.processes}
        if self.suite.real is not None:
            restarts: dict[str, int] = self.suite.real.restarts
            for program in self.suite.real.processes:
                counts[program.name] = (restarts.get(program.name, 0), program.log_tail(10))
        return counts

    def kill(self, name: str) -> int:
        """SIGKILL the child (no cleanup of any kind, as a crash or an OOM kill); its old pid."""
        pid = self.pid(name)
        assert pid is not None, f"{name} is not running"
        os.kill(pid, signal.SIGKILL)
        return pid

    def restarted_since(self, name: str, old_pid: int) -> bool:
        pid = self.pid(name)
        return pid is not None and pid != old_pid

    def extender_ready(self) -> bool:
        """The extender's /readyz: HTTP on kube-local, HTTPS with the suite's CA on the real control plane
        (as kube-scheduler calls it there)."""
        suite = self.suite
        if suite.real is None:
            return http_ok(f"http://{suite.host}:{suite.extender_port}/readyz")
        assert suite.webhook_registration is not None  # same CA as the extender's certificate
        context = ssl.create_default_context(cadata=suite.webhook_registration[1].decode())
        with urllib.request.urlopen(
            f"https://{suite.host}:{suite.extender_port}/readyz", timeout=2, context=context
        ) as r:
            return bool(r.status == 200)

    def log_count(self, name: str, needle: str) -> int:
        try:
            return self.process(name).log_path.read_text(errors="replace").count(needle)
        except OSError:
            return 0

    def scheduler_metrics(self) -> dict[str, list[tuple[dict[str, str], float]]]:
        return scrape(self.suite.scheduler_metrics)

    def monitor_series(self, node: str) -> set[tuple[str, str]]:
        """(pod, container) of the `hami_vgpu_memory_limit_bytes` series node's monitor serves."""
        samples = scrape(self.suite.monitors[node][0]).get("hami_vgpu_memory_limit_bytes", [])
        return {(labels.get("pod", ""), labels.get("container", "")) for labels, _ in samples}

    def webhook_ready(self) -> bool:
        assert self.suite.webhook_registration is not None
        url, ca_pem = self.suite.webhook_registration
        context = ssl.create_default_context(cadata=ca_pem.decode())
        with urllib.request.urlopen(
            url.removesuffix("/webhook") + "/readyz", timeout=2, context=context
        ) as r:
            return bool(r.status == 200)


def scrape(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    families: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            families.setdefault(sample.name, []).append((dict(sample.labels), float(sample.value)))
    return families


def http_ok(url: str) -> bool:
    with urllib.request.urlopen(url, timeout=2) as resp:
        return bool(resp.status == 200)


def wait_for(check: Callable[[], bool], timeout: float, period: float = 0.2) -> float | None:
    """Seconds until `check()` held (errors count as not yet), or None after `timeout`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            if check():
                return time.monotonic() - started
        except (*API_ERRORS, ApiError):
            pass
        time.sleep(period)
    return None


@contextmanager
def chaos_suite(run_dir: Path, cluster_file: Path, control_plane: str = "kube-local") -> Iterator[ChaosSuite]:
    """kube-local (with a state dir) or the real control plane (etcd, kube-apiserver, controller-manager,
    kube-scheduler), webhook, extender, the kube-scheduler stand-in on kube-local, and per GPU node a kubelet
    stand-in, device plugin and monitor, each its own process; supervised and observed until exit."""
    cluster = load_cluster(cluster_file)
    suite = Suite(
        run_dir=run_dir / "run",
        kube_local_port=0,
        state_dir=str(run_dir / "state") if control_plane == "kube-local" else None,
        control_plane=control_plane,
    )
    supervisor = Supervisor(suite, cluster)
    observer: Observer | None = None
    try:
        admin = suite.start_api()
        with new_api_client(admin) as api:
            register_cluster(api, cluster)
        suite.write_device_config(cluster.device_split_count)
        suite.start_control_plane()
        suite.start_nodes(cluster_file.resolve(), [n.name for n in cluster.nodes if n.gpus])
        rest = Api(suite.url, context=suite.real.admin_ssl_context() if suite.real is not None else None)
        rest.call("POST", "/api/v1/namespaces", {"metadata": {"name": NAMESPACE}})
        if suite.real is not None:
            # The ServiceAccount admission plugin refuses pods until the controller-manager has created
            # the namespace's `default` ServiceAccount (within a second or so).
            account = f"/api/v1/namespaces/{NAMESPACE}/serviceaccounts/default"
            if wait_for(lambda: rest.call("GET", account)[0] == 200, 60) is None:
                raise RuntimeError(f"no default ServiceAccount in namespace {NAMESPACE} after 60s")
        observer = Observer(rest)
        supervisor.start()
        observer.start()
        yield ChaosSuite(suite, cluster, rest, supervisor, observer)
    finally:
        if observer is not None:
            observer.stop()
        supervisor.stop()
        suite.stop()
