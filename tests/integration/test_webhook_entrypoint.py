"""`kube-vgpu-webhook` as a process: serves /healthz and admission over HTTP(S), stops cleanly on SIGTERM,
and exits 2 with a message naming the problem for bad TLS, kube or config settings."""

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

import pytest

from tests.support import free_port

BIN = Path(sys.executable).parent
PROG = str(BIN / "kube-vgpu-webhook")


def wait_healthy(url: str, proc: subprocess.Popen[str], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=1) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            time.sleep(0.1)
    raise AssertionError(f"{url} never became healthy")


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "KUBE_VGPU_WEBHOOK_LOG__FORMAT": "json", **extra}


def test_serves_admission_and_stops_on_sigterm(kube_local_url: str) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [
            PROG,
            "--insecure-http",
            "true",
            "--http-bind",
            f"127.0.0.1:{port}",
            "--set",
            f"kube.server={kube_local_url}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env(),
    )
    try:
        wait_healthy(url, proc)
        review = {
            "apiVersion": "admission.k8s.io/v1beta1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "e2e",
                "namespace": "default",
                "operation": "CREATE",
                "object": {
                    "spec": {"containers": [{"name": "c", "resources": {"limits": {"nvidia.com/gpu": "1"}}}]}
                },
            },
        }
        request = urllib.request.Request(
            url + "/webhook", data=json.dumps(review).encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            body = json.loads(response.read())
        assert body["apiVersion"] == "admission.k8s.io/v1beta1"
        assert body["response"]["uid"] == "e2e"
        assert body["response"]["allowed"] is True
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
        assert '"event": "config_loaded"' in err
        assert '"event": "webhook_serving"' in err
        assert '"event": "stopped"' in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param([], "cert_file and key_file are required", id="no-tls"),
        pytest.param(
            ["--cert-file", "/nonexistent.crt", "--key-file", "/nonexistent.key"],
            "cannot read",
            id="missing-cert",
        ),
        pytest.param(
            ["--insecure-http", "true", "--set", "kube.kubeconfig=/nonexistent"],
            "cannot load kubeconfig",
            id="no-kube",
        ),
        pytest.param(["--insecure-http", "true", "--http-bind", "nowhere"], "http_bind", id="bad-bind"),
    ],
)
def test_bad_settings_exit_2_with_a_message(args: list[str], message: str) -> None:
    result = subprocess.run([PROG, *args], capture_output=True, text=True, timeout=30, env=env(), check=False)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr


def test_runs_without_the_api_when_both_checks_are_off() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [
            PROG, "--insecure-http", "true", "--http-bind", f"127.0.0.1:{port}",
            "--quota-check", "false", "--reject-unplaceable", "false",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={k: v for k, v in env().items() if k not in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST")},
    )  # fmt: skip
    try:
        wait_healthy(f"http://127.0.0.1:{port}", proc)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
