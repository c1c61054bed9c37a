"""--state-dir: the cluster survives a restart and a SIGKILL (no acknowledged write is lost, resourceVersions
never go backwards, watches resume or get 410); bad state is reported clearly; the CLI closes cleanly on
SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, watch
from kubernetes.client import ApiException

from sim.kubelocal.persistence import CEILING_MARGIN, DB_FILE, STATE_FILE, StateError
from sim.kubelocal.resources import PODS
from sim.kubelocal.server import KubeLocalThread, run_kube_local
from sim.kubelocal.store import Store

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}


def start_cli(state_dir: Path) -> tuple[subprocess.Popen[str], str]:
    """A kube-local process on a free port; returns it and its URL."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "sim.kubelocal.cli", "--port", "0", "--state-dir", str(state_dir)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=REPO,
        env=ENV,
    )
    assert proc.stdout is not None
    url = proc.stdout.readline().strip()
    assert url.startswith("http://127.0.0.1:"), url
    return proc, url


def sigkill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)


def request(url: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(
        url + path, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def create_pod(url: str, name: str) -> int:
    """Creates pod ``name`` in default; returns its resourceVersion once answered 201."""
    status, pod = request(
        url,
        "POST",
        "/api/v1/namespaces/default/pods",
        {"metadata": {"name": name}, "spec": {"containers": [{"name": "main", "image": "busybox:1.36"}]}},
    )
    assert status == 201, pod
    return int(pod["metadata"]["resourceVersion"])


def pod_names(url: str) -> tuple[set[str], int]:
    status, pods = request(url, "GET", "/api/v1/namespaces/default/pods")
    assert status == 200
    return {p["metadata"]["name"] for p in pods["items"]}, int(pods["metadata"]["resourceVersion"])


def watch_lines(url: str, since: int, timeout: int = 2) -> list[dict[str, Any]]:
    """The events of a pod watch in default resuming after ``since``, until ``timeout`` seconds."""
    path = f"/api/v1/namespaces/default/pods?watch=true&resourceVersion={since}&timeoutSeconds={timeout}"
    with urllib.request.urlopen(url + path, timeout=timeout + 10) as resp:
        return [json.loads(line) for line in resp if line.strip()]


def db_rows(state_dir: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(state_dir / DB_FILE)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


def test_restart_keeps_objects_and_resource_version_grows(tmp_path, client_for, new_pod):
    with run_kube_local(state_dir=tmp_path) as url:
        core = client.CoreV1Api(client_for(url))
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="team")))
        created = core.create_namespaced_pod("team", new_pod("survivor", labels={"a": "b"}))
        core.create_node(client.V1Node(metadata=client.V1ObjectMeta(name="n1")))
        client.CoordinationV1Api(client_for(url)).create_namespaced_lease(
            "team",
            client.V1Lease(
                metadata=client.V1ObjectMeta(name="l"), spec=client.V1LeaseSpec(holder_identity="x")
            ),
        )
        rv_before = int(core.list_node().metadata.resource_version)
    assert (tmp_path / DB_FILE).exists()

    # history_size=2: the two newest events are kept, so the resume from 1 below is from before them.
    with run_kube_local(state_dir=tmp_path, history_size=2) as url:
        core = client.CoreV1Api(client_for(url))
        pod = core.read_namespaced_pod("survivor", "team")
        assert pod.metadata.uid == created.metadata.uid
        assert pod.metadata.labels == {"a": "b"}
        assert [n.metadata.name for n in core.list_node().items] == ["n1"]
        lease = client.CoordinationV1Api(client_for(url)).read_namespaced_lease("l", "team")
        assert lease.spec.holder_identity == "x"
        assert int(core.list_node().metadata.resource_version) == rv_before
        updated = core.patch_namespaced_pod("survivor", "team", {"metadata": {"labels": {"a": "c"}}})
        assert int(updated.metadata.resource_version) == rv_before + 1
        # Resuming from before the retained event history is 410 Gone, across a restart too.
        with pytest.raises(ApiException) as err:
            list(
                watch.Watch().stream(
                    core.list_namespaced_pod, "team", resource_version="1", timeout_seconds=1
                )
            )
        assert err.value.status == 410


