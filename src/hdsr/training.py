"""The parts of a training run, built from the ``hdsr-train`` config: the LightningModule
(``model``), the callbacks (``callbacks``), the Trainer; the fit with its stop and requeue
handling; the final scores beside bicubic. ``hdsr.cli.train.train`` orchestrates them.

Lightning is imported inside the functions, so importing this module (which registers
the ``hdsr_first_set`` resolver the callbacks config uses) stays quick.
"""

from __future__ import annotations

import signal
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf


def first_set(sets: Any) -> str:
    """The first validation set's name (``data.val_sets``: a mapping of sources, a list
    of benchmark names or one name): the set ``best.ckpt`` is chosen on."""
    if isinstance(sets, Mapping):
        sets = list(sets)
    elif isinstance(sets, str):
        sets = [sets]
    return str(next(iter(sets), ""))


if not OmegaConf.has_resolver("hdsr_first_set"):
    OmegaConf.register_new_resolver("hdsr_first_set", first_set)


def build_module(cfg: DictConfig, datamodule: Any) -> Any:
    """The LightningModule of ``cfg.model`` (``SRModule``): its network, the optimizer
    and scheduler partials, and the data's set names; the network's config is kept for
    its checkpoints."""
    from hydra.utils import instantiate

    make = instantiate(cfg.model, _partial_=True)
    return make(
        val_set_names=datamodule.val_set_names,
        test_set_names=datamodule.test_set_names,
        net_config=OmegaConf.to_container(cfg.model.net, resolve=True),
    )


def build_callbacks(cfg: DictConfig, has_logger: bool, progress_bar: bool) -> list[Any]:
    """The callbacks of ``cfg.callbacks``, in order, each built by ``instantiate``.

    Left out: an entry that is null; one whose ``every_n_train_steps`` is null or 0
    (``checkpoint.every_n_train_steps=null``: last.ckpt per epoch only); the EMA while
    ``ema.decay`` is null; the learning
    rate monitor without a logger and progress bars when the Trainer shows none (both of
    which Lightning refuses).
    """
    from hydra.utils import instantiate
    from lightning.pytorch.callbacks import LearningRateMonitor, ProgressBar

    callbacks = []
    for spec in (cfg.get("callbacks") or {}).values():
        if spec is None or ("every_n_train_steps" in spec and not spec.every_n_train_steps):
            continue
        if spec.get("_target_") == "hdsr.ema.EMA" and spec.get("decay") is None:
            continue  # EMA off
        callback = instantiate(spec)
        if isinstance(callback, LearningRateMonitor) and not has_logger:
            continue
        if isinstance(callback, ProgressBar) and not progress_bar:
            continue
        callbacks.append(callback)
    return callbacks


def checkpoint_plugins() -> list[Any]:
    """Checkpoints are written atomically in place (``AtomicCheckpointIO``). SLURM:
    Lightning's own requeue is off; GracefulStop saves and requeues instead."""
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    from hdsr.ckpt_files import AtomicCheckpointIO

    plugins: list[Any] = [AtomicCheckpointIO()]
    if SLURMEnvironment.detect():
        plugins.append(SLURMEnvironment(auto_requeue=False))
    return plugins


def build_trainer(cfg: DictConfig, run_dir: Path, loggers: list[Any]) -> Any:
    """The Lightning Trainer of ``cfg.trainer`` with the run's loggers, the callbacks of
    ``cfg.callbacks`` and the checkpoint plugins."""
    import lightning as L

    from hdsr.backends import trainer_kwargs

    # strategy: DDPStrategy built from its config node; TF32 allowed when training on CUDA
    kwargs = trainer_kwargs(cfg.trainer)
    callbacks = build_callbacks(cfg, bool(loggers), kwargs.get("enable_progress_bar", True))
    return L.Trainer(
        **kwargs,
        default_root_dir=str(run_dir),
        logger=loggers or False,
        callbacks=callbacks,
        plugins=checkpoint_plugins(),
        use_distributed_sampler=False,  # the DataModule shards patches and images itself
    )


def graceful_stop(trainer: Any) -> Any | None:
    """The trainer's ``GracefulStop`` callback (None if the config left it out)."""
    from hdsr.callbacks import GracefulStop

    return next((c for c in trainer.callbacks if isinstance(c, GracefulStop)), None)


def val_metrics(trainer: Any) -> dict[str, float]:
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}


def fit(trainer: Any, module: Any, datamodule: Any, ckpt_path: str | None) -> dict[str, float]:
    """Fit (resuming from ``ckpt_path``, read weights-only: a checkpoint is data, never
    code to run), then return the last validation's metrics (validating once more when
    a finished run was resumed and nothing was validated).

    Raises SystemExit 128 + signal when a stop signal ended the run (after requeueing
    the job under SLURM), and 130 after a second Ctrl-C.
    """
    stop = graceful_stop(trainer)
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    except SystemExit:
        # Lightning ends a KeyboardInterrupt (a second Ctrl-C) with exit status 1
        if stop is not None and stop.interrupted:
            raise SystemExit(128 + int(signal.SIGINT)) from None
        raise
    if stop is not None:
        stop.restore_handlers()
        if stop.exit_code is not None:
            stop.requeue_if_slurm(trainer.is_global_zero)
            raise SystemExit(stop.exit_code)
    metrics = val_metrics(trainer)
    if not metrics:  # resumed a finished run: nothing was validated this time
        trainer.validate(module, datamodule=datamodule, verbose=False)
        metrics = val_metrics(trainer)
    return metrics


