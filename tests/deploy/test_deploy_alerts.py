"""deploy/prometheus/alerts.yaml under promtool: `check rules` on the rules as written, and `test rules`
on the unit tests of deploy/prometheus/alerts_test.yaml (every alert firing, and quiet where it should be).

promtool comes from Debian's `prometheus` package (`.ci/run` installs it). Under CI (CI=true) a missing
promtool fails these tests; on a developer machine without it they are skipped, saying what to install."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_helpers import DEPLOY

ALERTS = DEPLOY / "prometheus/alerts.yaml"
ALERT_TESTS = DEPLOY / "prometheus/alerts_test.yaml"
#: The plain rules file alerts_test.yaml names (written here from the PrometheusRule).
RULES_FILE = "alerts.rules.yaml"


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1", "yes")


@pytest.fixture(scope="module")
def promtool() -> str:
    binary = shutil.which("promtool")
    if binary is None:
        message = (
            "promtool is not on PATH: install Debian's `prometheus` package "
            "(apt-get install --no-install-recommends prometheus)"
        )
        if in_ci():
            pytest.fail(message + "; CI must run the alert unit tests")
        pytest.skip(message)
    return binary


def rule_groups() -> list[dict[str, Any]]:
    rule = yaml.safe_load(ALERTS.read_text())
    groups: list[dict[str, Any]] = rule["spec"]["groups"]
    return groups


def alert_names() -> list[str]:
    return [r["alert"] for g in rule_groups() for r in g["rules"] if "alert" in r]


def run_promtool(binary: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([binary, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def test_promtool_checks_the_rules(promtool: str, tmp_path: Path) -> None:
    """The rules exactly as the PrometheusRule carries them (runbooks included: their templates parse)."""
    (tmp_path / "alerts.yaml").write_text(yaml.safe_dump({"groups": rule_groups()}, sort_keys=False))
    proc = run_promtool(promtool, "check", "rules", "alerts.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(alert_names())} rules found" in proc.stdout, proc.stdout


def test_promtool_unit_tests_pass(promtool: str, tmp_path: Path) -> None:
    groups = rule_groups()
    for group in groups:
        for rule in group["rules"]:
            # promtool compares annotations whole; the runbooks are prose, left to the check above.
            rule.get("annotations", {}).pop("runbook", None)
    (tmp_path / RULES_FILE).write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    shutil.copy(ALERT_TESTS, tmp_path / ALERT_TESTS.name)
    proc = run_promtool(promtool, "test", "rules", ALERT_TESTS.name, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout and "FAILED" not in proc.stdout, proc.stdout


def test_every_alert_has_firing_and_quiet_cases() -> None:
    """Static, so it runs without promtool too: each alert is expected to fire somewhere and expected to be
    quiet somewhere, and no case names an alert that does not exist."""
    tests = yaml.safe_load(ALERT_TESTS.read_text())
    assert tests["rule_files"] == [RULES_FILE]
    firing: dict[str, int] = {}
    quiet: dict[str, int] = {}
    for case in tests["tests"]:
        assert case.get("name"), "name every test case"
        for check in case.get("alert_rule_test") or []:
            counts = firing if check.get("exp_alerts") else quiet
            counts[check["alertname"]] = counts.get(check["alertname"], 0) + 1
    names = set(alert_names())
    assert set(firing) | set(quiet) <= names, f"unknown alerts: {(set(firing) | set(quiet)) - names}"
    assert not names - set(firing), f"never seen firing: {sorted(names - set(firing))}"
    assert not names - set(quiet), f"never seen quiet: {sorted(names - set(quiet))}"
    for case in tests["tests"]:
        for check in case.get("alert_rule_test") or []:
            for alert in check.get("exp_alerts") or []:
                rule = next(
                    r for g in rule_groups() for r in g["rules"] if r.get("alert") == check["alertname"]
                )
                assert alert["exp_labels"]["severity"] == rule["labels"]["severity"]
                assert set(alert["exp_annotations"]) == set(rule["annotations"]) - {"runbook"}
