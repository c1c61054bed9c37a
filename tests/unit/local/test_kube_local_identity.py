"""Local mode never uses an API server it did not start (issue 17): the suite's readiness wait requires its
per-run token back on kube-local's /readyz, so a foreign server that took the port between the free-port
check and kube-local's own bind is refused instead of passing readiness."""

from __future__ import annotations

from pathlib import Path

import pytest

from sim.kubelocal.server import run_kube_local
from sim.local import suite as suite_module
from sim.local.suite import Suite, SuiteError, kube_local_ready, wait_until

FOREIGN = "another server answers at {url}"


def _wait(url: str, token: str) -> None:
    wait_until("kube-local", lambda: kube_local_ready(url, token), timeout=10)


def test_our_kube_local_passes_readiness() -> None:
    with run_kube_local(instance_token="ours") as url:
        _wait(url, "ours")


@pytest.mark.parametrize("their_token", [None, "theirs"], ids=["no-token", "another-token"])
def test_a_foreign_server_is_refused(their_token: str | None) -> None:
    # A kube-local without a token stands for any server answering 200 on /readyz.
    with run_kube_local(instance_token=their_token) as url, pytest.raises(SuiteError) as refused:
        _wait(url, "ours")
    assert FOREIGN.format(url=url) in str(refused.value)


def test_start_kube_local_refuses_a_server_that_took_the_port_and_stops_its_child(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race forced: the port is free at the check (patched), and by the time kube-local binds another
    server holds it and answers ready. `up` reports this SuiteError (exit 1); our child is stopped."""
    with run_kube_local() as url:
        port = int(url.rsplit(":", 1)[1])
        monkeypatch.setattr(suite_module, "port_is_free", lambda host, port: True)
        suite = Suite(run_dir=tmp_path, kube_local_port=port)
        try:
            with pytest.raises(SuiteError, match=FOREIGN.format(url=url)):
                suite.start_kube_local()
            assert [p.name for p in suite.processes] == ["kube-local"]
            assert not suite.processes[0].alive()
        finally:
            suite.stop()


def test_kube_local_gets_the_same_token_on_every_start(tmp_path: Path) -> None:
    """The token is in kube-local's argv, which the supervisor's restarts reuse: a restarted kube-local
    answers with the same token and passes the readiness wait after the restart."""
    suite = Suite(run_dir=tmp_path, kube_local_port=0)
    try:
        url = suite.start_kube_local()
        process = suite.processes[0]
        assert process.argv[process.argv.index("--instance-token") + 1] == suite.instance_token
        assert process.proc is not None
        process.proc.kill()
        process.proc.wait()
        assert suite.supervise() == []  # death seen, restart scheduled
        assert process.restart_due is not None
        process.restart_due = 0.0  # due now
        assert suite.supervise() == ["kube-local"]  # waits for readiness with the token
        assert kube_local_ready(url, suite.instance_token)
    finally:
        suite.stop()


def test_each_suite_has_its_own_token(tmp_path: Path) -> None:
    assert Suite(run_dir=tmp_path).instance_token != Suite(run_dir=tmp_path).instance_token
