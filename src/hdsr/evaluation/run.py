"""``hdsr-eval``'s work: the paper's Tables II-V from checkpoints (ours or the authors').

For each model and benchmark set: SR of every LR image (optionally self-ensembled and
tiled), rounded to uint8, scored on Y with ``scale`` pixels shaved, averaged per set; the
MATLAB-bicubic baseline of the same LR images and the published figures beside it.

Every model, and the bicubic baseline (``hdsr.models.bicubic``, once per scale), is
scored by ``Trainer.test`` on the ``EvaluationModule`` that validates during training
(``hdsr.evaluation.scoring.score_sets``), with the ``trainer`` config group's Trainer: one
process by default, every GPU of the node with ``trainer=ddp`` (each image scored once;
global rank 0 writes the results).
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import lightning.pytorch  # noqa: F401 - its loggers, which one_line_each rearranges
import torch
from hydra.utils import instantiate
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table

from hdsr.console import one_line_each
from hdsr.data.benchmarks import BenchmarkImages
from hdsr.data.demo import DemoImages
from hdsr.devices import PRECISIONS, resolve_device
from hdsr.errors import ConfigError
from hdsr.evaluation.scoring import distinct_names, precision_mode, score_sets
from hdsr.evaluation.tables import (
    log_to_wandb,
    per_image_rows,
    summarize,
    table_rows,
    write_outputs,
)
from hdsr.inference.loading import LoadedModel, load_model
from hdsr.models.bicubic import BicubicUpsampler
from hdsr.runtime import apply_runtime_config, single_job_argv
from hdsr.sizes import parse_memory


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_eval_config(cfg: DictConfig) -> None:
    """Reject option values that would fail late or with a raw traceback, naming the key."""
    tile = cfg.get("tile")
    if tile is not None and not (_is_int(tile) and tile >= 0):
        raise ConfigError(f"tile must be null or a non-negative integer (LR pixels), got {tile!r}")
    max_memory = cfg.get("max_memory")
    if max_memory is not None:
        try:
            parse_memory(max_memory)
        except ValueError as err:
            raise ConfigError(f"max_memory: {err}") from None
    if str(cfg.get("weights", "ema")) not in ("ema", "raw"):
        raise ConfigError(f"weights must be ema or raw, got {cfg.get('weights')!r}")
    overlap = cfg.get("tile_overlap")
    if not (_is_int(overlap) and overlap >= 0):
        raise ConfigError(f"tile_overlap must be a non-negative integer, got {overlap!r}")
    if str(cfg.get("precision")) not in PRECISIONS:
        raise ConfigError(
            f"precision must be one of {list(PRECISIONS)}, got {cfg.get('precision')!r}"
        )
    scale = cfg.data.get("scale")
    if scale is not None and (not _is_int(scale) or scale not in (2, 3, 4)):
        raise ConfigError(f"data.scale must be null, 2, 3 or 4, got {scale!r}")


def trainer_config(cfg: DictConfig) -> dict[str, Any]:
    """The scoring Trainer's settings: the ``trainer`` group, placed by ``device``.

    ``device=auto`` leaves accelerator and devices to the trainer config (the default
    one: CUDA when there is a GPU, else the CPU; ``trainer=ddp``: every GPU of the node);
    ``cpu``, ``cuda`` or ``cuda:N`` runs one process on that device, and is refused with
    a trainer config of several processes. A plain dict; the strategy stays a config
    (``hdsr.evaluation.scoring.score_sets`` builds one per Trainer).
    """
    conf = OmegaConf.to_container(cfg.trainer, resolve=True)
    assert isinstance(conf, dict)
    device = str(cfg.device)
    if device == "auto":
        if str(conf.get("accelerator", "auto")) == "auto":  # as before: CUDA, else CPU
            conf["accelerator"] = resolve_device("auto").type
        return conf
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ConfigError(f"device must be auto, cpu, cuda or cuda:N, got {device!r}") from None
    devices, nodes = conf.get("devices", 1), conf.get("num_nodes", 1)
    if str(devices) != "1" or str(nodes) != "1":
        raise ConfigError(
            f"device={device} is one device, but the trainer config runs "
            f"trainer.devices={devices} processes on trainer.num_nodes={nodes}: leave "
            "device=auto, or set trainer.devices=1"
        )
    conf["accelerator"] = dev.type
    conf["devices"] = [dev.index] if dev.type == "cuda" and dev.index is not None else 1
    return conf


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Lightning's INFO lines (GPU/TPU available, tips...) left out while scoring: one
    Trainer per model would repeat them. Its warnings still show."""
    names = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def test_sets(cfg: DictConfig) -> tuple[list[str], Callable[[int], dict[str, list]]]:
    """The names of the sets to score and a function loading their pairs at a scale: the
    benchmark sets of ``data.test_sets`` under ``data.benchmark_root``, or, with no
    ``data.benchmark_root``, the embedded demo validation images as one set ``demo`` (said
    in one line)."""
    root = cfg.data.get("benchmark_root")
    if root is not None:
        names = list(cfg.data.test_sets)
        return names, lambda s: {n: BenchmarkImages(root, n).load(s) for n in names}
    demo = DemoImages(list(cfg.data.demo))
    if rank_zero_only.rank == 0:
        print(
            f"data.benchmark_root is not set: scoring the embedded demo validation images "
            f"({', '.join(demo.names)}) as set 'demo'; data.benchmark_root=/data/benchmark "
            f"scores {', '.join(cfg.data.test_sets)}",
            flush=True,
        )
    return ["demo"], lambda s: {"demo": demo.load(s)}


