"""Decoded-image cache: uint8 ``.npy`` files that random crops read through memory mapping.

Each cache entry is ``<name>.npy`` plus ``<name>.npy.json``, which records what it was made
from (source path, size and mtime, and a tag naming the transform). An entry is used only
when its record matches the source and the array file is complete; otherwise it is
rebuilt. Writes go to a temporary name and are renamed into place (atomic on POSIX), the
record last, so an interrupted build is never loaded. A lock file serialises builders of
the same entry: concurrent processes (DDP ranks, jobs of a sweep) build it once and the
others wait, then reuse it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

CACHE_VERSION = 1


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


def is_valid(entry: Path, record: dict) -> bool:
    """True when ``entry`` exists, is complete and was made from the recorded source."""
    meta = _meta_path(entry)
    try:
        saved = json.loads(meta.read_text())
        if {k: saved.get(k) for k in record} != record:
            return False
        arr = np.load(entry, mmap_mode="r")  # raises on a truncated file
        return list(arr.shape) == saved["shape"] and str(arr.dtype) == saved["dtype"]
    except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError):
        return False


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

    Returns True when this call built the entry, False when a valid one was there.
    """
    record = source_record(source, tag)
    if is_valid(entry, record):
        return False
    entry.parent.mkdir(parents=True, exist_ok=True)
    with file_lock(entry.with_name(entry.name + ".lock")):
        if is_valid(entry, record):  # another process built it while we waited
            return False
        arr = np.ascontiguousarray(produce())
        _meta_path(entry).unlink(missing_ok=True)  # invalid until the new record lands
        _atomic_write(entry, lambda f: np.save(f, arr), binary=True)
        meta = dict(record, shape=list(arr.shape), dtype=str(arr.dtype))
        _atomic_write(_meta_path(entry), lambda f: json.dump(meta, f), binary=False)
    return True


def open_cached(entry: Path) -> np.ndarray:
    """The cached array, memory-mapped read-only."""
    return np.load(entry, mmap_mode="r")
