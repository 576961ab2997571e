"""``hdsr-train``: the Hydra task that trains and validates one model.

The heavy imports (Lightning, W&B) happen inside the task, so ``--help`` stays quick.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from hdsr.imaging import SCALES
from hdsr.loggers import ConfigError
from hdsr.training import checkpoint_plugins as _plugins  # noqa: F401 - tests import it here

CONFIG_MODULE = "hdsr.conf"


def _job_dir(run_name: str, overrides: str) -> str:
    """A multirun job's directory: run_name, then the swept keys not already in it."""
    return f"{run_name},{overrides}" if overrides else run_name


if not OmegaConf.has_resolver("hdsr_job_dir"):
    OmegaConf.register_new_resolver("hdsr_job_dir", _job_dir)


def check_config(cfg: DictConfig) -> None:
    """Reject values that would fail late or silently, naming the offending key."""
    from hdsr.cli.overrides import renamed_key_message

    if cfg.get("optim") is not None:  # e.g. an experiment file written for hdsr 0.1
        keys = [f"optim.{k}" for k in cfg.optim] if isinstance(cfg.optim, DictConfig) else []
        raise ConfigError(renamed_key_message(keys[0] if keys else "optim"))
    scale = cfg.data.get("scale")
    if isinstance(scale, bool) or scale not in SCALES:
        raise ConfigError(f"data.scale must be one of {list(SCALES)}, got {scale!r}")
    target = str(cfg.model.net.get("_target_", ""))
    if target.endswith("BicubicUpsampler"):
        raise ConfigError(
            "model=bicubic has no parameters to train; evaluate it with hdsr-eval model=bicubic"
        )
    for key in ("patch_size", "batch_size", "patches_per_epoch"):
        value = cfg.data.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"data.{key} must be a positive integer, got {value!r}")
    from hdsr.ema import check_ema

    try:
        check_ema(
            OmegaConf.select(cfg, "ema.decay"), OmegaConf.select(cfg, "ema.start_step", default=0)
        )
    except ValueError as err:
        raise ConfigError(str(err)) from None
    every = OmegaConf.select(cfg, "stop.check_every_n_steps", default=10)
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ConfigError(f"stop.check_every_n_steps must be a positive integer, got {every!r}")
    if cfg.data.get("patch_size"):
        from hdsr.data.datasets import lr_patch_size

        try:
            lr_patch_size(cfg.data.patch_size, scale)
        except ValueError:
            least = min(p for p in range(1, scale + 1) if round(p / scale) >= 1)
            raise ConfigError(
                f"data.patch_size={cfg.data.patch_size} (the HR patch) is too small for "
                f"data.scale={scale}: it must be at least {least} so that the LR patch "
                "has a pixel"
            ) from None
    if cfg.data.get("batch_size") and cfg.data.get("patches_per_epoch"):
        if cfg.data.patches_per_epoch < cfg.data.batch_size:
            raise ConfigError(
                f"data.patches_per_epoch={cfg.data.patches_per_epoch} is smaller than "
                f"data.batch_size={cfg.data.batch_size}: an epoch would have no step"
            )


def resolve_resume(cfg: DictConfig, run_dir: Path, announce: bool = True) -> str | None:
    """Checkpoint to resume from: ``ckpt_path`` if given, else the run's ``last.ckpt``
    when ``resume`` is true and it exists, else None (a fresh start).

    An unreadable ``last.ckpt`` (torn, truncated, not a checkpoint) is named in a warning
    and the newest readable checkpoint of the run's folder is used instead, if any (see
    ``hdsr.ckpt_files.resume_checkpoint``; ``announce``: log those warnings). The chosen
    file is read weights-only and must hold the config's model, scale and network;
    otherwise ConfigError names the file and what it holds.
    """
    from hdsr.ckpt_files import (
        UnreadableCheckpoint,
        check_matches,
        read_checkpoint,
        resume_checkpoint,
    )

    if cfg.get("ckpt_path"):
        path = Path(str(cfg.ckpt_path)).expanduser()
        if path.is_dir():
            raise ConfigError(f"ckpt_path={cfg.ckpt_path} is a directory, not a checkpoint file")
        if not path.is_file():
            raise ConfigError(f"ckpt_path={cfg.ckpt_path}: no such checkpoint file")
        try:
            found = (path, read_checkpoint(path))
        except UnreadableCheckpoint as err:
            raise ConfigError(
                f"ckpt_path={cfg.ckpt_path}: {path} is not a readable checkpoint: {err}"
            ) from None
    elif cfg.get("resume", True):
        found = resume_checkpoint(run_dir / "checkpoints", announce=announce)
    else:
        found = None
    if found is None:
        return None
    path, ckpt = found
    net = OmegaConf.to_container(cfg.model.net, resolve=True)
    check_matches(ckpt, path, cfg.data.scale, str(cfg.model.name), net)
    return str(path.resolve()) if cfg.get("ckpt_path") else str(path)


