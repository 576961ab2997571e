"""``hdsr-eval``: the paper's Tables II-V from checkpoints (ours or the authors').

For each model and benchmark set: SR of every LR image (optionally self-ensembled and
tiled), rounded to uint8, scored on Y with ``scale`` pixels shaved, averaged per set; the
MATLAB-bicubic baseline of the same LR images and the published figures beside it.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf

from hdsr.published import PUBLISHED

log = logging.getLogger(__name__)
CONFIG_MODULE = "hdsr.conf"


def _run_label(path: str | Path) -> str:
    """A checkpoint's run: ``<run>/checkpoints/x.ckpt`` -> ``<run>``, else the file's stem."""
    p = Path(str(path))
    return p.parent.parent.name if p.parent.name == "checkpoints" else p.stem


def distinct_names(models: Sequence[Any]) -> None:
    """Give models of one scale that share a name (two runs of one variant) names that tell
    them apart: ``<name> (<run>)``, or ``<name> (<path>)`` where runs collide too.

    Each model is its own row; without this their images would be averaged together.
    Raises ``ConfigError`` when one file is given twice.
    """
    from hdsr.loggers import ConfigError

    seen: dict[Path, str] = {}
    for m in models:
        if m.source == "-":
            continue
        key = Path(m.source).resolve()
        if key in seen:
            raise ConfigError(f"ckpt: {m.source} is given twice (also as {seen[key]})")
        seen[key] = m.source
    base = {id(m): m.name for m in models}
    for label in (_run_label, str):
        groups: dict[tuple[str, int], list[Any]] = {}
        for m in models:
            groups.setdefault((m.name, m.scale), []).append(m)
        clashes = [m for g in groups.values() if len(g) > 1 for m in g if m.source != "-"]
        if not clashes:
            return
        for m in clashes:
            m.name = f"{base[id(m)]} ({label(m.source)})"


def _eval_name(ckpts: Any, model: Any) -> str:
    """A readable, fixed name for an evaluation: its checkpoints' runs (or file stems)."""
    if isinstance(ckpts, str):
        ckpts = [ckpts] if ckpts else []
    names = []
    for c in ckpts or []:
        names.append(_run_label(c))
    if model:
        names.append(str(model))
    return "+".join(names) or "eval"


if not OmegaConf.has_resolver("hdsr_eval_name"):
    OmegaConf.register_new_resolver("hdsr_eval_name", _eval_name)


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def precision_mode(precision: str) -> contextlib.AbstractContextManager:
    """The numeric mode the models run in: ``precision=32`` is true float32, TF32 off for
    CUDA matmuls and convolutions (``hdsr.backends.exact_float32``; restored afterwards),
    so paper-protocol numbers do not depend on the card. "bf16"/"16" autocast as asked."""
    if str(precision) == "32":
        from hdsr.backends import exact_float32

        return exact_float32()
    return contextlib.nullcontext()


def evaluate_model(
    model: Any,
    sets: dict[str, list],
    device: str,
    precision: str,
    self_ensemble: bool,
    tile: int | None,
    overlap: int,
    bicubic: dict[str, dict[str, tuple[float, float]]],
    image_dir: Path | None = None,
) -> list[dict[str, Any]]:
    """Per-image rows (set, image, psnr_y, ssim_y, bicubic_psnr_y, bicubic_ssim_y).

    ``bicubic`` holds the baseline's scores (``hdsr.evaluation.bicubic_per_image``),
    computed once per scale and shared by every model of that scale.
    """
    from rich.progress import track

    from hdsr.data.io import write_png
    from hdsr.data.transforms import to_tensor_chw
    from hdsr.inference import upscale
    from hdsr.metrics import psnr_y, sr_like_hr, ssim_y
    from hdsr.module import to_uint8_image

    s = model.scale
    net = model.net.to(device)
    rows = []
    total = sum(len(v) for v in sets.values())
    items = [(name, p) for name, pairs in sets.items() for p in pairs]
    for set_name, pair in track(items, description=f"{model.name} x{s}", total=total):
        lr = to_tensor_chw(np.asarray(pair.lr))[None]
        sr_t = upscale(
            net,
            lr,
            s,
            tile=tile,
            overlap=overlap,
            self_ensemble=self_ensemble,
            device=device,
            precision=precision,
        )
        hr = np.asarray(pair.hr)
        sr = sr_like_hr(to_uint8_image(sr_t.float()).numpy(), hr)
        b_psnr, b_ssim = bicubic[set_name][pair.name]
        rows.append(
            {
                "model": model.name,
                "scale": s,
                "set": set_name,
                "image": pair.name,
                "psnr_y": psnr_y(sr, hr, s),
                "ssim_y": ssim_y(sr, hr, s),
                "bicubic_psnr_y": b_psnr,
                "bicubic_ssim_y": b_ssim,
            }
        )
        if image_dir is not None:
            write_png(image_dir / set_name / f"{pair.name}_x{s}.png", sr)
    net.to("cpu")
    return rows


