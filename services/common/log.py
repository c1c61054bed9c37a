"""structlog set-up shared by every process: JSON in a cluster, readable on a terminal.

Stdlib loggers (grpc, aiohttp, kubernetes, urllib3) are routed through the same renderer so one process
writes one format. Context such as pod, node and device is bound with `bind_context` (contextvars), so it
follows a request across awaits without being passed by hand.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, Literal, TextIO

import structlog
from pydantic import Field

from services.common.config import ConfigModel

LogFormat = Literal["auto", "json", "console"]


class LogConfig(ConfigModel):
    level: Literal["debug", "info", "warning", "error"] = Field("info", description="minimum log level")
    format: LogFormat = Field("auto", description="auto: JSON in a pod or when stderr is not a terminal")


def resolve_format(fmt: LogFormat, stream: TextIO) -> Literal["json", "console"]:
    if fmt != "auto":
        return fmt
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        return "json"
    return "console" if stream.isatty() else "json"


def configure_logging(config: LogConfig | None = None, *, service: str, stream: TextIO | None = None) -> None:
    config = config or LogConfig()
    stream = stream or sys.stderr
    level = getattr(logging, config.level.upper())
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    renderer: Any
    if resolve_format(config.format, stream) == "json":
        shared.append(structlog.processors.dict_tracebacks)
        renderer = structlog.processors.JSONRenderer()
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=stream.isatty())

    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Client libraries are chatty at INFO (every HTTP connection); keep them to warnings unless debugging.
    for noisy in ("urllib3", "kubernetes", "aiohttp.access", "grpc"):
        logging.getLogger(noisy).setLevel(level if level <= logging.DEBUG else logging.WARNING)
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(service=service)


def bind_context(**values: Any) -> None:
    """Bind pod/node/device (or any key) to every log line of the current task or thread."""
    structlog.contextvars.bind_contextvars(**values)


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
