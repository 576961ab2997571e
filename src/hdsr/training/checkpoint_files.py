"""The checkpoint files of a run: atomic writes, readability, resume choice, old ones kept.

* ``AtomicCheckpointIO`` (the Trainer's CheckpointIO plugin) writes every checkpoint to a
  temporary file beside its destination, flushes and fsyncs it, then ``os.replace``s it
  into place and fsyncs the folder: at every moment the folder holds a complete
  ``last.ckpt``, the old one or the new one. Nothing is staged in ``$TMPDIR``.
* A killed write leaves only its temporary file (``.<name>.hdsr-tmp-<pid>-<hex>``);
  ``remove_stale_temp_files`` deletes those (and nothing else) at the next start.
* ``read_checkpoint`` loads a file with ``weights_only=True`` (checkpoints are untrusted
  data); ``resume_checkpoint`` picks what a rerun resumes from, falling back from an
  unreadable ``last.ckpt`` to the newest readable checkpoint of the folder.
* ``check_matches`` compares a checkpoint's model, scale and network with the config.
* ``move_previous_checkpoints``: a fresh start keeps the old checkpoints in
  ``checkpoints/previous-<UTC time>/`` instead of overwriting them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from hdsr.checkpoint_io import read_checkpoint as read_file
from hdsr.errors import ConfigError, UnreadableCheckpoint, write_failed

log = logging.getLogger(__name__)

TEMP_TAG = ".hdsr-tmp-"
_TEMP_NAME = re.compile(r"^\..+\.hdsr-tmp-\d+-[0-9a-f]{8}$")
PREVIOUS_PREFIX = "previous-"


def temp_path_for(path: Path) -> Path:
    """Where a write of ``path`` goes first: a hidden, unique name in the same folder."""
    return path.with_name(f".{path.name}{TEMP_TAG}{os.getpid()}-{secrets.token_hex(4)}")


def _fsync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (where the platform can open a directory)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save(obj, path)`` such that ``path`` is never a partly written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(path)
    try:
        with open(tmp, "xb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as err:  # a full disk: torch's writer says RuntimeError
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise write_failed(path, err) from None
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def _is_url(path: str | os.PathLike[str]) -> bool:
    return "://" in str(path) and not str(path).startswith("file://")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's TorchCheckpointIO with local files written atomically in place.

    Lightning's own save goes through an fsspec transaction whose temporary file lives in
    ``$TMPDIR``; on another file system than the run, moving it into place is a copy that
    a kill can cut short, leaving a torn checkpoint. Remote URLs (s3:// ...) keep
    Lightning's path.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or _is_url(path):
            super().save_checkpoint(checkpoint, path, storage_options=storage_options)
            return
        atomic_torch_save(checkpoint, str(path).removeprefix("file://"))


def remove_stale_temp_files(folder: Path) -> list[Path]:
    """Delete the temporary files of checkpoint writes that were killed; return them."""
    if not folder.is_dir():
        return []
    removed = []
    for path in sorted(folder.iterdir()):
        if _TEMP_NAME.match(path.name) and path.is_file() and not path.is_symlink():
            path.unlink(missing_ok=True)
            removed.append(path)
    if removed:
        names = ", ".join(p.name for p in removed)
        log.warning(
            "removed unfinished checkpoint writes of a killed run from %s: %s", folder, names
        )
    return removed


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The Lightning checkpoint in ``path``, loaded weights-only on the CPU.

    Raises ``UnreadableCheckpoint`` for a torn or truncated file, a file that is not a
    Lightning checkpoint, and one that would need arbitrary unpickling.
    """
    ckpt = read_file(path)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "global_step" not in ckpt:
        reason = "not a Lightning checkpoint (no state_dict and global_step)"
        raise UnreadableCheckpoint(path, reason)
    return ckpt


