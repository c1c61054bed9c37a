"""Optional on-disk state: ``<state-dir>/state.json`` holds every object and the resourceVersion.

Writes are debounced (a burst of writes costs one save) and the final state is flushed on a
clean stop. Each save is atomic: the snapshot goes to a temporary file in the same directory,
is fsynced, and replaces the old file with ``os.replace``. A lock file keeps two kube-locals
off the same directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from pathlib import Path
from typing import IO

import structlog

from sim.kubelocal.store import Store

STATE_FILE = "state.json"
LOCK_FILE = ".lock"

log = structlog.get_logger("kube-local")


class StateError(Exception):
    """The state directory cannot be used: a corrupt state file, or one already in use."""


def atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


class Persistence:
    def __init__(self, store: Store, directory: str | os.PathLike[str], *, debounce: float = 0.2) -> None:
        self.store = store
        self.directory = Path(directory)
        self.path = self.directory / STATE_FILE
        self.debounce = debounce
        self._lock_file: IO[bytes] | None = None
        self._dirty = False
        self._handle: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._flush_lock = asyncio.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None

    def load(self) -> None:
        """Locks the directory and loads the state file if there is one (StateError otherwise)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        lock_file = open(self.directory / LOCK_FILE, "ab")  # noqa: SIM115 - held until close()
        try:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            lock_file.close()
            raise StateError(f"state directory {self.directory} is in use by another kube-local") from exc
        self._lock_file = lock_file
        if not self.path.exists():
            return
        try:
            self.store.load_state(self.path.read_bytes())
        except (ValueError, KeyError, TypeError, OSError) as exc:
            self._release()
            raise StateError(f"corrupt kube-local state file {self.path}: {exc}") from exc

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Starts saving after writes; call on the loop that owns the store."""
        self._loop = loop
        self.store.add_listener(self._changed)
        self._changed()  # the loaded (or fresh) state is saved once, so the file always exists

    def _changed(self) -> None:
        self._dirty = True
        if self._handle is None and self._loop is not None:
            self._handle = self._loop.call_later(self.debounce, self._kick)

    def _kick(self) -> None:
        self._handle = None
        assert self._loop is not None
        task = self._loop.create_task(self.flush())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def flush(self) -> None:
        async with self._flush_lock:
            if not self._dirty:
                return
            self._dirty = False
            data = self.store.dump_state()
            try:
                await asyncio.get_running_loop().run_in_executor(None, atomic_write, self.path, data)
            except OSError as exc:
                self._dirty = True
                log.error("saving state failed", path=str(self.path), error=str(exc))

    async def close(self) -> None:
        """Writes any pending change and releases the directory."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.flush()
        self._release()

    def _release(self) -> None:
        if self._lock_file is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None
