"""Paper-protocol scores of models and of the bicubic baseline on sets of images."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import RichProgressBar

from hdsr.data.datamodule import WholeImageSets
from hdsr.data.pairs import ImagePair
from hdsr.devices import build_trainer, exact_float32, restoring_tf32
from hdsr.errors import ConfigError
from hdsr.evaluation.module import EvaluationModule
from hdsr.evaluation.names import run_label


def distinct_names(models: Sequence[Any]) -> None:
    """Give models of one scale that share a name (two runs of one variant) names that tell
    them apart: ``<name> (<run>)``, or ``<name> (<path>)`` where runs collide too.

    Each model is its own row; without this their images would be averaged together.
    Raises ``ConfigError`` when one file is given twice.
    """
    seen: dict[Path, str] = {}
    for m in models:
        if m.source == "-":
            continue
        key = Path(m.source).resolve()
        if key in seen:
            raise ConfigError(f"ckpt: {m.source} is given twice (also as {seen[key]})")
        seen[key] = m.source
    base = {id(m): m.name for m in models}
    for label in (run_label, str):
        groups: dict[tuple[str, int], list[Any]] = {}
        for m in models:
            groups.setdefault((m.name, m.scale), []).append(m)
        clashes = [m for g in groups.values() if len(g) > 1 for m in g if m.source != "-"]
        if not clashes:
            return
        for m in clashes:
            m.name = f"{base[id(m)]} ({label(m.source)})"


def precision_mode(precision: str) -> contextlib.AbstractContextManager:
    """The numeric mode the models run in: ``precision=32`` is true float32, TF32 off for
    CUDA matmuls and convolutions (``hdsr.devices.exact_float32``; restored afterwards),
    so paper-protocol numbers do not depend on the card. "bf16"/"16" autocast as asked."""
    if str(precision) == "32":
        return exact_float32()
    return contextlib.nullcontext()


#: per set, ``(index, name, PSNR, SSIM)`` of each image, in the set's order
ImageScores = dict[str, list[tuple[int, str, float, float]]]


def score_sets(
    net: Any,
    scale: int,
    sets: Mapping[str, Sequence[ImagePair]],
    trainer_config: Mapping[str, Any],
    *,
    inference: Mapping[str, Any] | None = None,
    image_dir: Path | None = None,
    label: str = "",
) -> tuple[ImageScores, bool]:
    """Score ``net`` on ``sets`` the way validation does: ``Trainer.test`` of an
    ``SRModule`` holding it, whose test step runs ``hdsr.inference.forward.upscale`` with the
    ``inference`` options (``tile``, ``tile_overlap``, ``self_ensemble``, ``precision``)
    and keeps each image's PSNR/SSIM in its set's ``PSNRY``/``SSIMY``.

    ``trainer_config`` holds the Trainer's arguments as the ``trainer`` config group gives
    them (accelerator, devices, a strategy string or ``_target_`` config: see
    ``hdsr.devices.build_trainer``; TF32 is left as it is, ``precision_mode`` decides
    it): with several devices every rank scores its share of each set, torchmetrics
    gathers the scores and every rank gets them all, each image once. No logger, no
    checkpoints; the network is back on the CPU afterwards. With ``image_dir`` each SR
    image is written to ``<image_dir>/<set>/<name>_x<scale>.png``. ``label`` names the
    progress bar.

    Returns the per-image scores per set and whether this process is global rank 0.
    """
    bar = trainer_config.get("enable_progress_bar", True)

    module = EvaluationModule(
        net,
        scale=scale,
        val_set_names=(),
        test_set_names=list(sets),
        inference=inference,
        image_dir=image_dir,
    )
    with restoring_tf32():  # not the training rule (TF32 on for CUDA)
        trainer = build_trainer(  # a strategy object of its own
            trainer_config,
            logger=False,
            enable_checkpointing=False,
            enable_model_summary=False,
            callbacks=[progress_bar(label)] if bar else [],
            use_distributed_sampler=False,  # WholeImageSets shards the images itself
        )
    trainer.test(module, datamodule=WholeImageSets(sets), verbose=False)
    return module.image_scores, trainer.is_global_zero


def progress_bar(label: str) -> Any:
    """A rich progress bar for one model: ``label`` and this rank's images of all the
    sets, one bar left on screen when done (as ``rich.progress.track`` showed it)."""
    class ScoringProgressBar(RichProgressBar):
        def __init__(self) -> None:
            super().__init__(leave=True)
            self.done = 0

        def on_test_batch_start(self, trainer: Any, *args: Any, **kwargs: Any) -> None:
            if self.is_disabled or self.test_progress_bar_id is not None:
                return
            total = sum(trainer.num_test_batches)  # every set's batches (images)
            self.test_progress_bar_id = self._add_task(total, label)
            self.refresh()

        def on_test_batch_end(self, *args: Any, **kwargs: Any) -> None:
            if self.is_disabled or self.test_progress_bar_id is None:
                return
            self.done += 1
            self._update(self.test_progress_bar_id, self.done)

    return ScoringProgressBar()









