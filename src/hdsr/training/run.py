"""A training run, built from the ``hdsr-train`` config: the LightningModule (``model``),
the callbacks (``callbacks``), the loggers and the Trainer; the fit with its stop and
requeue handling; the final scores beside bicubic. :func:`train` orchestrates them (what
``hdsr-train`` runs for each job); :func:`prepare` builds the data caches only.
"""

from __future__ import annotations

import errno
import signal
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor, ModelSummary, ProgressBar
from lightning.pytorch.plugins.environments import SLURMEnvironment
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from hdsr.console import one_line_each
from hdsr.devices import build_trainer as build_trainer_from
from hdsr.devices import check_rendezvous
from hdsr.errors import OutputWriteError, StoppedRun, write_failed
from hdsr.evaluation.bicubic import bicubic_per_image, set_means
from hdsr.evaluation.tables import final_rows, final_table, image_rows
from hdsr.runtime import apply_runtime_config, single_job_argv, wandb_mode
from hdsr.training.callbacks import (
    GracefulStop,
    slurm_requeueing,
    under_submitit,
)
from hdsr.training.checkpoint_files import (
    AtomicCheckpointIO,
    move_previous_checkpoints,
    remove_stale_temp_files,
)
from hdsr.training.config import check_config, resolve_resume, sweep_group, upgrade_targets
from hdsr.training.loggers import (
    build_loggers,
    finish_wandb,
    log_checkpoints,
    log_final_table,
    log_image_table,
    wandb_logger,
)

#: the errors of a write that found no room (full disk, quota) or a read-only file system
FULL_DISK = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG)


def build_module(cfg: DictConfig, datamodule: Any) -> Any:
    """The LightningModule of ``cfg.model`` (``SRModule``): its network, the optimizer
    and scheduler partials, and the data's set names; the network's config is kept for
    its checkpoints."""
    make = instantiate(cfg.model, _partial_=True)
    return make(
        val_set_names=datamodule.val_set_names,
        test_set_names=datamodule.test_set_names,
        net_config=OmegaConf.to_container(cfg.model.net, resolve=True),
    )


def build_callbacks(
    cfg: DictConfig, has_logger: bool, progress_bar: bool, model_summary: bool = True
) -> list[Any]:
    """The callbacks of ``cfg.callbacks``, in order, each built by ``instantiate``.

    Left out: an entry that is null; one whose ``every_n_train_steps`` is null or 0
    (``checkpoint.every_n_train_steps=null``: last.ckpt per epoch only); the EMA while
    ``ema.decay`` is null; the learning
    rate monitor without a logger and progress bars when the Trainer shows none (both of
    which Lightning refuses); the model summary with ``trainer.enable_model_summary=false``.
    """
    callbacks = []
    for spec in (cfg.get("callbacks") or {}).values():
        if spec is None or ("every_n_train_steps" in spec and not spec.every_n_train_steps):
            continue
        if spec.get("_target_") == "hdsr.training.ema.EMA" and spec.get("decay") is None:
            continue  # EMA off
        callback = instantiate(spec)
        if isinstance(callback, LearningRateMonitor) and not has_logger:
            continue
        if isinstance(callback, ProgressBar) and not progress_bar:
            continue
        if isinstance(callback, ModelSummary) and not model_summary:
            continue
        callbacks.append(callback)
    return callbacks


def checkpoint_plugins() -> list[Any]:
    """Checkpoints are written atomically in place (``AtomicCheckpointIO``). SLURM:
    Lightning's own requeue is off; GracefulStop saves and requeues instead."""
    plugins: list[Any] = [AtomicCheckpointIO()]
    if SLURMEnvironment.detect():
        plugins.append(SLURMEnvironment(auto_requeue=False))
    return plugins


def build_trainer(cfg: DictConfig, run_dir: Path, loggers: list[Any]) -> Any:
    """The Lightning Trainer of ``cfg.trainer`` (its ``_target_``) with the run's loggers,
    the callbacks of ``cfg.callbacks`` and the checkpoint plugins."""
    # the strategy: DDPStrategy built from its config node; TF32 allowed when training on CUDA
    bar = cfg.trainer.get("enable_progress_bar", True)
    summary = cfg.trainer.get("enable_model_summary", True)
    callbacks = build_callbacks(cfg, bool(loggers), bar, summary)
    return build_trainer_from(
        cfg.trainer,
        default_root_dir=str(run_dir),
        logger=loggers or False,
        callbacks=callbacks,
        plugins=checkpoint_plugins(),
        use_distributed_sampler=False,  # the DataModule shards patches and images itself
        # the config's summary is in callbacks (or none is wanted): Lightning adds no
        # default one, and does not log that it skipped it
        enable_model_summary=False,
    )


def graceful_stop(trainer: Any) -> Any | None:
    """The trainer's ``GracefulStop`` callback (None if the config left it out)."""
    return next((c for c in trainer.callbacks if isinstance(c, GracefulStop)), None)


def val_metrics(trainer: Any) -> dict[str, float]:
    return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}


