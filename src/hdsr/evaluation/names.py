"""Names of evaluations and of the models in them, from their checkpoint paths."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def run_label(path: str | Path) -> str:
    """A checkpoint's run: ``<run>/checkpoints/x.ckpt`` -> ``<run>``, else the file's stem."""
    p = Path(str(path))
    return p.parent.parent.name if p.parent.name == "checkpoints" else p.stem


def eval_name(ckpts: Any, model: Any) -> str:
    """A readable, fixed name for an evaluation: its checkpoints' runs (or file stems)."""
    if isinstance(ckpts, str):
        ckpts = [ckpts] if ckpts else []
    names = []
    for c in ckpts or []:
        names.append(run_label(c))
    if model:
        names.append(str(model))
    return "+".join(names) or "eval"
