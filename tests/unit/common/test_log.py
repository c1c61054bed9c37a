"""Logs: JSON lines with bound context in a cluster, readable text on a terminal, stdlib bridged."""

from __future__ import annotations

import io
import json
import logging

import pytest

from services.common.log import LogConfig, bind_context, configure_logging, get_logger, resolve_format


@pytest.fixture(autouse=True)
def _restore_root_logger() -> object:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield None
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_lines_carry_service_and_bound_context() -> None:
    stream = io.StringIO()
    configure_logging(LogConfig(format="json"), service="kube-vgpu-test", stream=stream)
    bind_context(node="gpu-node-a", pod="default/p1")
    get_logger("unit").info("allocated", device_uuid="GPU-1")
    record = json.loads(stream.getvalue().strip().splitlines()[-1])
    assert record["event"] == "allocated"
    assert record["service"] == "kube-vgpu-test"
    assert record["node"] == "gpu-node-a"
    assert record["pod"] == "default/p1"
    assert record["device_uuid"] == "GPU-1"
    assert record["level"] == "info"
    assert "timestamp" in record


def test_stdlib_loggers_are_rendered_the_same_way() -> None:
    stream = io.StringIO()
    configure_logging(LogConfig(format="json"), service="svc", stream=stream)
    logging.getLogger("some.library").warning("disk %s", "full")
    record = json.loads(stream.getvalue().strip().splitlines()[-1])
    assert record["event"] == "disk full"
    assert record["level"] == "warning"
    assert record["service"] == "svc"


def test_level_filters_lower_records() -> None:
    stream = io.StringIO()
    configure_logging(LogConfig(format="json", level="warning"), service="svc", stream=stream)
    get_logger("unit").info("hidden")
    get_logger("unit").error("shown")
    events = [json.loads(line)["event"] for line in stream.getvalue().splitlines()]
    assert events == ["shown"]


def test_console_format_is_plain_text() -> None:
    stream = io.StringIO()
    configure_logging(LogConfig(format="console"), service="svc", stream=stream)
    get_logger("unit").info("hello", node="n1")
    out = stream.getvalue()
    assert "hello" in out and "node" in out and "n1" in out
    with pytest.raises(json.JSONDecodeError):
        json.loads(out.splitlines()[-1])


def test_auto_is_json_in_a_pod_and_off_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert resolve_format("auto", io.StringIO()) == "json"
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    assert resolve_format("auto", io.StringIO()) == "json"
    assert resolve_format("console", io.StringIO()) == "console"
