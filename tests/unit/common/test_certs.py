"""The issued certificate verifies against its CA in a real TLS handshake, for the hosts it names only."""

from __future__ import annotations

import socket
import ssl
import stat
import threading
from pathlib import Path

import pytest

from services.common.certs import issue_serving_certificate


def _handshake(ca: Path, cert: Path, key: Path, server_hostname: str) -> str:
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                tls.sendall(b"ok")
        except (ssl.SSLError, OSError):
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client_ctx = ssl.create_default_context(cafile=str(ca))
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            client_ctx.wrap_socket(raw, server_hostname=server_hostname) as tls,
        ):
            return tls.recv(2).decode()
    finally:
        thread.join(timeout=5)
        listener.close()


def test_handshake_verifies_for_named_hosts(tmp_path: Path) -> None:
    issued = issue_serving_certificate(["127.0.0.1", "localhost", "webhook.kube-vgpu.svc"])
    ca, cert, key = issued.write(tmp_path)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert _handshake(ca, cert, key, "127.0.0.1") == "ok"
    assert _handshake(ca, cert, key, "webhook.kube-vgpu.svc") == "ok"


def test_handshake_fails_for_other_hosts_and_other_cas(tmp_path: Path) -> None:
    ca, cert, key = issue_serving_certificate(["127.0.0.1"]).write(tmp_path / "a")
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(ca, cert, key, "evil.example")
    other_ca, _, _ = issue_serving_certificate(["127.0.0.1"]).write(tmp_path / "b")
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(other_ca, cert, key, "127.0.0.1")


def test_hosts_are_required() -> None:
    with pytest.raises(ValueError, match="at least one host"):
        issue_serving_certificate([])
