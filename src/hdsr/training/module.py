"""LightningModule: L1 training of an SR network; validation and test as
:class:`hdsr.evaluation.module.EvaluationModule` scores."""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import WeightAveraging
from torch import nn

from hdsr.checkpoint_io import check_finite, read_checkpoint, weight_set
from hdsr.errors import UnreadableCheckpoint
from hdsr.evaluation.module import EvaluationModule
from hdsr.models.hdsrnet import count_parameters
from hdsr.models.registry import build_network
from hdsr.training.optimizers import (
    PAPER_ADAM,
    PAPER_STEP_LR,
    OptimizerFactory,
    SchedulerFactory,
    build_optimizer,
    describe,
)

log = logging.getLogger(__name__)


class SRModule(EvaluationModule):
    """Trains ``net`` with L1 loss and Adam; validates and tests with Y-channel PSNR/SSIM.

    Args:
        net: the SR network, mapping (B, 3, h, w) -> (B, 3, s*h, s*w) on 0..255.
        scale: its upscaling factor (also the border shaved by the metrics).
        optimizer: builds the optimizer from the parameters: a partial, as the
            ``optimizer`` config group gives it (``_partial_: true``). Completed with
            ``fused=True``, or ``foreach=True`` under *-mixed precision with gradient
            clipping, where the optimizer takes it and the partial sets neither
            (``hdsr.training.optimizers.build_optimizer``). Default: the paper's Adam (lr 1e-4,
            betas (0.9, 0.999), eps 1e-8).
        scheduler: builds the LR scheduler from the optimizer (the ``scheduler`` group),
            stepped after every optimizer step; None: a constant learning rate.
            Default: the paper's StepLR, halving the rate every 300,000 steps.
        val_set_names: names of the validation loaders, in order (for metric keys).
        test_set_names: names of the test loaders, in order.
        channels_last: run the network in channels_last memory format.
        compile: run the forward pass through ``torch.compile`` (weights stay in ``net``,
            so checkpoints keep plain key names).
        log_images: per validation set, how many images get SR/bicubic/HR crops logged to
            image-capable loggers (W&B).
        net_config: the Hydra config that built ``net`` (``_target_`` and arguments); kept
            in the checkpoint so ``hdsr.inference.loading.load_model`` can rebuild the network.
        name: the variant's name (``model.name``), kept in the checkpoint as
            ``model_name``.

    The checkpoint's ``hyper_parameters`` hold plain data only (hdsr reads checkpoints
    weights-only): the arguments above but ``net``, with ``optimizer`` and ``scheduler``
    recorded as what they build (``hdsr.training.optimizers.describe``). Resuming restores the
    optimizer's and scheduler's state from the checkpoint, whatever built them.

    Scores: a :class:`~hdsr.metrics.PSNRY` and an :class:`~hdsr.metrics.SSIMY` per
    validation and per test set (``val_metrics[k]``, ``test_metrics[k]``), synchronised
    across DDP ranks by torchmetrics and logged as ``<stage>/psnr_y/<set>`` and
    ``<stage>/ssim_y/<set>``; their states are not part of the checkpoint.

    Validation scores :meth:`predict_fp32`'s image; the test step scores :meth:`predict`'s,
    ``hdsr.inference.forward.upscale`` with the options below (``hdsr-eval``'s), neither of them
    saved in checkpoints:

    * ``inference``: ``tile`` (None: by the memory budget, untiled when the image fits;
      0: never tiled; N: LR tiles of N px), ``tile_overlap``, ``max_memory`` (bytes, None:
      the default budget), ``self_ensemble`` and ``precision`` ("32", "bf16" or "16"
      autocast), as ``upscale`` takes them; missing ones are :data:`INFERENCE_DEFAULTS`,
      with which the test step scores what validation scores, to the bit (whole images
      that fit the budget).
    * ``image_dir``: where the test step writes each SR image (uint8, as scored), as
      ``<image_dir>/<set>/<name>_x<scale>.png``; None writes nothing.
    """

    def __init__(
        self,
        net: nn.Module,
        scale: int,
        optimizer: OptimizerFactory = PAPER_ADAM,
        scheduler: SchedulerFactory | None = PAPER_STEP_LR,
        val_set_names: Sequence[str] = ("val",),
        test_set_names: Sequence[str] = (),
        channels_last: bool = False,
        compile: bool = False,
        log_images: int = 2,
        net_config: dict | None = None,
        name: str | None = None,
        inference: Mapping[str, Any] | None = None,
        image_dir: str | Path | None = None,
    ) -> None:
        super().__init__(
            net,
            scale,
            val_set_names=val_set_names,
            test_set_names=test_set_names,
            channels_last=channels_last,
            log_images=log_images,
            inference=inference,
            image_dir=image_dir,
        )
        self.save_hyperparameters(
            ignore=["net", "name", "optimizer", "scheduler", "inference", "image_dir"]
        )
        # plain data in the checkpoint: the model's name, and what the partials build
        self.save_hyperparameters(
            {"model_name": name, "optimizer": describe(optimizer), "scheduler": describe(scheduler)}
        )
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        # kept out of the module tree, so checkpoints hold the weights once, under net.*
        object.__setattr__(self, "_forward", torch.compile(self.net) if compile else self.net)

    @classmethod
    def load_from_checkpoint(  # type: ignore[override]
        cls,
        checkpoint_path: str | os.PathLike[str],
        map_location: Any = None,
        hparams_file: Any = None,
        strict: bool | None = None,
        weights_only: bool | None = None,
        weights: str = "ema",
        **kwargs: Any,
    ) -> SRModule:
        """An ``hdsr-train`` checkpoint as an ``SRModule``, as Lightning users expect.

        The file is read weights-only (:func:`hdsr.checkpoint_io.read_checkpoint`; a
        checkpoint is data, never code to run) and the network rebuilt from its
        ``net_config`` through hdsr's allow-list (:func:`hdsr.models.registry.build_network`),
        its weights loaded strictly: the averaged ones of an EMA run (``weights="ema"``)
        or the trained ones (``"raw"``), as ``hdsr.inference.loading.load_model`` picks.
        The other stored hyperparameters (scale, set names, ``log_images``, ...) are the
        module's; ``kwargs`` override them. The optimizer and scheduler are recorded in the
        checkpoint as data, not rebuilt from it: the paper's unless given in ``kwargs``
        (resuming a run restores their state through ``Trainer.fit(ckpt_path=...)``).

        Raises ``UnreadableCheckpoint`` or ``UntrustedConfigError`` naming the file.
        """
        if weights_only is not None and not weights_only:
            # checkpoint_io always loads weights-only; a request to unpickle is an error
            raise ValueError("hdsr reads checkpoints weights-only and never unpickles objects")
        if hparams_file is not None:
            raise ValueError("hdsr checkpoints hold their hyperparameters; hparams_file is unused")
        path = os.fspath(checkpoint_path)
        ckpt = read_checkpoint(path, map_location="cpu")
        hp = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
        if not isinstance(hp, dict) or not isinstance(ckpt.get("state_dict"), dict):
            raise UnreadableCheckpoint(path, "not an hdsr-train checkpoint (no hyper_parameters)")
        if not hp.get("net_config"):
            raise UnreadableCheckpoint(path, "no net_config to rebuild its network from")
        if weights not in ("ema", "raw"):
            raise ValueError(f"weights must be ema or raw, got {weights!r}")
        net = build_network(hp["net_config"], path, "hyper_parameters.net_config")
        stored = {
            k: hp[k]
            for k in (
                "scale",
                "val_set_names",
                "test_set_names",
                "channels_last",
                "compile",
                "log_images",
                "net_config",
            )
            if k in hp
        }
        module = cls(net, **{"name": hp.get("model_name"), **stored, **kwargs})
        key, _, note = weight_set(ckpt, weights, path)
        if note:
            warnings.warn(note, UserWarning, stacklevel=2)
        check_finite(ckpt[key], path, key)
        module.load_state_dict(ckpt[key], strict=True if strict is None else strict)
        if map_location is not None:
            module = module.to(map_location)
        return module

    def forward(self, lr: torch.Tensor) -> torch.Tensor:
        """The training forward: ``torch.compile``'d with ``compile``, under the trainer's
        precision (validation and test use ``predict_fp32``)."""
        if self.channels_last:
            lr = lr.contiguous(memory_format=torch.channels_last)
        return self._forward(lr)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Resuming a run that had EMA (``ema.decay``) with EMA off: its ``state_dict``
        holds the average and ``current_model_state`` the trained weights. Training goes
        on from the trained weights (Lightning would load the average, and the trained
        weights would be lost); the average is dropped, and the log says so."""
        trained = checkpoint.get("current_model_state")
        trainer = self._trainer
        if not isinstance(trained, dict) or trainer is None:
            return
        if any(isinstance(c, WeightAveraging) for c in trainer.callbacks):
            return  # the EMA callback restores both sets itself
        checkpoint["state_dict"] = checkpoint.pop("current_model_state")
        checkpoint.pop("averaging_state", None)
        if trainer.is_global_zero:
            log.warning(
                "resuming a run that had EMA with ema.decay=null: training goes on from its "
                "trained weights; its average is dropped (set ema.decay to keep averaging)"
            )

    def on_fit_start(self) -> None:
        params = count_parameters(self.net)
        for logger in self.loggers:
            logger.log_metrics({"model/params": float(params)}, step=self.global_step)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = F.l1_loss(self(batch["lr"]), batch["hr"])
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        # fused kernel, or foreach under *-mixed precision with clipping (build_optimizer)
        trainer = self._trainer
        mixed = trainer is not None and str(trainer.precision).endswith("-mixed")
        clipping = trainer is not None and bool(trainer.gradient_clip_val)
        opt = build_optimizer(self.optimizer_factory, self.parameters(), mixed, clipping)
        if self.scheduler_factory is None:
            return opt
        sched = self.scheduler_factory(opt)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
