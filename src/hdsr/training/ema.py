"""EMA of the weights (``ema.decay``), on Lightning's own ``EMAWeightAveraging``.

Lightning's callback keeps an exponential moving average of every parameter and buffer
(``ema = decay * ema + (1 - decay) * w`` after each optimizer step from ``start_step`` on;
the first update copies the weights), swaps it in for every validation (so validation,
the best checkpoint and the final table score it), and writes both sets into
checkpoints: ``state_dict`` holds the averaged weights, ``current_model_state`` the
trained ones, and resuming restores both. hdsr adds:

* the trained weights stay in the model when training ends. Lightning's callback copies
  the average into the model in ``on_train_end``, which runs before ``ModelCheckpoint``'s
  final save of ``last.ckpt`` (and after ``GracefulStop``'s on a signal, to the same
  file): that ``last.ckpt`` would hold the average as both sets, and a run resumed from
  it would go on from the average instead of the trained weights, not bitwise the run
  that was never stopped. The point of the copy (the model scores the average after
  ``fit``) is kept by the swap, which also covers a ``trainer.validate`` after ``fit``;
* the options checked with messages that name the key (``ema.decay`` in (0, 1),
  ``ema.start_step`` >= 0 and before ``trainer.max_steps``);
* an average not yet updated (validations before ``start_step``) is not swapped in: it
  holds the initial weights, so the trained ones are scored (and readers of a checkpoint
  whose average was never updated load its trained weights, ``hdsr.checkpoint_io.weight_set``);
* the trained weights' PSNR on the first validation set, logged beside the averaged
  ones' as ``val/psnr_y_raw/<set>``, so the gain of the average is visible;
* readers pick a set: ``hdsr.inference.loading.load_model(..., weights="ema"|"raw")``, used by
  ``hdsr-eval weights=raw`` and ``hdsr-upscale --weights raw`` (EMA by default).

Every DDP rank averages its own replica of the same weights, so the averages agree.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import EMAWeightAveraging

from hdsr.evaluation.module import SYNCED
from hdsr.metrics import PSNRY
from hdsr.training.config import check_ema


class EMA(EMAWeightAveraging):
    """``EMAWeightAveraging`` with checked options and the trained weights' PSNR.

    Args:
        decay: the average's decay per optimizer step, in (0, 1).
        start_step: the first optimizer step (0-based) that updates the average.
        raw_metric_set: the validation set (its name) on which the trained weights are
            scored too (``val/psnr_y_raw/<set>``); None scores nothing extra.
    """

    def __init__(self, decay: float, start_step: int = 0, raw_metric_set: str | None = None):
        check_ema(decay, start_step)
        super().__init__(decay=float(decay), update_starting_at_step=int(start_step))
        self.decay = float(decay)
        self.raw_metric_set = raw_metric_set
        self._raw_psnr: PSNRY | None = None
        self._swapped = False

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Keep the trained weights in the model (see the module's docstring)."""

    def averaged(self) -> bool:
        """Whether the average has been updated at least once (before ``start_step`` it
        holds the initial weights, which are never scored)."""
        model = self._average_model
        return model is not None and int(model.n_averaged) > 0

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._raw_psnr = None
        self._swapped = self.averaged()
        if not self._swapped:  # no average yet: the trained weights are scored
            return
        super().on_validation_epoch_start(trainer, pl_module)  # the average goes in
        if self.raw_metric_set is not None:
            self._raw_psnr = PSNRY(int(pl_module.scale)).to(pl_module.device)

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._raw_psnr is None or self._average_model is None:
            return
        if pl_module.val_set_names[dataloader_idx] != self.raw_metric_set:
            return
        # during validation the averaged copy holds the trained weights (they are swapped)
        raw = self._average_model.module
        sr = raw.predict_fp32(batch["lr"])
        self._raw_psnr.update(sr, batch["hr"].cpu().numpy(), int(batch["index"]))

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._raw_psnr is not None:
            value = float(self._raw_psnr.compute())  # one gather of every rank's scores
            if not math.isnan(value):  # NaN: the set had no image this time
                key = f"val/psnr_y_raw/{self.raw_metric_set}"
                pl_module.log(key, value, **SYNCED)
        self._raw_psnr = None
        if self._swapped:
            super().on_validation_epoch_end(trainer, pl_module)  # the trained weights go back
        self._swapped = False
