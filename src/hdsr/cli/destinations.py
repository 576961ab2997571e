"""Where a command writes a file: checked before the work, so that a long export or
profile never ends in a traceback about a path that could not have been written."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def file_problem(path: Path, option: str) -> str | None:
    """Why the file ``path`` (given as ``option``, e.g. ``-o``) cannot be written, or None:
    it is a folder, its folder is a file or cannot be created, nothing can be written in
    that folder (a probe file is made and removed), or the file itself is read-only.
    Creates the folder when it is missing."""
    if path.is_dir():
        return f"{option} {path} is a directory; name the file to write"
    folder = path.parent
    if folder.exists() and not folder.is_dir():
        return f"{option} {path}: {folder} is a file, not a folder"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.probe-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        return f"{option} {path}: cannot write to the folder {folder} ({err.strerror or err})"
    if path.exists() and not os.access(path, os.W_OK):
        return f"{option} {path}: the file is read-only"
    return None
