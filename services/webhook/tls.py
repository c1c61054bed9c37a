"""The webhook's server TLS context, reloaded in place when the certificate or key file changes.

cert-manager and Kubernetes secret volumes replace the files (a symlink swap) while the webhook runs; HAMi
hot-reloads them and so do we: ``CertReloader.check()`` compares the files' identity (inode, size, mtime)
with the last load and, when they changed, re-runs ``load_cert_chain`` on the live ``SSLContext``. New
connections get the new certificate; established ones keep theirs.

A reload never breaks the live context: both files are first copied into a private directory (so that cert
and key are read as one consistent pair even while the files are being rewritten), checked on a scratch
context, and only then loaded into the live one. A bad pair is logged and retried on the next check.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import ssl
import tempfile
from pathlib import Path

from services.common.log import get_logger

__all__ = ["CertReloader", "TLSConfigError", "new_server_context"]

log = get_logger("webhook.tls")


class TLSConfigError(ValueError):
    """The certificate or key cannot be used; the message names the file and the problem."""


def new_server_context() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols(["http/1.1"])
    return context


def _identity(path: Path) -> tuple[int, int, int]:
    stat = path.stat()  # follows symlinks: a secret volume's ..data swap changes the target
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


class CertReloader:
    """Owns the live server context; ``check()`` reloads it when the files changed."""

    def __init__(self, cert_file: str | os.PathLike[str], key_file: str | os.PathLike[str]) -> None:
        self.cert_file = Path(cert_file)
        self.key_file = Path(key_file)
        self.context = new_server_context()
        self._identity: tuple[tuple[int, int, int], tuple[int, int, int]] | None = None
        self._digest = ""
        self.reloads = 0

    def load(self) -> None:
        """The first load; raises ``TLSConfigError`` when the files are missing or do not form a pair."""
        try:
            identity = (_identity(self.cert_file), _identity(self.key_file))
        except OSError as exc:
            raise TLSConfigError(f"cannot read {exc.filename}: {exc.strerror}") from None
        digest = self._load_pair()
        self._identity, self._digest = identity, digest

    def check(self) -> bool:
        """Reload when the files changed since the last good load; True when a new pair was loaded."""
        try:
            identity = (_identity(self.cert_file), _identity(self.key_file))
        except OSError as exc:
            log.warning("tls_files_unreadable", file=exc.filename, error=exc.strerror)
            return False
        if identity == self._identity:
            return False
        try:
            digest = self._load_pair(skip_if_digest=self._digest)
        except TLSConfigError as exc:
            # Probably caught half-way through a rotation; keep serving the old pair and look again later.
            log.warning("tls_reload_failed", error=str(exc))
            return False
        self._identity = identity
        if digest == self._digest:
            return False
        self._digest = digest
        self.reloads += 1
        log.info("tls_reloaded", cert_file=str(self.cert_file), reloads=self.reloads)
        return True

    def _load_pair(self, skip_if_digest: str | None = None) -> str:
        staging = Path(tempfile.mkdtemp(prefix="kube-vgpu-webhook-tls-"))
        try:
            cert, key = staging / "tls.crt", staging / "tls.key"
            try:
                cert_bytes = self.cert_file.read_bytes()
                key_bytes = self.key_file.read_bytes()
            except OSError as exc:
                raise TLSConfigError(f"cannot read {exc.filename}: {exc.strerror}") from None
            digest = hashlib.sha256(cert_bytes + b"\0" + key_bytes).hexdigest()
            if digest == skip_if_digest:
                return digest
            cert.write_bytes(cert_bytes)
            fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out:
                out.write(key_bytes)
            try:
                new_server_context().load_cert_chain(cert, key)
            except (ssl.SSLError, OSError, ValueError) as exc:
                raise TLSConfigError(
                    f"{self.cert_file} / {self.key_file} are not a usable PEM certificate and key: {exc}"
                ) from None
            self.context.load_cert_chain(cert, key)
            return digest
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    async def watch(self, interval: float) -> None:
        """Poll the files every ``interval`` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval)
            try:
                self.check()
            except Exception:  # a reload problem must never stop the webhook
                log.exception("tls_check_failed")
