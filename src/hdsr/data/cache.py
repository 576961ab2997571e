"""Decoded-image cache: uint8 ``.npy`` files that random crops read through memory mapping.

Each cache entry is ``<name>.npy`` plus ``<name>.npy.json``, which records what it was made
from (source path, size and mtime, and a tag naming the transform), the array's shape and
dtype, and a CRC-32 of its bytes. An entry is used only when its record matches the source
and the array file is complete and matches its checksum; otherwise it is rebuilt (with a
warning naming the file when the entry was damaged rather than absent or stale). The
checksum is verified the first time a process uses an entry, so later opens cost nothing.

A verified entry whose last write is older than :data:`SETTLED_S` also gets its file's
identity in the record (``verified``: inode, size, mtime and ctime, nanoseconds). Later
processes that find the file with that same identity skip the checksum: any write since
changes the mtime (to a time well after the recorded one) and the ctime, which no tool can
set back. Without that, every start of every rank re-read the whole cache (DIV2K x2:
about 8 GB, four seconds of CRC from the page cache here, far more from a network disk)
before its first training step. The cache folder need not be writable: where the record
cannot be updated the checksum is simply verified each time.

Writes go to a temporary name and are renamed into place (atomic on POSIX), the record
last, so an interrupted build is never loaded. A lock file serialises builders of the same
entry: concurrent processes (DDP ranks, jobs of a sweep) build it once and the others wait,
then reuse it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

#: 2: records carry ``crc32``; entries of version 1 are stale and rebuilt.
CACHE_VERSION = 2

#: (path, inode, size, mtime, crc32) of the entries this process has checksummed and found
#: intact: a later open of the same file is not read again.
_verified: set[tuple] = set()

#: seconds since an entry's last write before its verification is recorded for later
#: processes: file times have a coarse clock (a tick of a few ms), so a write landing in
#: the same tick as the recorded mtime could otherwise go unseen.
SETTLED_S = 2.0


class CacheEntryError(ValueError):
    """A damaged cache entry that cannot be rebuilt where it was found; names the file."""


def checksum(arr: np.ndarray) -> int:
    """CRC-32 of the array's bytes in C order."""
    return zlib.crc32(np.ascontiguousarray(arr))


def source_record(source: Path, tag: str) -> dict:
    """What an entry made from ``source`` by transform ``tag`` must match."""
    st = source.stat()
    return {
        "version": CACHE_VERSION,
        "source": str(source.resolve()),
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "tag": tag,
    }


def _meta_path(entry: Path) -> Path:
    return entry.with_name(entry.name + ".json")


def _fingerprint(entry: Path, crc: int, st: os.stat_result | None = None) -> tuple:
    st = st or entry.stat()
    return (str(entry), st.st_ino, st.st_size, st.st_mtime_ns, crc)


def _identity(st: os.stat_result) -> dict:
    """What a write to the file would change: the record's ``verified`` field."""
    return {
        "ino": st.st_ino,
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "ctime_ns": st.st_ctime_ns,
    }


def _record_verified(entry: Path, saved: dict, before: os.stat_result) -> None:
    """Add the identity of ``entry`` (checksummed intact, unchanged while it was read) to
    its record, when its last write has settled; quietly nothing where the cache cannot be
    written or the record changed meanwhile (a rebuild)."""
    if time.time_ns() - before.st_mtime_ns < SETTLED_S * 1e9:
        return
    meta = _meta_path(entry)
    try:
        with file_lock(entry.with_name(entry.name + ".lock")):
            if json.loads(meta.read_text()) != saved:
                return
            updated = dict(saved, verified=_identity(before))
            _atomic_write(meta, lambda f: json.dump(updated, f), binary=False)
    except (OSError, ValueError):  # a read-only cache, a record replaced meanwhile
        return


#: kinds of unusable entry: "absent" and "stale" are rebuilt quietly, "damaged" with a warning
Problem = tuple[str, str]


