"""Experiment loggers: CSV always, Weights & Biases beside it (online, offline or off)."""

from __future__ import annotations

import os
import secrets
import string
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

WANDB_ID_FILE = "wandb_run_id"


class ConfigError(ValueError):
    """A configuration value that cannot work; the message names the key."""


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


def wandb_run_id(run_dir: Path, resuming: bool) -> str:
    """The W&B run id of this run directory: kept across resumes, new for a fresh start."""
    path = run_dir / WANDB_ID_FILE
    if resuming and path.is_file():
        return path.read_text().strip()
    alphabet = string.ascii_lowercase + string.digits
    run_id = "".join(secrets.choice(alphabet) for _ in range(8))  # W&B's id format
    path.write_text(run_id + "\n")
    return run_id


def build_loggers(
    cfg: DictConfig,
    run_dir: Path,
    resuming: bool,
    group: str | None,
    job_type: str = "train",
    rank_zero: bool = True,
) -> list[Any]:
    """CSV logger (a new ``csv/version_N`` per start) and, if enabled, a WandbLogger.

    The W&B run is made on global rank 0 only (other ranks would race on its id file).
    """
    from lightning.pytorch.loggers import CSVLogger

    loggers: list[Any] = []
    if cfg.logger.get("csv", True):
        loggers.append(CSVLogger(save_dir=str(run_dir), name="csv"))
    wb = cfg.logger.get("wandb") or {}
    if not wb.get("enabled", False) or not rank_zero:
        return loggers
    mode = wandb_mode(wb.get("mode"))
    if mode == "disabled":
        return loggers
    from lightning.pytorch.loggers import WandbLogger

    tags = [cfg.model.name, f"x{cfg.data.scale}", f"seed{cfg.seed}", *list(wb.get("tags") or [])]
    run_logger = WandbLogger(
        project=wb.get("project", "hdsr"),
        entity=wb.get("entity"),
        name=cfg.run_name,
        id=wandb_run_id(run_dir, resuming),
        resume="allow",
        group=wb.get("group") or group,
        job_type=job_type,
        tags=tags,
        save_dir=str(run_dir),
        offline=mode == "offline",
        config=OmegaConf.to_container(cfg, resolve=True),
    )
    # Lightning passes anonymous=None, which W&B warns about in every run ("The anonymous
    # setting has no effect"); leaving it out changes nothing else
    getattr(run_logger, "_wandb_init", {}).pop("anonymous", None)
    loggers.append(run_logger)
    return loggers


def wandb_logger(loggers: list[Any]) -> Any | None:
    return next((lg for lg in loggers if type(lg).__name__ == "WandbLogger"), None)


def log_final_table(loggers: list[Any], rows: list[dict[str, Any]]) -> None:
    """Put the final metrics in the W&B run: one table, and flat summary values."""
    logger = wandb_logger(loggers)
    if logger is None or not rows:
        return
    import wandb

    columns = list(rows[0])
    table = wandb.Table(columns=columns, data=[[r[c] for c in columns] for r in rows])
    run = logger.experiment
    run.log({"final/metrics": table})
    for r in rows:
        for metric in ("psnr_y", "ssim_y"):
            run.summary[f"final/{r['method']}/{metric}/{r['set']}"] = r[metric]


def finish_wandb(loggers: list[Any], exit_code: int) -> None:
    """Close this job's W&B run (failed when ``exit_code`` != 0) so the next job gets its own."""
    if wandb_logger(loggers) is None:
        return
    import wandb

    if wandb.run is not None:
        wandb.finish(exit_code=exit_code)
