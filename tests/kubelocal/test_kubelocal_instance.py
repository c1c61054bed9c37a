"""kube-local's instance token (issue 17): started with `--instance-token`, it echoes the token on every
health answer so local mode can tell its own kube-local from another server on the port; without one it
sends no such header."""

from __future__ import annotations

import subprocess
import sys
import urllib.request

import pytest

from sim.kubelocal.routes import INSTANCE_HEADER
from sim.kubelocal.server import run_kube_local

HEALTH_PATHS = ["/healthz", "/readyz", "/livez"]


def _header(url: str) -> str | None:
    with urllib.request.urlopen(url, timeout=5) as resp:
        assert resp.status == 200
        header: str | None = resp.headers.get(INSTANCE_HEADER)
        return header


@pytest.mark.parametrize("path", HEALTH_PATHS)
def test_a_token_is_echoed_on_health_answers(path: str) -> None:
    with run_kube_local(instance_token="run-4f2a") as url:
        assert _header(url + path) == "run-4f2a"
        assert _header(url + "/version") is None  # only the health answers carry it


@pytest.mark.parametrize("path", HEALTH_PATHS)
def test_without_a_token_there_is_no_header(path: str) -> None:
    with run_kube_local() as url:
        assert _header(url + path) is None


def test_the_cli_flag_reaches_the_server() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "sim.kubelocal.cli", "--port", "0", "--instance-token", "cli-9b1c"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), url
        assert _header(url + "/readyz") == "cli-9b1c"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
