"""--state-dir: the cluster survives a restart; bad state is reported clearly; the CLI flushes on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from kubernetes import client, watch
from kubernetes.client import ApiException

from sim.kubelocal.persistence import STATE_FILE, StateError
from sim.kubelocal.server import KubeLocalThread, run_kube_local

REPO = Path(__file__).resolve().parents[2]


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
    assert (tmp_path / STATE_FILE).exists()

    with run_kube_local(state_dir=tmp_path) as url:
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
        # The event history does not survive: resuming from before the restart is 410 Gone.
        with pytest.raises(ApiException) as err:
            list(
                watch.Watch().stream(
                    core.list_namespaced_pod, "team", resource_version="1", timeout_seconds=1
                )
            )
        assert err.value.status == 410


def test_writes_are_saved_without_a_clean_stop(tmp_path, client_for, new_pod):
    server = KubeLocalThread(state_dir=tmp_path, persist_debounce=0.05)
    server.start()
    try:
        core = client.CoreV1Api(client_for(server.url))
        core.create_namespaced_pod("default", new_pod("early"))
        state_file = tmp_path / STATE_FILE
        for _ in range(100):
            state = json.loads(state_file.read_bytes()) if state_file.exists() else {}
            if any(o["metadata"]["name"] == "early" for o in state.get("objects", {}).get("pods", [])):
                break
            time.sleep(0.02)
        else:
            pytest.fail("the debounced save never happened")
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


def test_cli_serves_and_flushes_on_sigterm(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
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
    state = json.loads((tmp_path / STATE_FILE).read_bytes())
    assert "from-cli" in {ns["metadata"]["name"] for ns in state["objects"]["namespaces"]}


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
