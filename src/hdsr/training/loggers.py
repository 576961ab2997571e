"""Experiment loggers: CSV always, Weights & Biases beside it (online, offline or off)."""

from __future__ import annotations

import logging
import secrets
import string
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from lightning.pytorch.loggers import WandbLogger as LightningWandbLogger
from lightning.pytorch.loggers.logger import rank_zero_experiment
from omegaconf import DictConfig, OmegaConf

from hdsr.checkpoint_io import read_checkpoint
from hdsr.runtime import wandb_mode

WANDB_ID_FILE = "wandb_run_id"


def wandb_run_id(run_dir: Path, resuming: bool) -> str:
    """The W&B run id of this run directory: kept across resumes, new for a fresh start."""
    path = run_dir / WANDB_ID_FILE
    if resuming and path.is_file():
        return path.read_text().strip()
    alphabet = string.ascii_lowercase + string.digits
    run_id = "".join(secrets.choice(alphabet) for _ in range(8))  # W&B's id format
    path.write_text(run_id + "\n")
    return run_id


#: keys of a ``logger`` entry that are hdsr's settings, not the logger's arguments
RUN_SETTINGS = ("enabled", "mode", "tags", "log_images", "log_model")
#: the ``_target_`` of hdsr's W&B logger (its run gets the run's id, name, group and tags)
WANDB_TARGET = "hdsr.training.loggers.WandbLogger"


def build_loggers(
    cfg: DictConfig,
    run_dir: Path,
    resuming: bool,
    group: str | None,
    job_type: str = "train",
    rank_zero: bool = True,
    val_sets: Sequence[str] = (),
) -> list[Any]:
    """The loggers of ``cfg.logger``, in order, each built by ``instantiate`` with
    ``save_dir`` the run folder: the CSV logger (a new ``csv/version_N`` per start) and,
    if enabled, hdsr's WandbLogger.

    Left out: an entry that is null or false, or whose ``enabled`` is false. The W&B run
    is made on global rank 0 only (other ranks would race on its id file), not at all in
    ``mode`` disabled; it gets the run's name, its id (kept across resumes), the sweep's
    group, tags (model, scale, seed, then ``tags``) and the resolved config. Its metric
    summaries (``define_metrics``, with the validation sets ``val_sets``) are defined when
    it starts.
    """
    loggers: list[Any] = []
    for spec in (cfg.get("logger") or {}).values():
        if spec is None or spec is False:
            continue
        if spec is True:  # the form of hdsr 0.1's logger configs: `csv: true`
            spec = OmegaConf.create({"_target_": "lightning.pytorch.loggers.CSVLogger"})
        if not spec.get("enabled", True):
            continue
        args = {k: v for k, v in spec.items() if k not in RUN_SETTINGS}
        if spec.get("_target_") == WANDB_TARGET:
            if not rank_zero:
                continue
            mode = wandb_mode(spec.get("mode"))
            if mode == "disabled":
                continue
            tags = [cfg.model.name, f"x{cfg.data.scale}", f"seed{cfg.seed}"]
            args.update(
                project=spec.get("project", "hdsr"),
                name=cfg.run_name,
                id=wandb_run_id(run_dir, resuming),
                resume="allow",
                group=spec.get("group") or group,
                job_type=job_type,
                tags=tags + list(spec.get("tags") or []),
                offline=mode == "offline",
                config=OmegaConf.to_container(cfg, resolve=True),
                val_sets=list(val_sets),
            )
        # not recursive: the W&B run's config is the run's whole config, _target_s and all
        logger = instantiate({**args, "save_dir": str(run_dir)}, _convert_="all", _recursive_=False)
        if spec.get("_target_") == WANDB_TARGET:
            # Lightning passes anonymous=None, which W&B warns about in every run ("The
            # anonymous setting has no effect"); leaving it out changes nothing else
            getattr(logger, "_wandb_init", {}).pop("anonymous", None)
        loggers.append(logger)
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
    ckpt = read_checkpoint(path, mmap=True)
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
    """Close this job's W&B run (failed when ``exit_code`` != 0) so the next job gets its own.

    On the way out of a stopped or failed run, a W&B error (its service already stopped
    by SLURM's requeue, say) is a warning, never the run's outcome: the offline run files
    keep what was logged, and the stop still reaches its caller."""
    if wandb_logger(loggers) is None:
        return
    import wandb

    if wandb.run is None:
        return
    try:
        wandb.finish(exit_code=exit_code)
    except Exception as err:  # noqa: BLE001 - any W&B failure; the stop must go on
        if exit_code == 0:
            raise
        logging.getLogger(__name__).warning(
            "the W&B run was not closed cleanly (%s: %s); its files keep what was logged",
            type(err).__name__,
            err,
        )


class WandbLogger(LightningWandbLogger):
    """Lightning's ``WandbLogger`` (same name, so ``wandb_logger`` finds it)
    that calls :func:`define_metrics` right after the W&B run starts.

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
