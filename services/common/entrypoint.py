"""The shape every console script shares: flags -> validated config -> logging -> `async run(cfg)`.

A bad config exits with status 2 and one message naming each bad key; `--print-config` shows the effective
configuration (after file, env and flags) and exits, so an operator can check what a pod would run with.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel

from services.common.config import ConfigError, add_config_flags, flag_overrides, load_config
from services.common.log import LogConfig, configure_logging, get_logger

ConfigT = TypeVar("ConfigT", bound=BaseModel)

EXIT_CONFIG_ERROR = 2


def parse_service_config(
    model: type[ConfigT], *, prog: str, env_prefix: str, description: str, argv: Sequence[str] | None
) -> tuple[ConfigT, argparse.Namespace]:
    parser = argparse.ArgumentParser(
        prog=prog,
        description=description,
        epilog=f"Precedence: flag > env ({env_prefix}<KEY>, __ for nesting) > --config file > default.",
    )
    parser.add_argument("--print-config", action="store_true", help="print the effective config and exit")
    add_config_flags(parser, model)
    args = parser.parse_args(argv)
    try:
        cfg = load_config(model, path=args.config, env_prefix=env_prefix, overrides=flag_overrides(args))
    except ConfigError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_CONFIG_ERROR) from None
    return cfg, args


def run_service(
    model: type[ConfigT],
    run: Callable[[ConfigT], Coroutine[Any, Any, None]],
    *,
    prog: str,
    env_prefix: str,
    description: str,
    argv: Sequence[str] | None = None,
) -> int:
    cfg, args = parse_service_config(
        model, prog=prog, env_prefix=env_prefix, description=description, argv=argv
    )
    if args.print_config:
        print(yaml.safe_dump(cfg.model_dump(mode="json", by_alias=True), sort_keys=False), end="")
        return 0
    log_config = getattr(cfg, "log", None)
    configure_logging(log_config if isinstance(log_config, LogConfig) else None, service=prog)
    # Logged once at start, as HAMi's PrintPFlags does: the first thing to read when a pod misbehaves.
    get_logger(prog).info("config_loaded", config=cfg.model_dump(mode="json"))
    asyncio.run(run(cfg))
    return 0


async def wait_for_shutdown() -> None:
    """Resolve on SIGTERM or SIGINT (a pod being stopped, or Ctrl-C on a terminal)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
