"""Callbacks the end-to-end tests add to a run (``+callbacks.<name>._target_=...``, with
``PYTHONPATH=tests``) to see what each DDP rank holds."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch


class SaveEMAPerRank(L.Callback):
    """At the end of fit, write this rank's EMA weights to ``<out_dir>/ema_rank<r>.pt``."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from hdsr.training.ema import EMA

        (ema,) = [c for c in trainer.callbacks if isinstance(c, EMA)]
        state = {k: v.detach().cpu() for k, v in ema._average_model.module.state_dict().items()}
        self.out_dir.mkdir(parents=True, exist_ok=True)
        torch.save(state, self.out_dir / f"ema_rank{trainer.global_rank}.pt")
