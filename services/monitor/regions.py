"""The container caches under `<hook>/containers/<podUID>_<container>/`: found, mapped, read, cleaned up.

* Discovery: every scan lists `<hook>/containers`. Only real directories named `<podUID>_<container>` (split
  on the first `_`; a UUID, then a DNS-1123 label) are considered; anything else is never opened nor removed.
* Loading: in such a dir, at most two files may match `*libvgpu.so*` or `*.cache` (HAMi's rule); the first
  `*.cache` by name is opened read-only (no symlink, regular file, non-blocking), mapped `PROT_READ` (at most
  the largest layout's size), and `services.common.shared_region` checks size, magic and version before any
  field is read. A file too short for any layout is never mapped. The monitor never maps a cache writable.
* Unchanged regions are not decoded again: the bytes a decode reads are compared with the last ones
  (`codec.fingerprint`), which keeps scrapes and the feedback loop cheap at 1,000 containers.
* Reading: before each read the file is stat'ed; one truncated or replaced underneath us is unmapped and
  loaded again at the next scan instead of being read (reading past the end of a mapped file is SIGBUS).
* Bounds: at most `max_open` caches are mapped; maps of dirs that vanished are closed at the next scan.
* Errors: a truncated, corrupt or foreign file is skipped with one log line and one count per reason for
  each version of the file (path, inode, size); the monitor goes on with the others.
* Writes (feedback loop): a field is written through a short-lived read-write mapping of the one page that
  holds it, as one aligned 32-bit store, and that mapping is closed at once.
* Stale dirs: `remove_dir` unmaps and deletes one `<podUID>_<container>` dir; the caller decides when.
"""

from __future__ import annotations

import errno
import mmap
import os
import re
import shutil
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from services.common.log import get_logger
from services.common.shared_region import RegionLayout
from services.monitor import codec
from services.monitor.codec import RegionReading

log = get_logger("monitor.regions")

# Kubernetes pod UIDs are UUIDs (32 hex digits, with or without the dashes). A dir whose first part is not
# one is not ours: it is never read and never removed.
_UID_RE = re.compile(
    r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|[0-9a-fA-F]{32}"
)
# Container names are DNS-1123 labels.
_CONTAINER_RE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")

REASON_OPEN_FAILED = "open_failed"
REASON_NOT_REGULAR = "not_regular_file"
REASON_TOO_MANY_FILES = "too_many_files"
REASON_TOO_MANY_REGIONS = "too_many_regions"
OWN_REASONS = (REASON_OPEN_FAILED, REASON_NOT_REGULAR, REASON_TOO_MANY_FILES, REASON_TOO_MANY_REGIONS)
# A cache whose magic is still zero this long after its last change is reported, not waited for.
UNINITIALISED_GRACE_SECONDS = 60.0


def parse_dir_name(name: str) -> tuple[str, str] | None:
    """(pod UID, container) of a `<podUID>_<container>` dir name, or None for any other name."""
    uid, sep, container = name.partition("_")
    if not sep or _UID_RE.fullmatch(uid) is None or _CONTAINER_RE.fullmatch(container) is None:
        return None
    return uid, container


class ErrorSink(Protocol):
    def __call__(self, reason: str) -> None: ...


@dataclass(frozen=True, slots=True)
class DirInfo:
    name: str
    pod_uid: str
    container: str
    path: Path


@dataclass(slots=True)
class _Mapped:
    path: Path
    path_str: str
    inode: int
    device: int
    length: int
    layout: RegionLayout
    view: mmap.mmap
    # The bytes the last reading was decoded from, and that reading (see codec.fingerprint).
    key: bytes = b""
    reading: RegionReading | None = None


@dataclass(slots=True)
class _Entry:
    info: DirInfo
    mapped: _Mapped | None = None
    # Identity of the file version last rejected (path, inode, size, reason), so it is reported once.
    rejected: tuple[str, int, int, str] | None = None


@dataclass(slots=True)
class ScanReport:
    dirs: int = 0
    mapped: int = 0
    opened: list[str] = field(default_factory=list)
    closed: list[str] = field(default_factory=list)