def newest_readable(folder: Path, exclude: Path | None = None) -> tuple[Path, dict] | None:
    """The readable checkpoint of ``folder`` (``*.ckpt``, not below it) with the highest
    stored global_step, the newest file among equals; None if there is none."""
    best: tuple[int, int, Path, dict] | None = None
    for path in sorted(folder.glob("*.ckpt")):
        if path == exclude or not path.is_file():
            continue
        try:
            ckpt = read_checkpoint(path)
        except UnreadableCheckpoint as err:
            log.warning("%s is unreadable too (%s)", path, err.reason)
            continue
        key = (int(ckpt["global_step"]), path.stat().st_mtime_ns)
        if best is None or key > best[:2]:
            best = (*key, path, ckpt)
    return None if best is None else (best[2], best[3])


def resume_checkpoint(folder: Path, announce: bool = True) -> tuple[Path, dict] | None:
    """What a rerun resumes from: ``folder/last.ckpt``, or when that cannot be read the
    newest readable checkpoint in ``folder``; None (a fresh start) when there is none.

    With ``announce`` (global rank 0) an unreadable ``last.ckpt``, the fallback and a
    fresh start are logged as warnings naming the files.
    """
    say = log.warning if announce else log.debug
    last = folder / "last.ckpt"
    if not last.is_file():
        return None
    try:
        return last, read_checkpoint(last)
    except UnreadableCheckpoint as err:
        say("%s is unreadable (%s); not resuming from it", last, err.reason)
    found = newest_readable(folder, exclude=last)
    if found is None:
        say("no readable checkpoint in %s: starting fresh", folder)
        return None
    path, ckpt = found
    say(
        "falling back to %s (global step %d), the newest readable checkpoint in %s",
        path,
        ckpt["global_step"],
        folder,
    )
    return found


def _differences(held: Any, asked: Any, prefix: str = "") -> list[str]:
    if isinstance(held, dict) and isinstance(asked, dict):
        out = []
        for key in sorted(set(held) | set(asked), key=str):
            missing = "(absent)"
            out += _differences(held.get(key, missing), asked.get(key, missing), f"{prefix}{key}.")
        return out
    if held != asked:
        return [f"{prefix.rstrip('.')}: {held} in the checkpoint, {asked} in the config"]
    return []


def check_matches(ckpt: dict, path: Path, scale: int, model_name: str, net_config: dict) -> None:
    """Raise ConfigError unless ``ckpt`` holds this model variant, scale and network."""
    hp = ckpt.get("hyper_parameters")
    if not isinstance(hp, dict):
        raise ConfigError(f"{path} has no hyper_parameters: not a checkpoint written by hdsr-train")
    held_name = hp.get("model_name", model_name)
    held_scale = hp.get("scale", scale)
    held = f"{path} holds model {held_name} at x{held_scale}"
    if held_name != model_name or held_scale != scale:
        raise ConfigError(
            f"{held}, but the config asks for model {model_name} at x{scale}; pick the "
            "matching model=/data.scale=, or another checkpoint"
        )
    held_net = hp.get("net_config")
    if held_net is not None and held_net != net_config:
        diff = "; ".join(_differences(held_net, net_config))
        raise ConfigError(f"{held} with another network ({diff}); the config's model.net differs")


def move_previous_checkpoints(folder: Path, now: datetime | None = None) -> Path | None:
    """Move the ``*.ckpt`` files of ``folder`` into ``folder/previous-<UTC time>/``.

    The folder is named by the UTC time of the move (``previous-20250102T030405Z``, with
    ``-2``, ``-3`` ... when that exists already). Returns it, or None if nothing was there.
    """
    files = sorted(p for p in folder.glob("*.ckpt") if p.is_file()) if folder.is_dir() else []
    if not files:
        return None
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    dest, n = folder / f"{PREVIOUS_PREFIX}{stamp}", 1
    while dest.exists():
        n += 1
        dest = folder / f"{PREVIOUS_PREFIX}{stamp}-{n}"
    dest.mkdir()
    for path in files:
        os.replace(path, dest / path.name)
    _fsync_dir(dest)
    _fsync_dir(folder)
    log.warning("fresh start: moved %s to %s", ", ".join(p.name for p in files), dest)
    return dest
