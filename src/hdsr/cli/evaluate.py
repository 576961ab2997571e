"""``hdsr-eval``: the paper's Tables II-V from checkpoints (ours or the authors').

For each model and benchmark set: SR of every LR image (optionally self-ensembled and
tiled), rounded to uint8, scored on Y with ``scale`` pixels shaved, averaged per set; the
MATLAB-bicubic baseline of the same LR images and the published figures beside it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from hdsr.results import log_to_wandb, summarize, table_rows, write_outputs
from hdsr.scoring import distinct_names, evaluate_model, precision_mode, run_label

CONFIG_MODULE = "hdsr.conf"


def _eval_name(ckpts: Any, model: Any) -> str:
    """A readable, fixed name for an evaluation: its checkpoints' runs (or file stems)."""
    if isinstance(ckpts, str):
        ckpts = [ckpts] if ckpts else []
    names = []
    for c in ckpts or []:
        names.append(run_label(c))
    if model:
        names.append(str(model))
    return "+".join(names) or "eval"


if not OmegaConf.has_resolver("hdsr_eval_name"):
    OmegaConf.register_new_resolver("hdsr_eval_name", _eval_name)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_eval_config(cfg: DictConfig) -> None:
    """Reject option values that would fail late or with a raw traceback, naming the key."""
    from hdsr.imaging import PRECISIONS
    from hdsr.loggers import ConfigError

    tile = cfg.get("tile")
    if tile is not None and not (_is_int(tile) and tile >= 0):
        raise ConfigError(f"tile must be null or a non-negative integer (LR pixels), got {tile!r}")
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


def run_eval(cfg: DictConfig) -> list[dict[str, Any]]:
    """Evaluate every checkpoint (and ``model=bicubic``) of ``cfg``; return the summary."""
    from hydra.utils import instantiate
    from rich.console import Console
    from rich.table import Table

    from hdsr.checkpoints import LoadedModel, load_model
    from hdsr.data.benchmarks import BenchmarkImages
    from hdsr.imaging import resolve_device
    from hdsr.loggers import ConfigError
    from hdsr.runtime import apply_runtime_config
    from hdsr.scoring import bicubic_per_image

    check_eval_config(cfg)
    apply_runtime_config(cfg)
    ckpts = cfg.ckpt if not isinstance(cfg.ckpt, str) else [cfg.ckpt]
    ckpts = [str(c) for c in (ckpts or []) if c]
    models: list[LoadedModel] = [load_model(c) for c in ckpts]
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
    set_names = list(cfg.data.test_sets)
    run_dir = Path(cfg.paths.run_dir)
    device = str(resolve_device(cfg.device))
    cache: dict[int, dict[str, list]] = {}
    baseline: dict[int, dict[str, dict[str, tuple[float, float]]]] = {}
    rows: list[dict[str, Any]] = []
    for m in models:
        if m.scale not in cache:
            cache[m.scale] = {
                n: BenchmarkImages(cfg.data.benchmark_root, n).load(m.scale) for n in set_names
            }
            baseline[m.scale] = bicubic_per_image(cache[m.scale], m.scale)
        folder = re.sub(r"[^A-Za-z0-9._-]+", "_", m.name).strip("_") or "model"
        image_dir = run_dir / "images" / folder if cfg.save_images else None
        with precision_mode(str(cfg.precision)):
            rows += evaluate_model(
                m,
                cache[m.scale],
                device,
                str(cfg.precision),
                bool(cfg.self_ensemble),
                cfg.tile or None,
                int(cfg.tile_overlap),
                baseline[m.scale],
                image_dir,
            )
    summary = summarize(rows, set_names)
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


@hydra.main(version_base="1.3", config_path=f"pkg://{CONFIG_MODULE}", config_name="eval")
def hydra_main(cfg: DictConfig) -> None:
    run_eval(cfg)
