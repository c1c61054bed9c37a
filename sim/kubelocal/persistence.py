"""Optional on-disk state: ``<state-dir>/state.db``, a SQLite database, keeps every object, the retained
watch history and the resourceVersion counter, and a write is answered only once it is on disk.

Why SQLite: it is in the standard library, a transaction commits the object, its watch event and the
counter together, and WAL mode with ``synchronous=FULL`` fsyncs the log on every commit, which is
the promise etcd makes. Only the rows a write touches are written (a snapshot file would rewrite the
whole cluster per write); ``objects`` holds one row per resource/namespace/name, ``events`` the last
``history_size`` watch events (so a watch resumes across a restart), ``meta`` the counter.

Group commit: the store stays the serving path and is changed in memory first; its events queue here,
and one writer thread commits whatever queued while the previous commit was being fsynced in one
transaction. :meth:`Persistence.wait_durable` holds every HTTP answer until the resourceVersion it
may have seen is committed (``KubeLocal`` does it in a middleware), so no write is acknowledged, and
no list shows a version, before it is durable.

A watch may still see an event a crash then loses. So that such a resourceVersion is never handed out
again, each commit also stores a ceiling ``CEILING_MARGIN`` above the counter and the store refuses to
go past the durable ceiling; a restart after a crash continues above the old ceiling and answers 410
Gone to a watch resuming inside the lost range, so its client re-lists. A clean stop stores the
counter itself as the ceiling: the next start continues exactly where it stopped.

An old ``state.json`` (format 1, a snapshot rewritten 0.2 s after writes) is migrated once and kept as
``state.json.migrated``. A lock file keeps two kube-locals off the same directory.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import fcntl
import functools
import json
import os
import sqlite3
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import structlog

from sim.kubelocal.resources import BY_KEY, Obj, ResourceType
from sim.kubelocal.store import Store, WatchEvent, object_key

DB_FILE = "state.db"
LEGACY_STATE_FILE = "state.json"
#: The pre-SQLite snapshot (format 1); migrated on first start.
STATE_FILE = LEGACY_STATE_FILE
LOCK_FILE = ".lock"
DB_FORMAT = "kube-local-state"
DB_VERSION = 2
#: How far the counter may run ahead of the last commit (a crash skips this many resourceVersions).
CEILING_MARGIN = 10_000
_RETRY_SECONDS = 0.5

log = structlog.get_logger("kube-local")

_SCHEMA = (
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE objects (resource TEXT NOT NULL, namespace TEXT NOT NULL, name TEXT NOT NULL,"
    " body TEXT NOT NULL, PRIMARY KEY (resource, namespace, name)) WITHOUT ROWID",
    "CREATE TABLE events (rv INTEGER PRIMARY KEY, type TEXT NOT NULL, resource TEXT NOT NULL,"
    " body TEXT NOT NULL, old TEXT)",
)


class StateError(Exception):
    """The state directory cannot be used: a corrupt or unknown state file, or one already in use."""


def _dumps(obj: Obj) -> str:
    return json.dumps(obj, separators=(",", ":"))


def _row_key(rt: ResourceType, obj: Obj) -> tuple[str, str, str]:
    namespace, name = object_key(obj)
    return rt.key, namespace if rt.namespaced else "", name


class StateDB:
    """The SQLite file; used by one thread at a time (load at start, then only the writer thread)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        try:
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=FULL")
        except sqlite3.Error:
            self.conn.close()
            raise

    def create_schema(self) -> None:
        with self.transaction():
            for statement in _SCHEMA:
                self.conn.execute(statement)
            self._set_meta({"format": DB_FORMAT, "version": str(DB_VERSION)})

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def _set_meta(self, values: dict[str, str]) -> None:
        self.conn.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)", values.items())

    def read(self) -> tuple[dict[str, str], list[tuple[ResourceType, Obj]], list[WatchEvent]]:
        """Meta, objects and events (oldest first); ValueError when the contents are not ours."""
        tables = {row[0] for row in self.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "meta" not in tables:
            raise ValueError("not a kube-local state database (no meta table)")
        values = dict(self.conn.execute("SELECT key, value FROM meta").fetchall())
        if values.get("format") != DB_FORMAT:
            raise ValueError("not a kube-local state database")
        if values.get("version") != str(DB_VERSION):
            raise ValueError(f"unsupported state format version {values.get('version')!r}")
        objects = [
            (_resource(key), _object(body))
            for key, body in self.conn.execute("SELECT resource, body FROM objects")
        ]
        events = [
            WatchEvent(int(rv), str(kind), _resource(key), _object(body), _object(old) if old else None)
            for rv, kind, key, body, old in self.conn.execute(
                "SELECT rv, type, resource, body, old FROM events ORDER BY rv"
            )
        ]
        return values, objects, events

    def commit(
        self,
        events: Iterable[WatchEvent],
        *,
        rv: int,
        ceiling: int,
        lost: list[tuple[int, int]],
        history_size: int,
        snapshot: Iterable[tuple[ResourceType, Obj]] = (),
    ) -> None:
        """One transaction: the snapshot's objects, then each event's object change and history row,
        the counter and ceiling; the history is trimmed to the newest ``history_size`` versions."""
        with self.transaction():
            self.conn.executemany(
                "INSERT OR REPLACE INTO objects VALUES (?, ?, ?, ?)",
                ((*_row_key(rt, obj), _dumps(obj)) for rt, obj in snapshot),
            )
            for event in events:
                body = _dumps(event.obj)
                key = _row_key(event.resource, event.obj)
                if event.type == "DELETED":
                    self.conn.execute(
                        "DELETE FROM objects WHERE resource = ? AND namespace = ? AND name = ?", key
                    )
                else:
                    self.conn.execute("INSERT OR REPLACE INTO objects VALUES (?, ?, ?, ?)", (*key, body))
                old = _dumps(event.old) if event.old is not None else None
                self.conn.execute(
                    "INSERT OR REPLACE INTO events VALUES (?, ?, ?, ?, ?)",
                    (event.rv, event.type, event.resource.key, body, old),
                )
            self.conn.execute("DELETE FROM events WHERE rv <= ?", (rv - history_size,))
            self._set_meta({"rv": str(rv), "ceiling": str(ceiling), "lost": json.dumps(lost)})

    def close(self) -> None:
        self.conn.close()


def _resource(key: str) -> ResourceType:
    rt = BY_KEY.get(key)
    if rt is None:
        raise ValueError(f"unknown resource {key!r}")
    return rt


def _object(body: str) -> Obj:
    obj = json.loads(body)
    if not isinstance(obj, dict) or not object_key(obj)[1]:
        raise ValueError("malformed object row")
    return obj


class Persistence:
    def __init__(self, store: Store, directory: str | os.PathLike[str]) -> None:
        self.store = store
        self.directory = Path(directory)
        self.path = self.directory / DB_FILE
        self.legacy_path = self.directory / LEGACY_STATE_FILE
        self._lock_file: IO[bytes] | None = None
        self._db: StateDB | None = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: list[WatchEvent] = []
        self._flusher: asyncio.Task[None] | None = None
        self._durable_rv = 0
        self._waiters: collections.deque[tuple[int, asyncio.Future[None]]] = collections.deque()
        self._lost: list[tuple[int, int]] = []
        #: What the load found worth telling (message, fields); logged by whoever started us, after the
        #: URL line the CLI prints first.
        self.notes: list[tuple[str, dict[str, Any]]] = []

    # --- start -----------------------------------------------------------------------------------

    def load(self) -> None:
        """Locks the directory, loads (or creates, or migrates to) the database and makes the loaded
        state durable before anything is served; StateError when that is impossible."""
        self.directory.mkdir(parents=True, exist_ok=True)
        lock_file = open(self.directory / LOCK_FILE, "ab")  # noqa: SIM115 - held until close()
        try:
            fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            lock_file.close()
            raise StateError(f"state directory {self.directory} is in use by another kube-local") from exc
        self._lock_file = lock_file
        try:
            if self.path.exists():
                self._open_existing()
            elif self.legacy_path.exists():
                self._migrate_legacy()
            else:
                self._create(migrated=False)
        except BaseException:
            self._close_db()
            self._release()
            raise

    def _open_existing(self) -> None:
        try:
            self._db = StateDB(self.path)
            values, objects, events = self._db.read()
            rv = int(values.get("rv", "0"))
            ceiling = int(values.get("ceiling", str(rv)))
            lost = [(int(lo), int(hi)) for lo, hi in json.loads(values.get("lost", "[]"))]
        except (sqlite3.Error, ValueError, TypeError, KeyError) as exc:
            raise StateError(f"corrupt kube-local state file {self.path}: {exc}") from exc
        if ceiling > rv:
            # Killed: versions up to the ceiling may have been seen but never made durable.
            self.notes.append(
                (
                    "state was not closed cleanly",
                    {"path": str(self.path), "lost_after": rv, "lost_upto": ceiling},
                )
            )
            lost.append((rv, ceiling))
            rv = ceiling + 1
        self.store.add_listener(self._on_event)
        self.store.restore(objects, events[-self.store.history_size :], rv, lost)
        self._lost = self.store.lost_ranges
        if self.legacy_path.exists():  # left by a migration interrupted after the database was in place
            os.replace(self.legacy_path, self.legacy_path.with_name(LEGACY_STATE_FILE + ".migrated"))
        self._commit_now()

    def _migrate_legacy(self) -> None:
        try:
            self.store.load_state(self.legacy_path.read_bytes())
        except (ValueError, KeyError, TypeError, OSError) as exc:
            raise StateError(f"corrupt kube-local state file {self.legacy_path}: {exc}") from exc
        self._create(migrated=True)
        os.replace(self.legacy_path, self.legacy_path.with_name(LEGACY_STATE_FILE + ".migrated"))
        self.notes.append(
            ("migrated kube-local state", {"source": str(self.legacy_path), "path": str(self.path)})
        )

    def _create(self, *, migrated: bool) -> None:
        """A new database with the store's current contents, built aside and moved into place whole."""
        tmp = self.path.with_name(f".{DB_FILE}.{os.getpid()}.tmp")
        for leftover in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
            leftover.unlink(missing_ok=True)
        try:
            db = StateDB(tmp)
            db.create_schema()
            rv = int(self.store.resource_version)
            db.commit(
                self.store.history,
                rv=rv,
                ceiling=rv,
                lost=[],
                history_size=self.store.history_size,
                snapshot=self.store.all_objects(),
            )
            db.close()  # the last connection checkpoints the WAL into the file and removes it
            os.replace(tmp, self.path)
            _fsync_dir(self.directory)
        except sqlite3.Error as exc:
            raise StateError(f"cannot write kube-local state file {self.path}: {exc}") from exc
        self._db = StateDB(self.path)
        self.store.add_listener(self._on_event)
        self._commit_now()

    def _commit_now(self) -> None:
        """Commits what the load itself wrote (bootstrap objects) and the ceiling for serving."""
        assert self._db is not None
        rv = int(self.store.resource_version)
        events, self._pending = self._pending, []
        self._db.commit(
            events, rv=rv, ceiling=rv + CEILING_MARGIN, lost=self._lost, history_size=self.store.history_size
        )
        self._durable_rv = rv
        self.store.rv_ceiling = rv + CEILING_MARGIN

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Starts committing writes; call on the loop that owns the store."""
        self._loop = loop
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="kube-local-state")

    # --- writes ----------------------------------------------------------------------------------

    def _on_event(self, event: WatchEvent) -> None:
        self._pending.append(event)
        if self._loop is not None and self._flusher is None:
            self._flusher = self._loop.create_task(self._flush())

    async def _flush(self) -> None:
        """Commits the queued events, a batch per fsync, until none are left."""
        assert self._loop is not None and self._db is not None
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                rv = batch[-1].rv
                commit = functools.partial(
                    self._db.commit,
                    batch,
                    rv=rv,
                    ceiling=rv + CEILING_MARGIN,
                    lost=self._lost,
                    history_size=self.store.history_size,
                )
                while True:
                    try:
                        await self._loop.run_in_executor(self._executor, commit)
                        break
                    except (sqlite3.Error, OSError) as exc:
                        # Nothing in the batch is answered until it is on disk; keep trying.
                        log.error("saving state failed, retrying", path=str(self.path), error=str(exc))
                        await asyncio.sleep(_RETRY_SECONDS)
                self._durable_rv = rv
                self.store.rv_ceiling = max(self.store.rv_ceiling or 0, rv + CEILING_MARGIN)
                while self._waiters and self._waiters[0][0] <= rv:
                    _, waiter = self._waiters.popleft()
                    if not waiter.done():
                        waiter.set_result(None)
        finally:
            self._flusher = None

    async def wait_durable(self, rv: int) -> None:
        """Returns once every write up to ``rv`` is on disk."""
        if rv <= self._durable_rv or self._loop is None or (not self._pending and self._flusher is None):
            return
        waiter = self._loop.create_future()
        self._waiters.append((rv, waiter))
        await waiter

    # --- stop ------------------------------------------------------------------------------------

    async def close(self) -> None:
        """Commits what is queued, records a clean stop and releases the directory."""
        if self._flusher is not None:
            await asyncio.gather(self._flusher, return_exceptions=True)
        if self._db is not None:
            rv = int(self.store.resource_version)
            try:
                self._db.commit(
                    self._pending, rv=rv, ceiling=rv, lost=self._lost, history_size=self.store.history_size
                )
                self._pending = []
            except sqlite3.Error as exc:
                log.error("saving state failed", path=str(self.path), error=str(exc))
        self._close_db()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
        self._release()

    def _close_db(self) -> None:
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = None

    def _release(self) -> None:
        if self._lock_file is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