class RegionStore:
    def __init__(
        self,
        containers_dir: Path,
        *,
        max_open: int = 2048,
        on_error: ErrorSink | None = None,
    ) -> None:
        self.containers_dir = containers_dir
        self.max_open = max_open
        self._on_error = on_error
        self._lock = threading.RLock()
        self._entries: dict[str, _Entry] = {}
        self._missing_logged = False
        self._too_many_logged = False

    # --- discovery ---------------------------------------------------------------------------------------

    def _list_dirs(self) -> set[str] | None:
        """Names of the `<podUID>_<container>` dirs (real dirs, not symlinks); None if the root is missing."""
        try:
            it = os.scandir(self.containers_dir)
        except OSError as exc:
            if not self._missing_logged:
                if isinstance(exc, FileNotFoundError):
                    log.info("containers_dir_missing", path=str(self.containers_dir))
                else:
                    log.warning("containers_dir_unreadable", path=str(self.containers_dir), error=str(exc))
                self._missing_logged = True
            return None
        self._missing_logged = False
        found: set[str] = set()
        with it:
            for entry in it:
                # d_type from readdir: no extra syscall per entry. A symlink or a file with a matching name
                # is neither read nor removed.
                try:
                    if not entry.is_dir(follow_symlinks=False):
                        continue
                except OSError:
                    continue
                if entry.name in self._entries or parse_dir_name(entry.name) is not None:
                    found.add(entry.name)
        return found

    def scan(self) -> ScanReport:
        """List the dirs; unmap vanished ones; map caches that appeared (or changed) since the last scan."""
        report = ScanReport()
        found = self._list_dirs() or set()
        with self._lock:
            for name in list(self._entries):
                if name not in found:
                    gone = self._entries.pop(name)
                    if gone.mapped is not None:
                        self._unmap(gone)
                        report.closed.append(name)
            for name in found:
                entry = self._entries.get(name)
                if entry is None:
                    uid, container = parse_dir_name(name) or ("", "")
                    info = DirInfo(name, uid, container, self.containers_dir / name)
                    entry = self._entries[name] = _Entry(info)
                # A mapped cache that was truncated or replaced is dropped by the next read (which checks
                # before touching it) and mapped again here.
                if entry.mapped is None and self._load(entry):
                    report.opened.append(name)
            report.dirs = len(self._entries)
            report.mapped = self.open_count()
        return report

    def dirs(self) -> list[DirInfo]:
        with self._lock:
            return [e.info for e in self._entries.values()]

    def open_count(self) -> int:
        with self._lock:
            return sum(1 for e in self._entries.values() if e.mapped is not None)

    # --- loading -----------------------------------------------------------------------------------------

    def _reject(self, entry: _Entry, path: Path, inode: int, size: int, reason: str, detail: str) -> None:
        identity = (str(path), inode, size, reason)
        if entry.rejected == identity:
            return
        entry.rejected = identity
        log.warning(
            "region_skipped",
            dir=entry.info.name,
            file=path.name,
            reason=reason,
            error=detail,
        )
        if self._on_error is not None:
            self._on_error(reason)

    def _cache_file(self, entry: _Entry) -> Path | None:
        try:
            names = sorted(os.listdir(entry.info.path))
        except OSError:
            return None
        caches = [n for n in names if n.endswith(".cache")]
        related = [n for n in names if n.endswith(".cache") or "libvgpu.so" in n]
        if len(related) > 2:
            self._reject(
                entry,
                entry.info.path,
                0,
                len(related),
                REASON_TOO_MANY_FILES,
                f"{len(related)} files match *libvgpu.so* or *.cache (at most 2 allowed)",
            )
            return None
        return entry.info.path / caches[0] if caches else None

    def _load(self, entry: _Entry) -> bool:
        path = self._cache_file(entry)
        if path is None:
            return False
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            return False
        except OSError as exc:
            reason = REASON_NOT_REGULAR if exc.errno == errno.ELOOP else REASON_OPEN_FAILED
            self._reject(entry, path, 0, 0, reason, exc.strerror or str(exc))
            return False
        view: mmap.mmap | None = None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                self._reject(entry, path, st.st_ino, 0, REASON_NOT_REGULAR, "not a regular file")
                return False
            if st.st_size < codec.SMALLEST_LAYOUT:
                # Too short for any layout: read it (it is small) only to name the exact error.
                data = os.pread(fd, st.st_size, 0)
                try:
                    codec.decode(data)
                    problem = codec.RegionFormatError(codec.REASON_CORRUPT, "shorter than any layout")
                except codec.RegionFormatError as exc:
                    problem = exc
                self._refuse(entry, path, st, data[:4], problem)
                return False
            if self.open_count() >= self.max_open:
                if not self._too_many_logged:
                    log.warning("region_limit_reached", max_open=self.max_open, dir=entry.info.name)
                    self._too_many_logged = True
                self._reject(
                    entry,
                    path,
                    st.st_ino,
                    st.st_size,
                    REASON_TOO_MANY_REGIONS,
                    f"{self.max_open} caches are mapped already (max_open_regions)",
                )
                return False
            length = codec.map_length(st.st_size)
            view = mmap.mmap(fd, length, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
        except (OSError, ValueError) as exc:
            self._reject(entry, path, 0, 0, REASON_OPEN_FAILED, str(exc))
            return False
        finally:
            os.close(fd)
        try:
            # Size, magic and version are checked before any field is read.
            _reading, layout = codec.decode(view)
        except codec.RegionFormatError as exc:
            head = view[:4]
            view.close()
            self._refuse(entry, path, st, head, exc)
            return False
        entry.mapped = _Mapped(path, str(path), st.st_ino, st.st_dev, length, layout, view)
        entry.rejected = None
        log.debug("region_mapped", dir=entry.info.name, file=path.name, version=layout.version.value)
        return True

    def _refuse(
        self, entry: _Entry, path: Path, st: os.stat_result, head: bytes, exc: codec.RegionFormatError
    ) -> None:
        young = time.time() - st.st_mtime < UNINITIALISED_GRACE_SECONDS
        if exc.reason == codec.REASON_BAD_MAGIC and not any(head) and young:
            return  # created by the library, not initialised yet: look again at the next scan
        self._reject(entry, path, st.st_ino, st.st_size, exc.reason, str(exc))

    def _still_valid(self, mapped: _Mapped) -> bool:
        try:
            st = os.stat(mapped.path_str, follow_symlinks=False)
        except OSError:
            return False
        return st.st_ino == mapped.inode and st.st_dev == mapped.device and st.st_size >= mapped.length

    def _unmap(self, entry: _Entry) -> None:
        mapped, entry.mapped = entry.mapped, None
        if mapped is not None:
            mapped.view.close()
        if self._too_many_logged and self.open_count() < self.max_open:
            self._too_many_logged = False

    # --- reading -----------------------------------------------------------------------------------------

    def read(self, name: str) -> RegionReading | None:
        with self._lock:
            entry = self._entries.get(name)
            return None if entry is None else self._read_entry(entry)

    def read_all(self) -> Iterator[tuple[DirInfo, RegionReading | None]]:
        """Every known dir with its current reading (None: no valid cache yet)."""
        with self._lock:
            entries = list(self._entries.values())
            results = [(e.info, self._read_entry(e)) for e in entries]
        return iter(results)

    def _read_entry(self, entry: _Entry) -> RegionReading | None:
        mapped = entry.mapped
        if mapped is None:
            return None
        if not self._still_valid(mapped):
            # Truncated or replaced since it was mapped: never touch pages past the new end of file.
            self._unmap(entry)
            return None
        try:
            key = codec.fingerprint(mapped.view, mapped.layout)
            previous = mapped.reading
            if previous is not None and key == mapped.key:
                return previous
            layout = mapped.layout
            tail = layout.size - layout.proc_num
            if (
                previous is not None
                and key[: layout.procs] == mapped.key[: layout.procs]
                and key[-tail:] == mapped.key[-tail:]
            ):
                # Only process slots changed (the usual update): the validated header is taken over.
                reading = codec.redecode_slots(mapped.view, layout, previous)
            else:
                reading, _layout = codec.decode(mapped.view)
            mapped.key, mapped.reading = key, reading
            return reading
        except codec.RegionFormatError as exc:
            self._unmap(entry)
            self._reject(entry, mapped.path, mapped.inode, mapped.length, exc.reason, str(exc))
            return None

    # --- writing (feedback loop) ---------------------------------------------------------------------------

    def write_int32(self, name: str, field_name: str, value: int) -> bool:
        """Store one documented int32 field of the region of dir `name`; False when there is none now."""
        with self._lock:
            entry = self._entries.get(name)
            if entry is None or entry.mapped is None:
                return False
            mapped = entry.mapped
            offset = codec.field_offset(mapped.layout, field_name)
            if offset % 4 or offset + 4 > mapped.length:
                raise ValueError(f"field {field_name} at {offset} is not an aligned int32 of the region")
            page = offset - offset % mmap.ALLOCATIONGRANULARITY
            try:
                fd = os.open(mapped.path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
            except OSError as exc:
                log.warning("region_write_failed", dir=name, field=field_name, error=exc.strerror or str(exc))
                return False
            try:
                st = os.fstat(fd)
                if st.st_ino != mapped.inode or st.st_size < mapped.length:
                    return False
                at = offset - page
                with mmap.mmap(fd, at + 4, flags=mmap.MAP_SHARED, offset=page) as rw:
                    raw = memoryview(rw)
                    word = raw[at : at + 4].cast("i")
                    try:
                        word[0] = value  # one aligned 32-bit store
                    finally:
                        word.release()
                        raw.release()
            except OSError as exc:
                log.warning("region_write_failed", dir=name, field=field_name, error=exc.strerror or str(exc))
                return False
            finally:
                os.close(fd)
            return True

    # --- removal -------------------------------------------------------------------------------------------

    def remove_dir(self, name: str) -> bool:
        """Unmap and delete `<containers>/<name>`; only a real dir with a `<podUID>_<container>` name."""
        if parse_dir_name(name) is None:
            raise ValueError(f"{name!r} is not a <podUID>_<container> dir name")
        path = self.containers_dir / name
        with self._lock:
            entry = self._entries.pop(name, None)
            if entry is not None and entry.mapped is not None:
                self._unmap(entry)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                return False
            if not stat.S_ISDIR(st.st_mode):
                return False
            try:
                shutil.rmtree(path)
            except OSError as exc:
                log.warning("stale_dir_remove_failed", dir=name, error=str(exc))
                return False
        return True

    def close(self) -> None:
        with self._lock:
            for entry in self._entries.values():
                if entry.mapped is not None:
                    self._unmap(entry)
            self._entries.clear()
