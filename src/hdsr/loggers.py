"""Experiment loggers: CSV always, Weights & Biases beside it (online, offline or off)."""

from __future__ import annotations

import os
import secrets
import string
from collections.abc import Iterable, Sequence
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
    val_sets: Sequence[str] = (),
) -> list[Any]:
    """CSV logger (a new ``csv/version_N`` per start) and, if enabled, a WandbLogger.

    The W&B run is made on global rank 0 only (other ranks would race on its id file).
    Its metric summaries (``define_metrics``, with the validation sets ``val_sets``) are
    defined when it starts.
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
    from hdsr.wandb_logger import WandbLogger

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
        val_sets=val_sets,
    )
    # Lightning passes anonymous=None, which W&B warns about in every run ("The anonymous
    # setting has no effect"); leaving it out changes nothing else
    getattr(run_logger, "_wandb_init", {}).pop("anonymous", None)
    loggers.append(run_logger)
    return loggers


def define_metrics(run: Any, val_sets: Iterable[str]) -> None:
    """Summaries of the run's metrics against ``trainer/global_step``: the best (``max``)
    ``val/psnr_y/<set>`` and ``val/ssim_y/<set>``, the lowest (``min``) ``train/loss``, so
    a sweep's runs table sorts by best PSNR.

    Exact names, not ``val/psnr_y/*``: W&B applies the first glob a metric matches, and
    Lightning's WandbLogger defines ``*`` (step ``trainer/global_step``) before this runs.
    """
    step = "trainer/global_step"
    for name in val_sets:
        for metric in ("psnr_y", "ssim_y", "psnr_y_raw"):  # psnr_y_raw: EMA runs' trained weights
            run.define_metric(f"val/{metric}/{name}", step_metric=step, summary="max")
    run.define_metric("train/loss", step_metric=step, summary="min")


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


#: the per-image table's columns (``final/per_image``)
IMAGE_COLUMNS = ("set", "image", "psnr_y", "ssim_y", "bicubic_psnr_y", "delta_psnr_y")


def log_image_table(loggers: list[Any], rows: list[dict[str, Any]]) -> None:
    """Put the final validation's per-image scores in the W&B run: the ``final/per_image``
    table, one row per image (columns ``IMAGE_COLUMNS``)."""
    logger = wandb_logger(loggers)
    if logger is None or not rows:
        return
    import wandb

    data = [[r[c] for c in IMAGE_COLUMNS] for r in rows]
    logger.experiment.log({"final/per_image": wandb.Table(columns=list(IMAGE_COLUMNS), data=data)})


def checkpoint_metadata(path: Path, monitor: str | None) -> dict[str, Any]:
    """What a checkpoint file says of itself: its global step and epoch, and the score of
    ``monitor`` its ModelCheckpoint state holds (``best_model_score`` for the file that
    callback keeps as best, else ``current_score``, the last score before it was written)."""
    import torch

    ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    states = [
        v
        for k, v in (ckpt.get("callbacks") or {}).items()
        if k.startswith("ModelCheckpoint") and monitor and v.get("monitor") == monitor
    ]
    score = None
    if states:
        state = states[0]
        best = Path(str(state.get("best_model_path") or "")).name == path.name
        score = state.get("best_model_score" if best else "current_score")
    return {
        "global_step": int(ckpt["global_step"]),
        "epoch": int(ckpt.get("epoch", 0)),
        "score": float(score) if score is not None else None,
    }


def log_checkpoints(
    loggers: list[Any], callbacks: Iterable[Any], variant: str, scale: int
) -> list[tuple[str, dict[str, Any]]]:
    """Upload the best and the last checkpoint of the ModelCheckpoint ``callbacks`` as W&B
    model artifacts (``logger.wandb.log_model``); offline runs record them for ``wandb sync``.

    One artifact collection per run, ``model-<run id>`` (Lightning's name), its versions
    aliased ``best`` and ``last``; the file is ``model.ckpt``. Metadata: ``variant`` and
    ``scale``, ``monitor`` (the metric best.ckpt is chosen on) and ``mode``, the
    checkpoint's ``score`` of it, ``global_step`` and ``epoch``, ``original_filename``,
    and Lightning's ``ModelCheckpoint`` settings. Returns (alias, metadata) of each upload.
    """
    logger = wandb_logger(loggers)
    if logger is None:
        return []
    import wandb
    from lightning.pytorch.callbacks import ModelCheckpoint

    checkpoints = [cb for cb in callbacks if isinstance(cb, ModelCheckpoint)]
    monitored = next((cb for cb in checkpoints if cb.monitor), None)
    files: dict[str, tuple[Path, Any]] = {}
    if monitored is not None and monitored.best_model_path:
        files["best"] = (Path(monitored.best_model_path), monitored)
    last = next((cb for cb in checkpoints if cb.last_model_path), None)
    if last is not None:
        files["last"] = (Path(last.last_model_path), last)
    monitor = monitored.monitor if monitored is not None else None
    settings = ("monitor", "mode", "save_last", "save_top_k", "save_weights_only")
    run = logger.experiment
    logged = []
    for alias, (path, callback) in files.items():
        if not path.is_file():
            continue
        metadata = {
            "variant": variant,
            "scale": int(scale),
            "monitor": monitor,
            "mode": monitored.mode if monitored is not None else None,
            **checkpoint_metadata(path, monitor),
            "original_filename": path.name,
            "ModelCheckpoint": {k: getattr(callback, k, None) for k in settings},
        }
        artifact = wandb.Artifact(f"model-{run.id}", type="model", metadata=metadata)
        artifact.add_file(str(path), name="model.ckpt")
        run.log_artifact(artifact, aliases=[alias])
        logged.append((alias, metadata))
    return logged


def finish_wandb(loggers: list[Any], exit_code: int) -> None:
    """Close this job's W&B run (failed when ``exit_code`` != 0) so the next job gets its own."""
    if wandb_logger(loggers) is None:
        return
    import wandb

    if wandb.run is not None:
        wandb.finish(exit_code=exit_code)
