"""One upstream control-plane program as a child process: started with its output in a log file, probed
until healthy, and stopped with SIGTERM then SIGKILL. Failures carry the last lines of that log, since
the programs explain themselves there and nowhere else."""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

# SIGTERM lets etcd and the apiserver close their stores cleanly; past this they are killed.
STOP_GRACE_SECONDS = 10.0
LOG_TAIL_LINES = 30


class ControlPlaneError(RuntimeError):
    """A control-plane program failed to start, died, or never became healthy."""


@dataclass
class LaunchedProcess:
    """A running (or finished) control-plane program and the file its stdout and stderr go to."""

    name: str
    log_path: Path
    popen: subprocess.Popen[bytes] = field(repr=False)
    argv: list[str] = field(default_factory=list)  # the command line, so a restart repeats it exactly

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def failure(self, what: str) -> ControlPlaneError:
        status = "running" if self.alive() else f"exited with {self.popen.returncode}"
        header = f"{self.name} {what} (pid {self.pid}, {status})"
        return ControlPlaneError(f"{header}; last lines of {self.log_path}:\n{self.log_tail()}")

    def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        if self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()


def launch(name: str, argv: Sequence[str], log_dir: Path) -> LaunchedProcess:
    """Start `argv` with stdout and stderr appended to `<log_dir>/<name>.log`. Its own session, so a
    Ctrl-C meant for the test runner reaches it only through our orderly stop."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with log_path.open("ab") as log:
        try:
            popen = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=dict(os.environ),
            )
        except OSError as error:
            raise ControlPlaneError(f"{name}: cannot start {argv[0]}: {error}") from error
    return LaunchedProcess(name=name, log_path=log_path, popen=popen, argv=list(argv))


def wait_healthy(
    process: LaunchedProcess, url: str, context: ssl.SSLContext, *, timeout: float = 90.0
) -> None:
    """Poll `url` until it answers 200 ("ok"); raise with the process's log if it dies or the timeout
    passes. The timeout only guards against a hang: a healthy start is seconds."""
    deadline = time.monotonic() + timeout
    last_error = "no answer yet"
    while True:
        if not process.alive():
            raise process.failure(f"exited before {url} answered ({last_error})")
        try:
            with urllib.request.urlopen(url, context=context, timeout=5) as response:
                if response.status == 200:
                    return
                last_error = f"HTTP {response.status}"
        except urllib.error.HTTPError as error:
            last_error = f"HTTP {error.code}: {error.read(300)!r}"
        except (urllib.error.URLError, OSError) as error:
            last_error = str(error)
        if time.monotonic() > deadline:
            raise process.failure(f"not healthy at {url} after {timeout:.0f}s ({last_error})")
        time.sleep(0.2)