def final_rows(
    model_name: str, metrics: dict[str, float], bicubic: dict[str, tuple[float, float]]
) -> list[dict[str, Any]]:
    """Rows (method, set, psnr_y, ssim_y) of the final table, model then bicubic."""
    rows = []
    for name, (b_psnr, b_ssim) in bicubic.items():
        rows.append(
            {
                "method": model_name,
                "set": name,
                "psnr_y": metrics.get(f"val/psnr_y/{name}", float("nan")),
                "ssim_y": metrics.get(f"val/ssim_y/{name}", float("nan")),
            }
        )
        rows.append({"method": "bicubic", "set": name, "psnr_y": b_psnr, "ssim_y": b_ssim})
    return rows


def image_rows(
    image_scores: Mapping[str, Sequence[tuple[int, str, float, float]]],
    bicubic: Mapping[str, Mapping[str, tuple[float, float]]],
) -> list[dict[str, Any]]:
    """Rows of the per-image table: set, image, the model's PSNR/SSIM (``SRModule``'s
    ``image_scores`` of the final validation), bicubic's PSNR of the image and the gain
    over it (``delta_psnr_y`` = psnr_y - bicubic_psnr_y), set by set, images in order."""
    rows = []
    for set_name, images in image_scores.items():
        for _, image, psnr, ssim in images:
            b_psnr = bicubic.get(set_name, {}).get(image, (float("nan"),))[0]
            rows.append(
                {
                    "set": set_name,
                    "image": image,
                    "psnr_y": psnr,
                    "ssim_y": ssim,
                    "bicubic_psnr_y": b_psnr,
                    "delta_psnr_y": psnr - b_psnr,
                }
            )
    return rows


def report(
    cfg: DictConfig,
    trainer: Any,
    module: Any,
    datamodule: Any,
    loggers: Sequence[Any],
    metrics: dict[str, float],
) -> dict[str, Any]:
    """Score bicubic on the images the model was scored on (``trainer.limit_val_batches``),
    log it, the final table and the per-image table (and, with ``logger.wandb.log_model``,
    upload best.ckpt and last.ckpt to W&B), print the table and the run's files; return
    them."""
    from hdsr.loggers import (
        log_checkpoints,
        log_final_table,
        log_image_table,
        wandb_logger,
        wandb_mode,
    )
    from hdsr.results import final_table
    from hdsr.scoring import bicubic_per_image, set_means

    run_dir = Path(cfg.paths.run_dir).resolve()
    scored = {n: set(names) for n, names in module.scored_images.items()}
    val_pairs = {
        n: [p for p in pairs if p.name in scored.get(n, ())]
        for n, pairs in datamodule.val_pairs.items()
    }
    bicubic_images = bicubic_per_image({n: p for n, p in val_pairs.items() if p}, cfg.data.scale)
    bicubic = set_means(bicubic_images)
    bicubic_log = {}
    for name, (psnr, ssim) in bicubic.items():
        bicubic_log[f"bicubic/psnr_y/{name}"] = psnr
        bicubic_log[f"bicubic/ssim_y/{name}"] = ssim
    for logger in loggers:
        logger.log_metrics(bicubic_log, step=trainer.global_step)
        logger.save()  # the CSV logger writes buffered rows only on save
    log_final_table(list(loggers), final_rows(cfg.model.name, metrics, bicubic))
    log_image_table(list(loggers), image_rows(module.image_scores, bicubic_images))
    if cfg.logger.get("wandb", {}).get("log_model", False):
        log_checkpoints(list(loggers), trainer.callbacks, str(cfg.model.name), cfg.data.scale)
    wb = wandb_logger(list(loggers))
    wandb_run = wb.experiment if wb is not None else None
    csv_dir = next((lg.log_dir for lg in loggers if type(lg).__name__ == "CSVLogger"), None)
    ckpt = trainer.checkpoint_callback  # the first ModelCheckpoint: best.ckpt's
    result = {
        "metrics": metrics,
        "bicubic": bicubic,
        "images": {n: (len(val_pairs[n]), len(datamodule.val_pairs[n])) for n in bicubic},
        "run_dir": str(run_dir),
        "checkpoint": getattr(ckpt, "last_model_path", "")
        or str(run_dir / "checkpoints" / "last.ckpt"),
        "best_checkpoint": getattr(ckpt, "best_model_path", ""),
        "csv_dir": csv_dir,
        "wandb_dir": getattr(wandb_run, "dir", None),
        "wandb_offline": wandb_run is not None
        and wandb_mode(cfg.logger.wandb.get("mode")) == "offline",
    }
    final_table(cfg, result)
    return result