def sweep_group(cfg: DictConfig) -> str | None:
    """The W&B group of a multirun job: its sweep's name (None for a single run)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return str(cfg.sweep_name)
    return None


@contextlib.contextmanager
def single_job_argv() -> Iterator[None]:
    """Make ``sys.argv`` this job's own single-run command while the job trains.

    Lightning's DDP launcher starts ranks > 0 by re-running ``sys.argv``; under ``-m``
    that is the whole sweep. With the job's own overrides each rank runs this job once.
    Environment variables the launcher sets (MASTER_PORT, ...) are undone afterwards so
    the next job of a sweep starts its own process group.
    """
    from hydra.core.hydra_config import HydraConfig

    saved_argv, saved_env = list(sys.argv), dict(os.environ)
    if HydraConfig.initialized():
        hc = HydraConfig.get()
        sys.argv = [sys.argv[0], *hc.overrides.task]
    try:
        yield
    finally:
        sys.argv = saved_argv
        for key in ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE"):
            if key in saved_env:
                os.environ[key] = saved_env[key]
            else:
                os.environ.pop(key, None)
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train and validate as ``cfg`` says; return the final metrics and output paths."""
    check_config(cfg)
    from hdsr.runtime import apply_runtime_config

    apply_runtime_config(cfg)
    import lightning as L
    from hydra.utils import instantiate
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    from hdsr import training
    from hdsr.ckpt_files import move_previous_checkpoints, remove_stale_temp_files
    from hdsr.console import one_line_each
    from hdsr.loggers import build_loggers, finish_wandb

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
    module = training.build_module(cfg, datamodule)  # net, optimizer and scheduler
    resuming, group = ckpt_path is not None, sweep_group(cfg)
    loggers = build_loggers(
        cfg, run_dir, resuming, group, rank_zero=rank_zero, val_sets=datamodule.val_set_names
    )
    trainer = training.build_trainer(cfg, run_dir, loggers)  # with cfg.callbacks
    if ckpt_path and trainer.is_global_zero:
        print(f"resuming from {ckpt_path}")
    exit_code = 1
    try:
        with single_job_argv():
            metrics = training.fit(trainer, module, datamodule, ckpt_path)
        result = {"metrics": metrics}
        if trainer.is_global_zero:  # bicubic beside the model, the final table
            result = training.report(cfg, trainer, module, datamodule, loggers, metrics)
        exit_code = 0
        return result
    except SystemExit as stopped:  # a stop signal (128 + signal) or a second Ctrl-C (130)
        exit_code = stopped.code if isinstance(stopped.code, int) else 1
        raise
    finally:
        stop = training.graceful_stop(trainer)
        if stop is not None:
            stop.restore_handlers()
        finish_wandb(loggers, exit_code=exit_code)


@hydra.main(version_base="1.3", config_path=f"pkg://{CONFIG_MODULE}", config_name="train")
def hydra_main(cfg: DictConfig) -> float | None:
    result = train(cfg)
    metrics = result["metrics"]
    key = next((k for k in metrics if k.startswith("val/psnr_y/")), None)
    return metrics[key] if key else None


def prepare(cfg: DictConfig) -> None:
    """Build the data caches the config needs (decoded images, generated LR), then stop."""
    check_config(cfg)
    from hydra.utils import instantiate

    datamodule = instantiate(cfg.data, _convert_="all")
    datamodule.prepare_data()
    datamodule.setup("fit")
    n = len(datamodule.train_set.pairs)
    sets = ", ".join(f"{k} ({len(v)})" for k, v in datamodule.val_pairs.items())
    print(f"ready: {n} training images at x{cfg.data.scale}; validation sets: {sets}")


@hydra.main(version_base="1.3", config_path=f"pkg://{CONFIG_MODULE}", config_name="train")
def prepare_hydra_main(cfg: DictConfig) -> None:
    prepare(cfg)
