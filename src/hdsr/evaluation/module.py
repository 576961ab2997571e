"""The LightningModule that scores a network on whole images, paper protocol: validation
during training (``hdsr.training.module.SRModule`` extends it) and ``Trainer.test`` for
``hdsr-eval`` (``hdsr.evaluation.scoring.score_sets``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn

from hdsr.data.datasets import ShardSampler
from hdsr.errors import NonFiniteOutput
from hdsr.evaluation.bicubic import bicubic_sr
from hdsr.imaging import center_crop, to_uint8_image, write_png
from hdsr.inference.forward import ScoringNet, inference_options, upscale
from hdsr.metrics import PSNRY, SSIMY, sr_like_hr
from hdsr.models.layers import full_precision

#: ``self.log`` options for a value every rank already holds (a torchmetrics metric's
#: ``compute()``, synchronised by torchmetrics): Lightning's epoch-level sync is asked
#: for, so it does not warn, and it takes the max of identical values, which leaves them
#: exact (a mean over ranks could round). One process: nothing is synchronised.
SYNCED = {"sync_dist": True, "reduce_fx": "max", "add_dataloader_idx": False}


def _set_metrics(scale: int) -> nn.ModuleDict:
    return nn.ModuleDict({"psnr_y": PSNRY(scale), "ssim_y": SSIMY(scale)})


class EvaluationModule(L.LightningModule):
    """Scores ``net`` with Y-channel PSNR/SSIM on whole images: validation and test steps.

    Args:
        net: the SR network, mapping (B, 3, h, w) -> (B, 3, s*h, s*w) on 0..255.
        scale: its upscaling factor (also the border shaved by the metrics).
        val_set_names: names of the validation loaders, in order (for metric keys).
        test_set_names: names of the test loaders, in order.
        channels_last: the network runs in channels_last memory format.
        log_images: per validation set, how many images get SR/bicubic/HR crops logged to
            image-capable loggers (W&B).
        inference: the test step's options (below).
        image_dir: where the test step writes each SR image (below).

    Scores: a :class:`~hdsr.metrics.PSNRY` and an :class:`~hdsr.metrics.SSIMY` per
    validation and per test set (``val_metrics[k]``, ``test_metrics[k]``), synchronised
    across DDP ranks by torchmetrics and logged as ``<stage>/psnr_y/<set>`` and
    ``<stage>/ssim_y/<set>``; their states are not part of the checkpoint.

    Validation scores :meth:`predict_fp32`'s image; the test step scores :meth:`predict`'s,
    ``hdsr.inference.forward.upscale`` with the options below (``hdsr-eval``'s), neither of
    them saved in checkpoints:

    * ``inference``: ``tile`` (None: by the memory budget, untiled when the image fits;
      0: never tiled; N: LR tiles of N px), ``tile_overlap``, ``max_memory`` (bytes, None:
      the default budget), ``self_ensemble`` and ``precision`` ("32", "bf16" or "16"
      autocast), as ``upscale`` takes them; missing ones are
      :data:`hdsr.inference.forward.INFERENCE_DEFAULTS`, with which the test step scores
      what validation scores, to the bit (whole images that fit the budget).
    * ``image_dir``: where the test step writes each SR image (uint8, as scored), as
      ``<image_dir>/<set>/<name>_x<scale>.png``; None writes nothing.
    """

    def __init__(
        self,
        net: nn.Module,
        scale: int,
        val_set_names: Sequence[str] = ("val",),
        test_set_names: Sequence[str] = (),
        channels_last: bool = False,
        log_images: int = 2,
        inference: Mapping[str, Any] | None = None,
        image_dir: str | Path | None = None,
    ) -> None:
        super().__init__()
        self.net = net
        self.scale = scale
        self.log_images = log_images
        self.val_set_names = list(val_set_names)
        self.test_set_names = list(test_set_names)
        self.inference = inference_options(inference)
        self.image_dir = Path(image_dir) if image_dir is not None else None
        self.val_metrics = nn.ModuleList([_set_metrics(scale) for _ in self.val_set_names])
        self.test_metrics = nn.ModuleList([_set_metrics(scale) for _ in self.test_set_names])
        #: per set, the names of the images this rank scored in the epoch, by index
        self._names: dict[str, dict[int, str]] = {}
        #: per set of the last validation/test epoch, (index, name, PSNR, SSIM) of every
        #: image scored (all ranks, each image once), in index order
        self.image_scores: dict[str, list[tuple[int, str, float, float]]] = {}
        #: per set, the images the last validation/test epoch scored (all ranks), in order
        self.scored_images: dict[str, list[str]] = {}
        self._crops: list[tuple[str, str, list[np.ndarray]]] = []
        self.channels_last = channels_last
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)

    def predict_fp32(self, lr: torch.Tensor) -> torch.Tensor:
        """The SR image of ``lr`` for scoring: the eager ``net``, float32 throughout.

        Whatever the trainer's precision, the checkpoint is chosen on (and tested with)
        what the weights give in float32: autocast, which Lightning's *-mixed plugins wrap
        around validation_step and test_step, is off here, and weights held in a lower
        precision (``bf16-true``, ``16-true``) are cast up to float32 for the pass (the
        network keeps them; the values are the trained ones, exactly). The compiled
        forward is never used: validation images come in many sizes and in eval mode,
        each a recompile, and scoring eagerly keeps the numbers independent of the
        compiler.
        """
        with full_precision(lr.device.type):
            return ScoringNet(self.net, self.channels_last)(lr)

    def predict(self, lr: torch.Tensor) -> torch.Tensor:
        """The SR image of ``lr`` as the test step makes it: ``hdsr.inference.forward.upscale``
        (what ``hdsr-upscale`` runs) with the module's ``inference`` options, on
        :class:`ScoringNet` (float32 weights; autocast only as ``precision`` asks, not
        as the trainer's precision plugin does). With the default options it is
        :meth:`predict_fp32`'s image, to the bit. float32 ``(1, 3, sH, sW)`` on ``lr``'s
        device.
        """
        opts = self.inference
        with full_precision(lr.device.type):
            return upscale(
                ScoringNet(self.net, self.channels_last),
                lr,
                self.scale,
                tile=opts["tile"],
                overlap=opts["tile_overlap"],
                max_memory=opts["max_memory"],
                self_ensemble=opts["self_ensemble"],
                device=lr.device,
                precision=opts["precision"],
            )

    def on_validation_epoch_start(self) -> None:
        self._start_scoring(self.val_set_names, self.val_metrics)
        self._crops = []

    def on_test_epoch_start(self) -> None:
        self._start_scoring(self.test_set_names, self.test_metrics)

    def _start_scoring(self, set_names: Sequence[str], metrics: nn.ModuleList) -> None:
        for m in metrics:
            m["psnr_y"].reset()
            m["ssim_y"].reset()
        self._names = {name: {} for name in set_names}

    def _score(self, batch: dict, set_name: str, metrics: nn.ModuleDict, sr: torch.Tensor):
        """Paper protocol on one whole image: uint8 SR, Y channel, shave ``scale`` pixels;
        the set's metrics keep the scores under the image's index. Returns the uint8 SR
        image (gray when the HR is) and the index."""
        hr = batch["hr"].cpu().numpy()
        sr_u8 = sr_like_hr(to_uint8_image(sr).numpy(), hr)
        index = int(batch["index"])
        metrics["psnr_y"].update(sr_u8, hr, index)
        metrics["ssim_y"].update(sr_u8, hr, index)
        self._names.setdefault(set_name, {})[index] = str(batch.get("name", ""))
        return sr_u8, index

    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        name = self.val_set_names[dataloader_idx]
        metrics = self.val_metrics[dataloader_idx]
        sr, _ = self._score(batch, name, metrics, self.predict_fp32(batch["lr"]))
        if batch_idx < self.log_images and self._image_loggers():
            self._keep_crops(name, batch, sr)

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        name = self.test_set_names[dataloader_idx]
        metrics = self.test_metrics[dataloader_idx]
        try:
            out = self.predict(batch["lr"])
        except NonFiniteOutput as err:  # never scored: name the image
            raise NonFiniteOutput(f"{name}/{batch.get('name', batch_idx)}: {err}") from None
        sr, index = self._score(batch, name, metrics, out)
        if self.image_dir is not None and self._first_to_score(index):
            write_png(self.image_dir / name / f"{batch['name']}_x{self.scale}.png", sr)

    def _first_to_score(self, index: int) -> bool:
        """Whether this rank holds ``index`` in its own shard (``ShardSampler``), not as a
        repeat padded in by wrapping: each image is written once, by the rank whose score
        is kept (the lowest that scored it)."""
        trainer = self._trainer
        if trainer is None or trainer.world_size == 1:
            return True
        return ShardSampler.owner(index, trainer.world_size) == trainer.global_rank

    def _image_loggers(self) -> list:
        return [lg for lg in self.loggers if hasattr(lg, "log_image")]

    def _keep_crops(self, set_name: str, batch: dict, sr: np.ndarray) -> None:
        """SR, bicubic and HR crops (the HR centre, 96 px at most) of one image."""
        hr = batch["hr"].cpu().numpy()
        lr = to_uint8_image(batch["lr"]).numpy()
        bicubic = bicubic_sr(lr, hr, self.scale)
        size = 96
        crops = [center_crop(x, size) for x in (sr, bicubic, hr)]
        self._crops.append((set_name, str(batch.get("name", "")), crops))

    def _image_names(self, stage: str, k: int, set_name: str) -> dict[int, str]:
        """Index -> name of the images of set ``k``: from its loader's dataset when it
        holds the pairs (``WholeImages``: every rank has the whole set), else the names
        this rank saw."""
        names = dict(self._names.get(set_name, {}))
        trainer = self._trainer
        loaders = None
        if trainer is not None:
            loaders = trainer.val_dataloaders if stage == "val" else trainer.test_dataloaders
        if loaders is not None and not isinstance(loaders, (list, tuple)):
            loaders = [loaders]
        pairs = getattr(getattr(loaders[k], "dataset", None), "pairs", None) if loaders else None
        if pairs is not None:
            names.update((i, str(p.name)) for i, p in enumerate(pairs))
        return names

    def _log_scores(self, stage: str, set_names: Sequence[str], metrics: nn.ModuleList) -> None:
        """Log each set's mean scores over its distinct images (``PSNRY``/``SSIMY``,
        gathered from every rank) as ``<stage>/psnr_y/<set>`` and ``<stage>/ssim_y/<set>``;
        keep the per-image scores in ``image_scores`` and the names in ``scored_images``.

        Every rank runs this (the metrics synchronise), and logs the same values.
        """
        self.image_scores, self.scored_images = {}, {}
        for k, (name, m) in enumerate(zip(set_names, metrics, strict=True)):
            per_psnr, per_ssim = m["psnr_y"].per_image(), m["ssim_y"].per_image()
            names = self._image_names(stage, k, name)
            self.image_scores[name] = [
                (i, names.get(i, ""), p, s)
                for (i, p), (_, s) in zip(per_psnr, per_ssim, strict=True)
            ]
            self.scored_images[name] = [s[1] for s in self.image_scores[name]]
            if not per_psnr:  # no image scored on any rank
                continue
            psnr, ssim = float(m["psnr_y"].compute()), float(m["ssim_y"].compute())
            bar = stage == "val"
            self.log(f"{stage}/psnr_y/{name}", psnr, prog_bar=bar, **SYNCED)
            self.log(f"{stage}/ssim_y/{name}", ssim, **SYNCED)
        for m in metrics:
            m["psnr_y"].reset()
            m["ssim_y"].reset()

    def on_validation_epoch_end(self) -> None:
        self._log_scores("val", self.val_set_names, self.val_metrics)
        if self._crops and not self.trainer.sanity_checking:
            for logger in self._image_loggers():
                for set_name, image, crops in self._crops:
                    logger.log_image(
                        key=f"val/images/{set_name}/{image}",
                        images=crops,
                        caption=["SR", "bicubic", "HR"],
                        step=self.global_step,
                    )
        self._crops = []

    def on_test_epoch_end(self) -> None:
        self._log_scores("test", self.test_set_names, self.test_metrics)