def run_eval(cfg: DictConfig) -> list[dict[str, Any]]:
    """Evaluate every checkpoint (and ``model=bicubic``) of ``cfg``; return the summary.

    Under DDP (``trainer=ddp``) every rank runs this; only global rank 0 writes the
    results, prints the table and logs the W&B run.
    """
    check_eval_config(cfg)
    apply_runtime_config(cfg)
    one_line_each()  # Lightning's log lines once (Hydra's console and log file), no tips
    ckpts = cfg.ckpt if not isinstance(cfg.ckpt, str) else [cfg.ckpt]
    ckpts = [str(c) for c in (ckpts or []) if c]
    models: list[LoadedModel] = []
    for c in ckpts:
        try:
            models.append(load_model(c, weights=str(cfg.weights)))
        except (OSError, KeyError, ValueError) as err:  # a file that holds no network
            why = str(err.args[0] if isinstance(err, KeyError) and err.args else err)
            raise ConfigError(why if c in why else f"ckpt={c}: {why}") from None
    distinct_names(models)
    if cfg.get("model") is not None:
        scale = cfg.data.scale
        if scale is None:
            raise ConfigError("model=bicubic needs data.scale (2, 3 or 4)")
        models.append(LoadedModel(instantiate(cfg.model.net), int(scale), cfg.model.name, "-"))
    if not models:
        raise ConfigError("nothing to evaluate: give ckpt=<file> (or a list) or model=bicubic")
    for m in models:
        if cfg.data.scale is not None and m.scale != cfg.data.scale:
            raise ConfigError(f"{m.source} is a x{m.scale} model but data.scale={cfg.data.scale}")
    set_names, load_sets = test_sets(cfg)
    run_dir = Path(cfg.paths.run_dir)
    trainer = trainer_config(cfg)
    inference = {
        "tile": cfg.tile,
        "tile_overlap": int(cfg.tile_overlap),
        "max_memory": None if cfg.get("max_memory") is None else parse_memory(cfg.max_memory),
        "self_ensemble": bool(cfg.self_ensemble),
        "precision": str(cfg.precision),
    }
    sets: dict[int, dict[str, list]] = {}
    baseline: dict[int, dict[str, list]] = {}
    rows: list[dict[str, Any]] = []
    rank_zero = True
    # under DDP Lightning starts ranks > 0 by re-running this job's command
    with quiet_lightning(), single_job_argv(), precision_mode(str(cfg.precision)):
        for m in models:
            s = m.scale
            if s not in sets:
                sets[s] = load_sets(s)
                baseline[s], _ = score_sets(
                    BicubicUpsampler(s), s, sets[s], trainer, label=f"bicubic x{s} (baseline)"
                )
            folder = re.sub(r"[^A-Za-z0-9._-]+", "_", m.name).strip("_") or "model"
            image_dir = run_dir / "images" / folder if cfg.save_images else None
            scores, rank_zero = score_sets(
                m.net,
                s,
                sets[s],
                trainer,
                inference=inference,
                image_dir=image_dir,
                label=f"{m.name} x{s}",
            )
            rows += per_image_rows(m.name, s, scores, baseline[s])
    summary = summarize(rows, set_names)
    if not rank_zero:
        return summary
    paths = write_outputs(run_dir, rows, summary, set_names)
    wandb_dir = log_to_wandb(cfg, run_dir, summary, rows)

    title = "PSNR/SSIM (Y, shave = scale)" + (", self-ensemble x8" if cfg.self_ensemble else "")
    table = Table(title=title)
    for col in ["method", "scale", *set_names]:
        table.add_column(col, justify="left" if col == "method" else "right")
    for r in table_rows(summary, set_names):
        table.add_row(*r)
    console = Console(soft_wrap=True)
    console.print(table)
    console.print(f"results    : {paths['markdown']} and {paths['csv']}")
    console.print(f"per image  : {paths['per_image']}")
    if wandb_dir:
        console.print(f"W&B run    : {Path(wandb_dir).parent}")
    return summary