def fit(trainer: Any, module: Any, datamodule: Any, ckpt_path: str | None) -> dict[str, float]:
    """Fit (resuming from ``ckpt_path``, read weights-only: a checkpoint is data, never
    code to run), then return the last validation's metrics (validating once more when
    a finished run was resumed and nothing was validated).

    Raises SystemExit 128 + signal when a stop signal ended the run (``after_stop``
    then has the job requeued under SLURM), and 130 after a second Ctrl-C.
    """
    stop = graceful_stop(trainer)
    env = getattr(trainer.strategy, "cluster_environment", None)
    if trainer.world_size > 1 and env is not None and env.creates_processes_externally:
        # ranks started by SLURM or torchrun meet at MASTER_ADDR: say so if they cannot
        check_rendezvous(env.main_address, env.main_port, trainer.global_rank)
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
            raise SystemExit(stop.exit_code)
    metrics = val_metrics(trainer)
    if not metrics:  # resumed a finished run: nothing was validated this time
        trainer.validate(module, datamodule=datamodule, verbose=False)
        metrics = val_metrics(trainer)
    return metrics


def after_stop(trainer: Any) -> None:
    """Once a stop signal ended the run and its ``last.ckpt`` is written: under SLURM,
    have the job requeued after a pre-timeout signal (``GracefulStop.requeue_if_slurm``:
    submitit's handler or ``scontrol requeue``, which may end this process); in a
    submitit job that SLURM will not run again (``scancel``, a time limit reached
    without its pre-timeout signal), raise ``StoppedRun``: an error, not an exit, makes
    submitit write the job's result, so the sweep waiting for it hears of the stop at
    once (on a cluster without accounting it would wait forever)."""
    stop = graceful_stop(trainer)
    if stop is None or stop.exit_code is None:
        return
    stop.requeue_if_slurm(trainer.is_global_zero)
    if under_submitit() and not stop.asks_requeue and not slurm_requeueing():
        raise StoppedRun(
            f"stopped by {signal.Signals(stop.received).name} at step "
            f"{trainer.global_step}: {stop.ckpt_path} written; the same command resumes "
            "the run"
        ) from None


def own_checkpoint(path: str, run_dir: Path) -> str:
    """``path`` if it lies in ``run_dir``, else "": a run started with ``ckpt_path=``
    another run's checkpoint restores that run's ModelCheckpoint state, its best path
    included, until this run saves a best of its own."""
    if not path:
        return ""
    return path if run_dir.resolve() in Path(path).resolve().parents else ""


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
        "best_checkpoint": own_checkpoint(getattr(ckpt, "best_model_path", ""), run_dir),
        "csv_dir": csv_dir,
        "wandb_dir": getattr(wandb_run, "dir", None),
        "wandb_offline": wandb_run is not None
        and wandb_mode(cfg.logger.wandb.get("mode")) == "offline",
    }
    final_table(cfg, result)
    return result


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train and validate as ``cfg`` says; return the final metrics and output paths."""
    upgrade_targets(cfg)  # a config written by an earlier version names old module paths
    check_config(cfg)
    apply_runtime_config(cfg)
    one_line_each()  # Lightning's log lines once (Hydra's console and log file), no tips
    run_dir = Path(cfg.paths.run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    rank_zero = rank_zero_only.rank == 0
    ckpt_dir = run_dir / "checkpoints"
    if rank_zero:
        remove_stale_temp_files(ckpt_dir)
    ckpt_path = resolve_resume(cfg, run_dir, announce=rank_zero)
    if ckpt_path is None and rank_zero:  # a fresh start keeps the old checkpoints aside
        move_previous_checkpoints(ckpt_dir)
    L.seed_everything(cfg.seed, workers=True)

    datamodule = instantiate(cfg.data, _convert_="all")
    module = build_module(cfg, datamodule)  # net, optimizer and scheduler
    resuming, group = ckpt_path is not None, sweep_group(cfg)
    loggers = build_loggers(
        cfg, run_dir, resuming, group, rank_zero=rank_zero, val_sets=datamodule.val_set_names
    )
    trainer = build_trainer(cfg, run_dir, loggers)  # with cfg.callbacks
    if ckpt_path and trainer.is_global_zero:
        print(f"resuming from {ckpt_path}")
    exit_code = 1
    try:
        with single_job_argv():
            metrics = fit(trainer, module, datamodule, ckpt_path)
        result = {"metrics": metrics}
        if trainer.is_global_zero:  # bicubic beside the model, the final table
            result = report(cfg, trainer, module, datamodule, loggers, metrics)
        exit_code = 0
        return result
    except OSError as err:  # a file of the run (metrics.csv, ...) on a full disk
        if isinstance(err, OutputWriteError) or err.errno not in FULL_DISK:
            raise
        raise write_failed(err.filename or run_dir, err) from None
    except SystemExit as stopped:  # a stop signal (128 + signal) or a second Ctrl-C (130)
        exit_code = stopped.code if isinstance(stopped.code, int) else 1
        # W&B first: a requeue stops every process of the job, W&B's service among them
        finish_wandb(loggers, exit_code=exit_code)
        after_stop(trainer)
        raise
    finally:
        stop = graceful_stop(trainer)
        if stop is not None:
            stop.restore_handlers()
        finish_wandb(loggers, exit_code=exit_code)


def prepare(cfg: DictConfig) -> None:
    """Build the data caches the config needs (decoded images, generated LR), then stop."""
    upgrade_targets(cfg)
    check_config(cfg)
    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.prepare_data()
    datamodule.setup("fit")
    n = len(datamodule.train_set.pairs)
    sets = ", ".join(f"{k} ({len(v)})" for k, v in datamodule.val_pairs.items())
    print(f"ready: {n} training images at x{cfg.data.scale}; validation sets: {sets}")
