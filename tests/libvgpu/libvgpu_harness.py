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
    "FAKE_GPU_STATE",
    "FAKE_NVML_PID_OFFSET",
)


@dataclass(frozen=True)
class Built:
    lib: Path
    scenario: Path
    scenario_share: Path
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
    # KUBE_VGPU_TEST_LIB: run the suite against another build of the library (e.g. an older commit's).
    override = os.environ.get("KUBE_VGPU_TEST_LIB")
    return Built(
        lib=Path(override) if override else BUILD / "libvgpu.so",
        scenario=BUILD / "tests" / "scenario",
        scenario_share=BUILD / "tests" / "scenario_share",
        fake_cuda=BUILD / "fake" / "libcuda.so.1",
        fake_nvml=BUILD / "fake" / "libnvidia-ml.so.1",
    )


class Runner:
    """Runs the scenario program with libvgpu preloaded; one cache file per test unless told otherwise.

    Every process a test starts shares one simulated GPU (the fake driver's FAKE_GPU_STATE file, next to the
    cache file unless given): one device timeline, one memory, one NVML process list, as on a real node. A
    second Runner with another cache file and the same `gpu_state` is a second container on that GPU.
    """

    def __init__(self, built: Built, cache: Path, gpu_state: Path | None = None) -> None:
        self.built = built
        self.cache = cache
        self.gpu_state = gpu_state if gpu_state is not None else cache.parent / "gpu.state"

    def env(self, extra: Mapping[str, str] | None = None, *, preload: bool = True) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _SCRUB}
        env.update(
            {
                "CUDA_DEVICE_MEMORY_SHARED_CACHE": str(self.cache),
                "FAKE_GPU_STATE": str(self.gpu_state),
                "KUBE_VGPU_REAL_LIBCUDA": str(self.built.fake_cuda),
                "KUBE_VGPU_REAL_LIBNVML": str(self.built.fake_nvml),
            }
        )
        if preload:
            env["LD_PRELOAD"] = str(self.built.lib)
        env.update(extra or {})
        return env

    def container(self, name: str) -> Runner:
        """Another container (its own cache file) on this runner's GPU."""
        return Runner(self.built, self.cache.with_name(f"{name}.cache"), self.gpu_state)

    def argv(self, *args: str, program: Path | None = None) -> list[str]:
        return [str(program or self.built.scenario), *args]

    def __call__(
        self,
        *args: str,
        env: Mapping[str, str] | None = None,
        timeout: float = 60,
        check: bool = True,
        program: Path | None = None,
        preload: bool = True,
    ) -> Result:
        proc = subprocess.run(
            self.argv(*args, program=program),
            env=self.env(env, preload=preload),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        result = Result(proc.returncode, proc.stdout, proc.stderr)
        if check:
            assert proc.returncode == 0, f"{args}: rc={proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        return result

    def spawn(
        self, *args: str, env: Mapping[str, str] | None = None, program: Path | None = None
    ) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.argv(*args, program=program),
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


class Agent:
    """A scenario_share `agent` process: one command per line on stdin, key=value lines back until "ok"."""

    def __init__(self, runner: Runner, env: Mapping[str, str] | None = None) -> None:
        self.proc = runner.spawn("agent", env=env, program=runner.built.scenario_share)
        self.pid = int(wait_ready(self.proc)["pid"])

    def __call__(self, command: str, timeout: float = 30) -> dict[str, str]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        values: dict[str, str] = {}
        result: list[bool] = []
        stdout = self.proc.stdout

        def reader() -> None:
            for raw in stdout:
                line = raw.strip()
                if line == "ok":
                    result.append(True)
                    return
                key, sep, value = line.partition("=")
                if sep:
                    values[key] = value

        t = threading.Thread(target=reader, daemon=True)
        t.start()
        t.join(timeout)
        assert result, f"agent {command!r}: no answer (rc={self.proc.poll()})"
        return values

    def close(self) -> None:
        finish([self.proc])