def _inspect(
    entry: Path, record: dict | None, locked: bool = False
) -> tuple[Problem | None, np.ndarray | None]:
    """``(None, memory map)`` when ``entry`` is usable, else ``((kind, why), None)``.

    ``record`` is what the source demands (see :func:`source_record`); ``None`` checks the
    entry's integrity only. ``locked``: the caller holds the entry's lock (the record is
    then left as it is: taking the lock again would wait on ourselves).
    """
    try:
        saved = json.loads(_meta_path(entry).read_text())
    except FileNotFoundError:
        return ("absent", "no record"), None
    except (OSError, ValueError) as err:  # JSONDecodeError and UnicodeDecodeError included
        return ("damaged", f"unreadable record ({err})"), None
    if not isinstance(saved, dict):
        return ("damaged", "unreadable record (not a JSON object)"), None
    if saved.get("version") != CACHE_VERSION or not isinstance(saved.get("crc32"), int):
        return ("stale", "made by another cache version"), None
    if record is not None and {k: saved.get(k) for k in record} != record:
        return ("stale", "its source changed"), None
    try:
        arr = np.load(entry, mmap_mode="r")
    except FileNotFoundError:
        return ("absent", "no array file"), None
    except (OSError, ValueError, EOFError, SyntaxError, TypeError) as err:
        return ("damaged", f"unreadable array file ({type(err).__name__}: {err})"), None
    if [list(arr.shape), str(arr.dtype)] != [saved.get("shape"), saved.get("dtype")]:
        return ("damaged", f"array {arr.dtype}{list(arr.shape)} is not the recorded one"), None
    before = entry.stat()
    key = _fingerprint(entry, saved["crc32"], before)
    if key in _verified:
        return None, arr
    if saved.get("verified") == _identity(before):  # checksummed since its last write
        _verified.add(key)
        return None, arr
    if checksum(arr) != saved["crc32"]:
        return ("damaged", "checksum mismatch: its bytes changed after it was written"), None
    _verified.add(key)
    if not locked and _identity(entry.stat()) == _identity(before):
        _record_verified(entry, saved, before)
    return None, arr


def is_valid(entry: Path, record: dict) -> bool:
    """True when ``entry`` exists, is intact and was made from the recorded source."""
    problem, _ = _inspect(entry, record)
    return problem is None


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Exclusive advisory lock on ``path`` (created if needed), released on exit."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _atomic_write(path: Path, write: Callable[[object], None], binary: bool) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def ensure_cached(entry: Path, source: Path, tag: str, produce: Callable[[], np.ndarray]) -> bool:
    """Make sure ``entry`` holds ``produce()`` for the current ``source``.

    Returns True when this call built the entry, False when a valid one was there. A
    damaged entry is rebuilt with a warning naming it.
    """
    record = source_record(source, tag)
    if is_valid(entry, record):
        return False
    entry.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(entry.with_name(entry.name + ".lock")):
        problem, _ = _inspect(entry, record, locked=True)
        if problem is None:  # another process built it while we waited
            return False
        kind, why = problem
        if kind == "damaged":
            log.warning("%s: damaged decoded-image cache entry (%s); rebuilding it", entry, why)
        arr = np.ascontiguousarray(produce())
        _meta_path(entry).unlink(missing_ok=True)  # invalid until the new record lands
        _atomic_write(entry, lambda f: np.save(f, arr), binary=True)
        crc = checksum(arr)
        meta = dict(record, shape=list(arr.shape), dtype=str(arr.dtype), crc32=crc)
        _atomic_write(_meta_path(entry), lambda f: json.dump(meta, f), binary=False)
        _verified.add(_fingerprint(entry, crc))
    return True


def open_cached(entry: Path) -> np.ndarray:
    """The cached array, memory-mapped read-only, checked against its record.

    Raises :class:`CacheEntryError` naming the file when the entry is damaged (or stale:
    written by another cache version), since it cannot be rebuilt from here.
    """
    problem, arr = _inspect(entry, None)
    if problem is None:
        return arr
    kind, why = problem
    if kind == "absent" and not entry.exists():
        raise FileNotFoundError(f"{entry}: decoded-image cache entry is missing")
    raise CacheEntryError(
        f"{entry}: unusable decoded-image cache entry ({why}); delete it and "
        f"{_meta_path(entry).name} beside it, and run again to rebuild it"
    )
