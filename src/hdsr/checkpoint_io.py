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

from hdsr.errors import NonFiniteWeights, UnreadableCheckpoint


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


def _n_averaged(ckpt: dict) -> int | None:
    """The number of updates of the EMA average stored in an ``hdsr-train`` checkpoint
    (Lightning's ``averaging_state.n_averaged``); None when it holds no such count."""
    state = ckpt.get("averaging_state")
    count = state.get("n_averaged") if isinstance(state, dict) else None
    if isinstance(count, torch.Tensor) and count.numel() == 1:
        return int(count.item())
    return None


def weight_set(
    ckpt: dict, weights: str, path: str | os.PathLike[str]
) -> tuple[str, str, str | None]:
    """Which entry of an ``hdsr-train`` checkpoint holds the weights to load.

    ``weights``: ``"ema"`` (the average of an EMA run, the default of every reader) or
    ``"raw"`` (the trained weights). Returns ``(key, label, note)``: the checkpoint's key,
    what its weights are (``"ema"`` or ``"trained"``) and a message when they are not what
    was asked for. A checkpoint without EMA holds the trained weights in ``state_dict``.
    An average that was never updated (``n_averaged`` 0: training stopped before
    ``ema.start_step``) holds the initial weights, never what anyone wants to score or
    export: the trained weights are used and ``note`` says so.
    """
    if not isinstance(ckpt.get("current_model_state"), dict):
        return "state_dict", "trained", None
    if weights == "raw":
        return "current_model_state", "trained", None
    if _n_averaged(ckpt) == 0:
        return (
            "current_model_state",
            "trained",
            f"{os.fspath(path)}: its EMA average was never updated (training stopped before "
            "ema.start_step), so it holds the initial weights; the trained weights are used",
        )
    return "state_dict", "ema", None


def check_finite(state: dict, path: str | os.PathLike[str], key: str = "state_dict") -> None:
    """Raise ``NonFiniteWeights`` naming ``path`` and the first floating tensor of
    ``state`` that holds NaN or Inf values."""
    for name, value in state.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            finite = torch.isfinite(value)
            if not bool(finite.all()):
                bad = int(finite.numel() - finite.sum())
                raise NonFiniteWeights(
                    f"{os.fspath(path)}: tensor {key}.{name} has {bad} NaN/Inf value(s) of "
                    f"{value.numel()}: the weights are broken (a diverged or damaged run); "
                    "use an earlier checkpoint"
                )
