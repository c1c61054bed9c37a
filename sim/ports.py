"""Free loopback ports, for local mode (sim/local), the upstream control plane (sim/controlplane) and the
tests (tests/support re-exports it). Standard library only, so any part of sim can import it."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on `host` a moment ago (the caller binds it soon after)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])