def test_writes_are_saved_without_a_clean_stop(tmp_path, client_for, new_pod):
    server = KubeLocalThread(state_dir=tmp_path)
    server.start()
    try:
        core = client.CoreV1Api(client_for(server.url))
        created = core.create_namespaced_pod("default", new_pod("early"))
        # On disk the moment the create is answered, not some time later.
        rows = db_rows(tmp_path, "SELECT body FROM objects WHERE resource = 'pods' AND name = 'early'")
        assert [json.loads(body)["metadata"]["uid"] for (body,) in rows] == [created.metadata.uid]
        (durable_rv,) = db_rows(tmp_path, "SELECT value FROM meta WHERE key = 'rv'")[0]
        assert int(durable_rv) >= int(created.metadata.resource_version)
    finally:
        server.close()


def test_corrupt_state_file_is_reported(tmp_path):
    (tmp_path / STATE_FILE).write_text("{ not json")
    server = KubeLocalThread(state_dir=tmp_path)
    with pytest.raises(StateError) as err:
        server.start()
    assert str(tmp_path / STATE_FILE) in str(err.value)
    assert "corrupt" in str(err.value)


def test_state_dir_is_exclusive(tmp_path, server_factory):
    server_factory(state_dir=tmp_path)
    with pytest.raises(StateError, match="in use"):
        KubeLocalThread(state_dir=tmp_path).start()


