"""`kube-vgpu-local up` as a user runs it: a real kube-local process, nodes registered over HTTP; the whole
path also on the upstream control plane (`--control-plane real`), with kubectl against what it prints."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from services.common import wire

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# deploy/local/cluster.yaml: the memory of each GPU node's cards.
CARD_MIB = {"gpu-node-a": 15360, "gpu-node-b": 81920, "gpu-node-c": 81559}


def _run(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=REPO, check=False)


def _up_once(state: Path) -> subprocess.CompletedProcess[str]:
    cluster = str(REPO / "deploy/local/cluster.yaml")
    return _run(
        str(BIN / "kube-vgpu-local"),
        "up",
        "--once",
        "--api-only",
        "--port",
        "0",
        "--state-dir",
        str(state),
        "--cluster",
        cluster,
    )


def test_up_once_registers_the_simulated_cluster_and_prints_summary(tmp_path: Path) -> None:
    state = tmp_path / "state"
    result = _up_once(state)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "4 nodes, 7 GPUs, 70 schedulable vGPU slots" in out
    assert "NVIDIA-A100-SXM4-80GB" in out and "gpu-node-c" in out
    table = [line for line in out.splitlines() if line.startswith(("gpu-node", "cpu-node"))]
    assert len(table) == 8  # 7 GPUs plus the CPU-only node
    # The state dir kept what was registered; a second run updates in place instead of failing.
    assert any(state.iterdir())
    again = _up_once(state)
    assert again.returncode == 0, again.stderr
    assert "4 nodes, 7 GPUs" in again.stdout


def test_bad_cluster_file_fails_with_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "cluster.yaml"
    bad.write_text("nodes:\n- name: n1\n  gpus:\n  - {type: T4, memoryMiB: -1}\n")
    result = _run(str(BIN / "kube-vgpu-local"), "up", "--once", "--port", "0", "--cluster", str(bad))
    assert result.returncode == 2
    assert "nodes.0.gpus.0.memoryMiB" in result.stderr


def test_vgpuctl_nodes_reads_the_inventory(kube_local_url: str, tmp_path: Path) -> None:
    from services.common.config import KubeAccess
    from services.common.kube import new_api_client
    from sim.local.cli import register_cluster
    from sim.local.cluster import load_cluster

    with new_api_client(KubeAccess(server=kube_local_url)) as api:
        register_cluster(api, load_cluster(REPO / "deploy/local/cluster.yaml"))
    result = _run(str(BIN / "vgpuctl"), "--server", kube_local_url, "-o", "json", "inventory", "gpu-node-a")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [r["gpu"] for r in rows] == ["0", "1"]
    assert {r["type"] for r in rows} == {"NVIDIA-Tesla T4"}
    assert rows[1]["numa"] == "1"
    table = _run(str(BIN / "vgpuctl"), "--server", kube_local_url, "inventory", "-l", "gpu=on")
    assert table.returncode == 0
    assert table.stdout.splitlines()[0].startswith("NODE")
    assert "cpu-node" not in table.stdout


def test_vgpuctl_exit_codes() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST")}
    no_api = subprocess.run(
        [str(BIN / "vgpuctl"), "inventory"], capture_output=True, text=True, env=env, timeout=30, check=False
    )
    assert no_api.returncode == 2 and "kube.server" in no_api.stderr
    dead = _run(str(BIN / "vgpuctl"), "--server", "http://127.0.0.1:9", "inventory")
    assert dead.returncode == 1 and "cannot reach the API server" in dead.stderr
    assert wire.NODE_NVIDIA_REGISTER == "hami.io/node-nvidia-register"


@pytest.mark.parametrize("control_plane", ["kube-local", "real"])
def test_make_run_demo_takes_pods_through_the_whole_path(tmp_path: Path, control_plane: str) -> None:
    """API server -> webhook -> kube-scheduler -> extender -> device plugin Allocate -> Running, on kube-local
    with the kube-scheduler stand-in and on the upstream kube-apiserver and kube-scheduler."""
    result = _run(
        str(BIN / "kube-vgpu-local"), "up", "--once", "--port", "0", "--run-dir", str(tmp_path / "run"),
        "--cluster", str(REPO / "deploy/local/cluster.yaml"), "--control-plane", control_plane,
        "--demo", str(REPO / "deploy/local/demo-pods.yaml"), "--demo-timeout", "90",
        timeout=240,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rows = {line.split()[0]: line for line in result.stdout.splitlines() if line.split()[:1]}
    assert "Running" in rows["train-small"] and "MEMORY_LIMIT_0=4096m SM_LIMIT=30" in rows["train-small"]
    assert "Running" in rows["two-gpus"] and "MEMORY_LIMIT_1=20000m" in rows["two-gpus"]
    assert (
        "Running" in rows["with-sidecar"]
        and "model: MEMORY_LIMIT_0=6000m SM_LIMIT=20" in rows["with-sidecar"]
    )
    # 25% of whichever card it got: kube-local's stand-in scores by the extender alone and picks a T4,
    # the real kube-scheduler adds its own plugins' scores and may pick another node.
    infer = rows["infer-pct"].split()
    assert infer[1] == "Running", rows["infer-pct"]
    assert f"MEMORY_LIMIT_0={CARD_MIB[infer[2]] * 25 // 100}m" in rows["infer-pct"]
    assert "Pending" in rows["wants-v100"] and "CardTypeMismatch" in rows["wants-v100"]
    assert "Rejected" in rows["too-big"] and "largest registered GPU has 81920 MiB" in rows["too-big"]
    # Each node's monitor serves the limit series of its running containers before any CUDA call.
    series = {
        match.group(1): set(match.group(2).split(", ")) - {"none"}
        for match in re.finditer(r"^\s*(gpu-node-\w+): \d+ series \(([^)]*)\)", result.stdout, re.M)
    }
    expected = {
        "infer-pct": "server",
        "train-small": "trainer",
        "with-sidecar": "model",
        "two-gpus": "worker",
    }
    for pod, container in expected.items():
        node = rows[pod].split()[2]
        assert f"{pod}/{container}" in series.get(node, set()), (pod, node, series)
    assert sum(len(v) for v in series.values()) == len(expected), series
    logs = tmp_path / "run" / "logs"
    api_logs = {"kube-local.log"} if control_plane == "kube-local" else {"kube-apiserver.log", "etcd.log"}
    assert {p.name for p in logs.iterdir()} >= api_logs | {
        "webhook.log",
        "scheduler.log",
        "device-plugin-gpu-node-a.log",
        "monitor-gpu-node-a.log",
    }


def test_real_control_plane_prints_a_kubeconfig_that_kubectl_uses(tmp_path: Path) -> None:
    """`up --control-plane real` keeps running and prints a kubeconfig; kubectl needs no other flag."""
    proc = subprocess.Popen(
        [
            str(BIN / "kube-vgpu-local"), "up", "--control-plane", "real", "--run-dir", str(tmp_path / "run"),
            "--cluster", str(REPO / "deploy/local/cluster.yaml"),
        ],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "Ctrl-C stops it" in line:
                break
        out = "".join(lines)
        assert "local mode is up" in out, out[-3000:]
        match = re.search(r"export KUBECONFIG=(\S+)", out)
        assert match, out
        env = {**os.environ, "KUBECONFIG": match.group(1)}

        def kubectl(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                ["kubectl", *args],
                env=env,
                input=stdin,
                capture_output=True,
                text=True,
                timeout=60,
                check=False,
            )

        nodes = kubectl("get", "nodes")
        assert nodes.returncode == 0, nodes.stderr
        assert "gpu-node-a" in nodes.stdout and "STATUS" in nodes.stdout.splitlines()[0]
        pod = (REPO / "deploy/local/demo-pods.yaml").read_text().split("\n---")[0]
        applied = kubectl("apply", "-f", "-", stdin=pod)
        assert applied.returncode == 0, applied.stderr
        name = re.search(r"pod/(\S+)", applied.stdout)
        assert name, applied.stdout
        for _ in range(120):
            wide = kubectl("get", "pods", "-o", "wide")
            if "Running" in wide.stdout:
                break
            time.sleep(0.5)
        assert wide.returncode == 0, wide.stderr
        header = wide.stdout.splitlines()[0].split()
        assert header[:3] == ["NAME", "READY", "STATUS"] and "NODE" in header
        row = next(line.split() for line in wide.stdout.splitlines()[1:] if line.startswith(name.group(1)))
        assert row[2] == "Running" and row[header.index("NODE")].startswith("gpu-node-"), wide.stdout
        described = kubectl("describe", "pod", name.group(1))
        assert described.returncode == 0 and "hami.io/vgpu-devices-allocated" in described.stdout
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_up_refuses_a_port_another_api_server_serves(kube_local_url: str, tmp_path: Path) -> None:
    """Issue 17's repro: with a foreign kube-local on the port, `up` used to pass readiness against it,
    register nodes there and rewrite its webhook configuration. Now it stops first and writes nothing."""
    from kubernetes import client

    from services.common.config import KubeAccess
    from services.common.kube import new_api_client

    port = kube_local_url.rsplit(":", 1)[1]
    result = _run(
        str(BIN / "kube-vgpu-local"), "up", "--once", "--api-only", "--port", port,
        "--run-dir", str(tmp_path / "run"), "--cluster", str(REPO / "deploy/local/cluster.yaml"),
    )  # fmt: skip
    assert result.returncode == 1
    assert f"port {port} on 127.0.0.1 is already in use by another process" in result.stderr
    with new_api_client(KubeAccess(server=kube_local_url)) as api:
        assert client.CoreV1Api(api).list_node().items == []


def test_a_killed_child_is_restarted_and_serves_again(tmp_path: Path) -> None:
    """Issue 17's repro: kill -9 the extender of a running suite; the supervisor restarts it with backoff
    (it used to stop all processes and exit 1) and the extender answers again."""
    import urllib.request

    run_dir = tmp_path / "run"
    proc = subprocess.Popen(
        [
            str(BIN / "kube-vgpu-local"), "up", "--port", "0", "--run-dir", str(run_dir),
            "--cluster", str(REPO / "deploy/local/cluster.yaml"),
        ],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        out = ""
        while "Ctrl-C stops it" not in out:
            line = proc.stdout.readline()
            assert line, out[-3000:]
            out += line
        extender = re.search(r"scheduler extender on (127\.0\.0\.1:\d+)", out)
        assert extender, out
        config = str(run_dir / "config" / "scheduler.yaml")
        pids = subprocess.run(
            ["pgrep", "-f", config], capture_output=True, text=True, check=False
        ).stdout.split()
        assert len(pids) == 1, pids
        os.kill(int(pids[0]), signal.SIGKILL)
        restarted = proc.stdout.readline()
        while not restarted.startswith("restarted "):  # the line the supervisor prints, not its JSON log
            assert restarted, "the suite exited instead of restarting the extender"
            restarted = proc.stdout.readline()
        assert restarted.startswith("restarted scheduler")
        assert proc.poll() is None
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://{extender.group(1)}/readyz", timeout=2) as resp:
                    assert resp.status == 200
                    break
            except OSError:
                assert time.monotonic() < deadline, "the restarted extender never became ready"
                time.sleep(0.2)
        new_pids = subprocess.run(["pgrep", "-f", config], capture_output=True, text=True, check=False)
        assert new_pids.stdout.split() not in ([], pids)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
