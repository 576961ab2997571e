"""``hdsr-train``: the Hydra task that trains and validates one model.

The heavy imports (Lightning, W&B) happen inside the task, so ``--help`` stays quick.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from hdsr.models.hdsrnet import SCALES

CONFIG_MODULE = "hdsr.conf"


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the key."""


def _job_dir(run_name: str, overrides: str) -> str:
    return f"{run_name},{overrides}" if overrides else run_name


if not OmegaConf.has_resolver("hdsr_job_dir"):
    OmegaConf.register_new_resolver("hdsr_job_dir", _job_dir)


def check_config(cfg: DictConfig) -> None:
    """Reject values that would fail late or silently, naming the offending key."""
    scale = cfg.data.get("scale")
    if isinstance(scale, bool) or scale not in SCALES:
        raise ConfigError(f"data.scale must be one of {list(SCALES)}, got {scale!r}")
    for key in ("patch_size", "batch_size", "patches_per_epoch"):
        value = cfg.data.get(key)
        if value is not None and value < 1:
            raise ConfigError(f"data.{key} must be a positive integer, got {value!r}")
    if cfg.data.get("batch_size") and cfg.data.get("patches_per_epoch"):
        if cfg.data.patches_per_epoch < cfg.data.batch_size:
            raise ConfigError(
                f"data.patches_per_epoch={cfg.data.patches_per_epoch} is smaller than "
                f"data.batch_size={cfg.data.batch_size}: an epoch would have no step"
            )


def wandb_mode(cfg_mode: str | None) -> str:
    """online/offline/disabled: the configured mode, else WANDB_MODE, else by API key."""
    if cfg_mode:
        mode = str(cfg_mode)
    elif os.environ.get("WANDB_MODE"):
        mode = os.environ["WANDB_MODE"]
        mode = {"dryrun": "offline", "run": "online"}.get(mode, mode)
    else:
        mode = "online" if os.environ.get("WANDB_API_KEY") else "offline"
    if mode not in ("online", "offline", "disabled"):
        raise ConfigError(f"logger.wandb.mode must be online, offline or disabled, got {mode!r}")
    return mode


def build_loggers(cfg: DictConfig, run_dir: Path) -> list[Any]:
    from lightning.pytorch.loggers import CSVLogger

    loggers: list[Any] = []
    if cfg.logger.get("csv", True):
        loggers.append(CSVLogger(save_dir=str(run_dir), name="", version="csv"))
    wb = cfg.logger.get("wandb") or {}
    if wb.get("enabled", False):
        mode = wandb_mode(wb.get("mode"))
        if mode != "disabled":
            from lightning.pytorch.loggers import WandbLogger

            loggers.append(
                WandbLogger(
                    project=wb.get("project", "hdsr"),
                    entity=wb.get("entity"),
                    name=cfg.run_name,
                    group=wb.get("group"),
                    tags=list(wb.get("tags") or []) + [cfg.model.name, f"x{cfg.data.scale}"],
                    save_dir=str(run_dir),
                    offline=mode == "offline",
                    config=OmegaConf.to_container(cfg, resolve=True),
                )
            )
    return loggers


def train(cfg: DictConfig) -> dict[str, Any]:
    """Train and validate as ``cfg`` says; return the final metrics and output paths."""
    check_config(cfg)
    import lightning as L
    from hydra.utils import instantiate
    from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, RichProgressBar

    from hdsr.evaluation import bicubic_scores, final_table
    from hdsr.module import SRModule

    run_dir = Path(cfg.paths.run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True)

    datamodule = instantiate(cfg.data, _convert_="all")
    net = instantiate(cfg.model.net)
    module = SRModule(
        net,
        scale=cfg.data.scale,
        lr=cfg.optim.lr,
        betas=list(cfg.optim.betas),
        eps=cfg.optim.eps,
        lr_step=cfg.optim.lr_step,
        lr_gamma=cfg.optim.lr_gamma,
        val_set_names=datamodule.val_set_names,
        test_set_names=datamodule.test_set_names,
    )
    loggers = build_loggers(cfg, run_dir)
    first_set = datamodule.val_set_names[0]
    ckpt = ModelCheckpoint(
        dirpath=str(run_dir / "checkpoints"),
        filename="best",
        monitor=f"val/psnr_y/{first_set}",
        mode="max",
        save_last=True,
        auto_insert_metric_name=False,
        enable_version_counter=False,  # fixed names in the fixed run directory
    )
    callbacks: list[Any] = [ckpt]
    if loggers:
        callbacks.append(LearningRateMonitor(logging_interval="step"))
    trainer_kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    if trainer_kwargs.get("enable_progress_bar", True):
        callbacks.append(RichProgressBar())
    trainer = L.Trainer(
        **trainer_kwargs,
        default_root_dir=str(run_dir),
        logger=loggers or False,
        callbacks=callbacks,
    )
    wandb_run = None
    try:
        trainer.fit(module, datamodule=datamodule)
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        bicubic = bicubic_scores(datamodule.val_pairs, cfg.data.scale)
        bicubic_log = {}
        for name, (psnr, ssim) in bicubic.items():
            bicubic_log[f"bicubic/psnr_y/{name}"] = psnr
            bicubic_log[f"bicubic/ssim_y/{name}"] = ssim
        for logger in loggers:
            logger.log_metrics(bicubic_log, step=trainer.global_step)
        for logger in loggers:
            if type(logger).__name__ == "WandbLogger":
                wandb_run = logger.experiment
        result = {
            "metrics": metrics,
            "bicubic": bicubic,
            "run_dir": str(run_dir),
            "checkpoint": ckpt.last_model_path,
            "best_checkpoint": ckpt.best_model_path,
            "wandb_dir": getattr(wandb_run, "dir", None),
            "wandb_offline": wandb_run is not None
            and wandb_mode(cfg.logger.wandb.get("mode")) == "offline",
        }
        final_table(cfg, result)
        return result
    except BaseException:
        _finish_wandb(loggers, exit_code=1)
        raise
    finally:
        _finish_wandb(loggers, exit_code=0)


def _finish_wandb(loggers: list[Any], exit_code: int) -> None:
    """Close this job's W&B run so the next job of a multirun gets its own."""
    if not any(type(lg).__name__ == "WandbLogger" for lg in loggers):
        return
    import wandb

    if wandb.run is not None:
        wandb.finish(exit_code=exit_code)


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