def summarize(rows: Sequence[dict[str, Any]], set_names: Sequence[str]) -> list[dict[str, Any]]:
    """Per (model, scale): mean scores per set for the model and bicubic, plus the paper's."""
    out = []
    keys = []
    for r in rows:
        if (r["model"], r["scale"]) not in keys:
            keys.append((r["model"], r["scale"]))
    for model, scale in keys:
        mine = [r for r in rows if r["model"] == model and r["scale"] == scale]
        for method, pk, sk, source in (
            (model, "psnr_y", "ssim_y", "measured"),
            ("bicubic", "bicubic_psnr_y", "bicubic_ssim_y", "measured"),
        ):
            if method == "bicubic" and any(
                o["method"] == "bicubic" and o["scale"] == scale and o["source"] == "measured"
                for o in out
            ):
                continue
            for name in set_names:
                vals = [r for r in mine if r["set"] == name]
                if vals:
                    out.append(
                        {
                            "method": method,
                            "scale": scale,
                            "set": name,
                            "source": source,
                            "psnr_y": float(np.mean([v[pk] for v in vals])),
                            "ssim_y": float(np.mean([v[sk] for v in vals])),
                            "images": len(vals),
                        }
                    )
    for scale in sorted({k[1] for k in keys}):
        for method in ("HDSRNet", "bicubic"):
            for name in set_names:
                pub = PUBLISHED.get((method, scale), {}).get(name)
                if pub:
                    out.append(
                        {
                            "method": method,
                            "scale": scale,
                            "set": name,
                            "source": "paper",
                            "psnr_y": pub[0],
                            "ssim_y": pub[1],
                            "images": None,
                        }
                    )
    return out


def table_rows(summary: Sequence[dict[str, Any]], set_names: Sequence[str]) -> list[list[str]]:
    """Rows of the printed table: method (source), xS, then 'PSNR/SSIM' per set."""
    order: list[tuple[str, int, str]] = []
    for r in summary:
        key = (r["method"], r["scale"], r["source"])
        if key not in order:
            order.append(key)
    rows = []
    for method, scale, source in order:
        cells = [f"{method} ({'paper' if source == 'paper' else 'ours'})", f"x{scale}"]
        for name in set_names:
            r = next(
                (
                    x
                    for x in summary
                    if (x["method"], x["scale"], x["source"], x["set"])
                    == (method, scale, source, name)
                ),
                None,
            )
            cells.append(f"{r['psnr_y']:.2f}/{r['ssim_y']:.4f}" if r else "-")
        rows.append(cells)
    return rows


def write_outputs(run_dir: Path, rows, summary, set_names) -> dict[str, Path]:
    run_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "per_image": run_dir / "per_image.csv",
        "csv": run_dir / "results.csv",
        "markdown": run_dir / "results.md",
    }
    for path, data in ((paths["per_image"], rows), (paths["csv"], summary)):
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(data[0]))
            writer.writeheader()
            writer.writerows(data)
    header = ["method", "scale", *[f"{n} PSNR/SSIM" for n in set_names]]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in table_rows(summary, set_names)]
    paths["markdown"].write_text(
        "Y channel, `scale` pixels shaved, PSNR/SSIM per image averaged per set; "
        "LR = MATLAB bicubic.\n\n" + "\n".join(lines) + "\n"
    )
    return paths


def log_to_wandb(cfg: DictConfig, run_dir: Path, summary, rows) -> str | None:
    """One W&B run (job_type eval) with the results and per-image tables."""
    from hdsr.loggers import wandb_mode

    wb = cfg.logger.get("wandb") or {}
    if not wb.get("enabled", False):
        return None
    mode = wandb_mode(wb.get("mode"))
    if mode == "disabled":
        return None
    import wandb

    run = wandb.init(
        project=wb.get("project", "hdsr"),
        entity=wb.get("entity"),
        name=str(cfg.run_name),
        group=wb.get("group") or None,
        job_type="eval",
        mode=mode,
        dir=str(run_dir),
        tags=["eval", *list(wb.get("tags") or [])],
        config=OmegaConf.to_container(cfg, resolve=True),
    )
    exit_code = 1
    try:
        for name, data in (("eval/results", summary), ("eval/per_image", rows)):
            cols = list(data[0])
            run.log({name: wandb.Table(columns=cols, data=[[r[c] for c in cols] for r in data])})
        for r in summary:
            if r["source"] == "measured":
                run.summary[f"eval/{r['method']}/x{r['scale']}/psnr_y/{r['set']}"] = r["psnr_y"]
                run.summary[f"eval/{r['method']}/x{r['scale']}/ssim_y/{r['set']}"] = r["ssim_y"]
        exit_code = 0
        return run.dir
    finally:
        wandb.finish(exit_code=exit_code)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_eval_config(cfg: DictConfig) -> None:
    """Reject option values that would fail late or with a raw traceback, naming the key."""
    from hdsr.inference import PRECISIONS
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
    from hdsr.evaluation import bicubic_per_image
    from hdsr.loggers import ConfigError
    from hdsr.runtime import apply_runtime_config

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
    device = _device(cfg.device)
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