def test_cli_serves_and_closes_cleanly_on_sigterm(tmp_path):
    env = ENV
    proc = subprocess.Popen(
        [sys.executable, "-m", "sim.kubelocal.cli", "--port", "0", "--state-dir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env=env,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(url + "/readyz", timeout=5) as resp:
            assert resp.read() == b"ok"
        body = json.dumps({"metadata": {"name": "from-cli"}}).encode()
        req = urllib.request.Request(
            url + "/api/v1/namespaces", data=body, method="POST", headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert resp.status == 201
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    names = {
        json.loads(body)["metadata"]["name"] for (body,) in db_rows(tmp_path, "SELECT body FROM objects")
    }
    assert "from-cli" in names
    # A clean stop records that nothing beyond the counter was handed out: the next start continues there.
    meta = dict(db_rows(tmp_path, "SELECT key, value FROM meta"))
    assert meta["ceiling"] == meta["rv"]


def test_cli_reports_corrupt_state(tmp_path):
    (tmp_path / STATE_FILE).write_text('{"kind": "KubeLocalState", "version": 1}')
    result = subprocess.run(
        [sys.executable, "-m", "sim.kubelocal.cli", "--port", "0", "--state-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=30,
    )
    assert result.returncode == 2
    assert str(tmp_path / STATE_FILE) in result.stderr


def test_sigkill_right_after_a_burst_loses_no_acknowledged_create(tmp_path):
    proc, url = start_cli(tmp_path)
    try:
        with ThreadPoolExecutor(8) as pool:  # concurrent, so several creates share one commit
            acked = list(pool.map(lambda i: create_pod(url, f"burst-{i}"), range(20)))
        sigkill(proc)  # right after the last 201
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    proc, url = start_cli(tmp_path)
    try:
        names, rv = pod_names(url)
        assert names == {f"burst-{i}" for i in range(20)}
        assert rv >= max(acked)
        assert create_pod(url, "after") > max(acked)
    finally:
        proc.terminate()
        proc.wait(10)


def test_deletes_survive_a_sigkill(tmp_path):
    proc, url = start_cli(tmp_path)
    try:
        for i in range(5):
            create_pod(url, f"p{i}")
        for i in range(3):
            status, _ = request(
                url, "DELETE", f"/api/v1/namespaces/default/pods/p{i}", {"gracePeriodSeconds": 0}
            )
            assert status == 200
        sigkill(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    proc, url = start_cli(tmp_path)
    try:
        assert pod_names(url)[0] == {"p3", "p4"}
    finally:
        proc.terminate()
        proc.wait(10)


def test_watch_resumes_after_a_sigkill(tmp_path):
    proc, url = start_cli(tmp_path)
    seen: list[tuple[str, int]] = []
    try:
        _, start_rv = pod_names(url)
        all_seen = threading.Event()

        def follow() -> None:  # a watch opened before the kill, recording the versions it saw
            path = f"/api/v1/namespaces/default/pods?watch=true&resourceVersion={start_rv}&timeoutSeconds=30"
            with urllib.request.urlopen(url + path, timeout=40) as resp:
                for line in resp:
                    event = json.loads(line)
                    seen.append(
                        (
                            event["object"]["metadata"]["name"],
                            int(event["object"]["metadata"]["resourceVersion"]),
                        )
                    )
                    if len(seen) == 10:
                        all_seen.set()
                        return

        watcher = threading.Thread(target=follow, daemon=True)
        watcher.start()
        for i in range(10):
            create_pod(url, f"w{i}")
        assert all_seen.wait(20)
        sigkill(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    last_rv = seen[-1][1]
    proc, url = start_cli(tmp_path)
    try:
        _, restarted_rv = pod_names(url)
        # Versions up to the old ceiling may have been seen before the kill: the counter continues above.
        assert restarted_rv > last_rv + CEILING_MARGIN
        # The watcher resumes from the last version it saw: nothing replayed, then the new pod.
        resumed: list[dict[str, Any]] = []
        reader = threading.Thread(target=lambda: resumed.extend(watch_lines(url, last_rv, timeout=3)))
        reader.start()
        create_pod(url, "after-restart")
        reader.join(20)
        assert [(e["type"], e["object"]["metadata"]["name"]) for e in resumed] == [("ADDED", "after-restart")]
        # One that fell behind before the kill gets what it missed from the persisted history.
        replayed = watch_lines(url, seen[4][1], timeout=1)
        assert [e["object"]["metadata"]["name"] for e in replayed] == [f"w{i}" for i in range(5, 10)] + [
            "after-restart"
        ]
        # A version inside the range the kill may have lost is 410 Gone: that client re-lists.
        (gone,) = watch_lines(url, last_rv + 1, timeout=1)
        assert gone["type"] == "ERROR"
        assert gone["object"]["code"] == 410
    finally:
        proc.terminate()
        proc.wait(10)


def test_old_format_state_file_is_migrated(tmp_path):
    old = Store()
    pod = {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {"name": "legacy", "namespace": "default"},
        "spec": {},
    }
    old.create(PODS, pod)
    (tmp_path / STATE_FILE).write_bytes(old.dump_state())
    with run_kube_local(state_dir=tmp_path) as url:
        names, rv = pod_names(url)
        assert names == {"legacy"}
        assert rv >= int(old.resource_version)
    assert not (tmp_path / STATE_FILE).exists()
    assert (tmp_path / (STATE_FILE + ".migrated")).exists()
    with run_kube_local(state_dir=tmp_path) as url:
        assert pod_names(url)[0] == {"legacy"}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"SQLite format 3\x00" + b"\x17" * 200, "corrupt"),
        (None, "not a kube-local state database"),
    ],
    ids=["garbage", "foreign-database"],
)
def test_unusable_state_database_is_reported(tmp_path, content, message):
    path = tmp_path / DB_FILE
    if content is None:
        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE something (x)")
        conn.commit()
        conn.close()
    else:
        path.write_bytes(content)
    with pytest.raises(StateError) as err:
        KubeLocalThread(state_dir=tmp_path).start()
    assert str(path) in str(err.value)
    assert message in str(err.value)
