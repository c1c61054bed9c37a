"""`kube-vgpu-scheduler` as a process against kube-local: ready once synced, serves the extender and metrics,
stops cleanly on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from tests.support import free_port

BIN = Path(sys.executable).parent


def http(url: str, body: bytes | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=body, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def test_scheduler_process_serves_and_stops_on_sigterm(kube_local_url: str) -> None:
    http_port, metrics_port, grpc_port = free_port(), free_port(), free_port()
    env = {
        **os.environ,
        "KUBE_VGPU_SCHEDULER_LOG__FORMAT": "json",
        "KUBE_VGPU_SCHEDULER_KUBE__SERVER": kube_local_url,
    }
    proc = subprocess.Popen(
        [
            str(BIN / "kube-vgpu-scheduler"),
            "--http-bind",
            f"127.0.0.1:{http_port}",
            "--metrics-bind-address",
            f"127.0.0.1:{metrics_port}",
            "--grpc-bind",
            f"127.0.0.1:{grpc_port}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.communicate()[1]
            try:
                if http(f"http://127.0.0.1:{http_port}/readyz")[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "scheduler never became ready"
            time.sleep(0.1)
        status, body = http(f"http://127.0.0.1:{http_port}/filter", b'{"NodeNames":["a"]}')
        assert status == 200 and json.loads(body)["Error"] == "extender args missing pod"
        status, body = http(f"http://127.0.0.1:{metrics_port}/metrics")
        assert status == 200 and b"hami_build_info" in body
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert '"event": "scheduler_serving"' in err
        assert '"event": "stopped"' in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
