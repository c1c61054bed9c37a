"""Local mode's supervisor: a dead child is restarted with a doubling backoff, like kubelet's restarts of a
crashed container, and a port someone else holds is refused before anything is started."""

from __future__ import annotations

import os
import signal
import socket
import sys
from pathlib import Path

import pytest

from sim.backoff import RESTART_MAX_SECONDS, RESTART_RESET_AFTER_SECONDS, CrashLoop, restart_delay
from sim.local.suite import ManagedProcess, Suite, SuiteError, port_is_free


@pytest.mark.parametrize(
    ("crashes", "delay"), [(1, 1.0), (2, 2.0), (3, 4.0), (5, 16.0), (6, RESTART_MAX_SECONDS), (40, 30.0)]
)
def test_restart_delay_doubles_up_to_the_cap(crashes: int, delay: float) -> None:
    assert restart_delay(crashes) == delay


def test_a_crash_loop_relaunches_the_first_crash_at_once_then_backs_off() -> None:
    loop = CrashLoop()
    assert loop.relaunch_now(100.0)  # killed once after a good run: back at once
    assert not loop.relaunch_now(101.0)  # died again right away: 1 s
    assert loop.relaunch_now(102.0)
    assert not loop.relaunch_now(102.5)  # third in a row: 2 s
    assert not loop.relaunch_now(104.0)
    assert loop.relaunch_now(104.5)
    assert loop.crashes_in_a_row == 3
    # Up for a minute: the next crash starts a new row, relaunched at once.
    assert loop.relaunch_now(104.5 + RESTART_RESET_AFTER_SECONDS)
    assert loop.crashes_in_a_row == 1


def _sleeper(tmp_path: Path) -> ManagedProcess:
    return ManagedProcess(
        "sleeper", [sys.executable, "-c", "import time; time.sleep(600)"], tmp_path / "s.log"
    )


def _kill(process: ManagedProcess) -> None:
    assert process.proc is not None
    os.kill(process.proc.pid, signal.SIGKILL)
    process.proc.wait()


def test_a_killed_child_is_restarted_after_its_backoff(tmp_path: Path) -> None:
    process = _sleeper(tmp_path)
    process.start(env={"MARKER": "kept"})
    try:
        assert process.proc is not None
        first_pid = process.proc.pid
        t = process.started_at
        assert not process.supervise(t + 1)  # alive: nothing to do
        _kill(process)
        assert not process.supervise(t + 2)  # death seen: restart scheduled 1 s later
        assert process.restart_due == t + 3 and process.crashes_in_a_row == 1
        assert not process.supervise(t + 2.5)
        assert process.supervise(t + 3)
        assert process.alive() and process.proc.pid != first_pid and process.restarts == 1
        assert process.env == {"MARKER": "kept"}
        _kill(process)
        process.supervise(t + 4)
        assert process.restart_due == t + 6 and process.crashes_in_a_row == 2  # the delay doubled
    finally:
        process.stop()


def test_a_child_that_stays_up_resets_its_backoff(tmp_path: Path) -> None:
    process = _sleeper(tmp_path)
    process.start()
    try:
        process.crashes_in_a_row = 4
        process.supervise(process.started_at + RESTART_RESET_AFTER_SECONDS)
        assert process.crashes_in_a_row == 0
    finally:
        process.stop()


def test_a_taken_port_is_refused_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        assert not port_is_free("127.0.0.1", port)
        suite = Suite(run_dir=tmp_path, kube_local_port=port)
        with pytest.raises(SuiteError, match=f"port {port} on 127.0.0.1 is already in use"):
            suite.start_kube_local()
        assert suite.processes == []
    assert port_is_free("127.0.0.1", port)
