"""Harness of the libvgpu tests: make once, run test programs with libvgpu preloaded on the fake driver."""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LIBVGPU = REPO / "libvgpu"
BUILD = LIBVGPU / "build"
MiB = 1 << 20

# Inherited settings that would change what the library does.
_SCRUB = (
    "LD_PRELOAD",
    "CUDA_DEVICE_MEMORY_LIMIT",
    "CUDA_DEVICE_SM_LIMIT",
    "CUDA_DEVICE_MEMORY_SHARED_CACHE",
    "CUDA_DISABLE_CONTROL",
    "CUDA_OVERSUBSCRIBE",
    "CUDA_TASK_PRIORITY",
    "GPU_CORE_UTILIZATION_POLICY",
    "LIBCUDA_LOG_LEVEL",
    "CUDA_VISIBLE_DEVICES",
)


@dataclass(frozen=True)
class Built:
    lib: Path
    scenario: Path
    fake_cuda: Path
    fake_nvml: Path


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: str
    stderr: str

    @property
    def values(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for line in self.stdout.splitlines():
            key, sep, value = line.partition("=")
            if sep:
                out[key] = value
        return out

    def int(self, key: str) -> int:
        return int(self.values[key])

    def float(self, key: str) -> float:
        return float(self.values[key])


def build() -> Built:
    if shutil.which("make") is None or shutil.which(os.environ.get("CC", "cc")) is None:
        pytest.skip("no C toolchain (make, cc)")
    proc = subprocess.run(
        ["make", "-C", str(LIBVGPU), "all", "fake", "programs"], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return Built(
        lib=BUILD / "libvgpu.so",
        scenario=BUILD / "tests" / "scenario",
        fake_cuda=BUILD / "fake" / "libcuda.so.1",
        fake_nvml=BUILD / "fake" / "libnvidia-ml.so.1",
    )


class Runner:
    """Runs the scenario program with libvgpu preloaded; one cache file per test unless told otherwise."""

    def __init__(self, built: Built, cache: Path) -> None:
        self.built = built
        self.cache = cache

    def env(self, extra: Mapping[str, str] | None = None, *, preload: bool = True) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _SCRUB}
        env.update(
            {
                "CUDA_DEVICE_MEMORY_SHARED_CACHE": str(self.cache),
                "KUBE_VGPU_REAL_LIBCUDA": str(self.built.fake_cuda),
                "KUBE_VGPU_REAL_LIBNVML": str(self.built.fake_nvml),
            }
        )
        if preload:
            env["LD_PRELOAD"] = str(self.built.lib)
        env.update(extra or {})
        return env

    def argv(self, *args: str) -> list[str]:
        return [str(self.built.scenario), *args]

    def __call__(
        self, *args: str, env: Mapping[str, str] | None = None, timeout: float = 60, check: bool = True
    ) -> Result:
        proc = subprocess.run(
            self.argv(*args), env=self.env(env), capture_output=True, text=True, timeout=timeout
        )
        result = Result(proc.returncode, proc.stdout, proc.stderr)
        if check:
            assert proc.returncode == 0, f"{args}: rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        return result

    def spawn(self, *args: str, env: Mapping[str, str] | None = None) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.argv(*args),
            env=self.env(env),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )


def wait_ready(proc: subprocess.Popen[str], timeout: float = 20) -> dict[str, str]:
    """Reads key=value lines until the program prints 'ready' (killing it after `timeout` seconds)."""
    assert proc.stdout is not None
    stdout = proc.stdout
    values: dict[str, str] = {}
    state = {"ready": False}

    def reader() -> None:
        for raw in stdout:
            line = raw.strip()
            if line == "ready":
                state["ready"] = True
                return
            key, sep, value = line.partition("=")
            if sep:
                values[key] = value

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        proc.kill()
        t.join(5)
        raise AssertionError("program did not get ready in time")
    assert state["ready"], (
        f"program exited early: rc={proc.wait()} {proc.stderr.read() if proc.stderr else ''}"
    )
    return values


def finish(procs: Sequence[subprocess.Popen[str]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()
        for stream in (p.stdin, p.stdout, p.stderr):
            if stream is not None:
                stream.close()
