"""hdsr's WandbLogger: Lightning's, with the run's metric summaries defined once per start.

Imported by ``hdsr.loggers.build_loggers`` only when a W&B run is made (Lightning is heavy).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger
from lightning.pytorch.loggers.logger import rank_zero_experiment

from hdsr.loggers import define_metrics


class WandbLogger(LightningWandbLogger):
    """Lightning's ``WandbLogger`` (same name, so ``hdsr.loggers.wandb_logger`` finds it)
    that calls :func:`hdsr.loggers.define_metrics` right after the W&B run starts.

    The run starts lazily, on the first use of ``experiment`` (on global rank 0, when the
    fit begins), in every process that trains: a fresh start and each resume (the same run
    id) define the metrics once, after Lightning's own definitions (``trainer/global_step``
    as the step of every metric).

    Args:
        val_sets: the validation sets' names, for ``val/psnr_y/<set>`` and
            ``val/ssim_y/<set>``.
        *args, **kwargs: Lightning's ``WandbLogger`` arguments.
    """

    def __init__(self, *args: Any, val_sets: Sequence[str] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.val_sets = list(val_sets)
        self.metrics_defined = False

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        run = super().experiment
        if not self.metrics_defined:
            self.metrics_defined = True
            define_metrics(run, self.val_sets)
        return run
