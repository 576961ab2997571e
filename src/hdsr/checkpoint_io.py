"""The one place hdsr reads a checkpoint file: weights-only, one error type, one message.

A checkpoint a user hands hdsr (a run's ``.ckpt``, the authors' ``.pt``, a file from
W&B) is untrusted data. ``torch.load(..., weights_only=True)`` makes the unpickler refuse
every class outside PyTorch's allow-list, so reading a file can never run code. Every
reader of hdsr (resume, ``hdsr-eval``, ``hdsr-upscale``, ``hdsr-export``, the W&B model
artifacts, the authors' loader, ``SRModule.load_from_checkpoint``) goes through
:func:`read_checkpoint`, and every failure is an :class:`~hdsr.errors.UnreadableCheckpoint`
whose message reads ``<path> is not a readable checkpoint: <why>``.
"""

from __future__ import annotations

import os
import pickle
from typing import Any

import torch

from hdsr.errors import UnreadableCheckpoint


def _reason(err: BaseException) -> str:
    """Why a weights-only load failed, in one line."""
    text = str(err).strip()
    if isinstance(err, pickle.UnpicklingError) and "Weights only load failed" in text:
        detail = next((ln.strip() for ln in text.splitlines() if "GLOBAL" in ln), "")
        return (
            "refused: a weights-only load refuses the Python objects pickled in it, which "
            "hdsr never unpickles" + (f" ({detail})" if detail else "")
        )
    first = text.splitlines()[0].split(". ")[0] if text else "empty or cut short"
    return f"{type(err).__name__}: {first}"


def read_checkpoint(
    path: str | os.PathLike[str], map_location: Any = "cpu", mmap: bool = False
) -> Any:
    """``torch.load(path, weights_only=True)``: tensors and plain containers only.

    ``mmap``: map the file instead of reading it (for a look at a few fields of a large
    file). Raises ``UnreadableCheckpoint`` naming ``path`` for a torn or truncated file,
    a file that is not a PyTorch checkpoint, and one that would need arbitrary unpickling.
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as err:  # noqa: BLE001 - whatever the cause, the file cannot be read
        raise UnreadableCheckpoint(os.fspath(path), _reason(err)) from None
