"""Paper-protocol scores of sets of images, and the final table of a training run."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from hdsr.data.imresize import imresize
from hdsr.data.pairs import ImagePair
from hdsr.metrics import psnr_y, sr_like_hr, ssim_y


def bicubic_sr(lr: np.ndarray, hr: np.ndarray, scale: int) -> np.ndarray:
    """MATLAB-bicubic upsampling of a uint8 LR image, matched to ``hr`` (gray stays gray)."""
    return sr_like_hr(imresize(np.asarray(lr), scale), np.asarray(hr))


def bicubic_per_image(
    sets: Mapping[str, Sequence[ImagePair]], scale: int
) -> dict[str, dict[str, tuple[float, float]]]:
    """``{set: {image: (PSNR, SSIM)}}`` on Y of the bicubic baseline of each LR image."""
    out: dict[str, dict[str, tuple[float, float]]] = {}
    for name, pairs in sets.items():
        out[name] = {}
        for p in pairs:
            sr = bicubic_sr(p.lr, p.hr, scale)
            out[name][p.name] = (psnr_y(sr, p.hr, scale), ssim_y(sr, p.hr, scale))
    return out


def bicubic_scores(
    sets: Mapping[str, Sequence[ImagePair]], scale: int
) -> dict[str, tuple[float, float]]:
    """Mean (PSNR, SSIM) on Y of MATLAB-bicubic upsampling of each set's LR images.

    Each image's score is computed on its own and the scores are averaged over the set.
    """
    out = {}
    for name, per_image in bicubic_per_image(sets, scale).items():
        arr = np.asarray(list(per_image.values()), dtype=np.float64)
        out[name] = (float(arr[:, 0].mean()), float(arr[:, 1].mean()))
    return out


def final_table(cfg: Any, result: Mapping[str, Any]) -> None:
    """Print the run's validation PSNR/SSIM beside bicubic, then where its outputs are."""
    from rich.console import Console
    from rich.table import Table

    sets = list(result["bicubic"])
    table = Table(title=f"Validation x{cfg.data.scale} (Y channel, shave {cfg.data.scale}px)")
    table.add_column("method")
    for s in sets:
        table.add_column(f"{s} PSNR (dB)", justify="right")
        table.add_column(f"{s} SSIM", justify="right")
    row = [cfg.model.name]
    for s in sets:
        p = result["metrics"].get(f"val/psnr_y/{s}")
        q = result["metrics"].get(f"val/ssim_y/{s}")
        row += [f"{p:.2f}" if p is not None else "-", f"{q:.4f}" if q is not None else "-"]
    table.add_row(*row)
    bicubic = []
    for s in sets:
        psnr, ssim = result["bicubic"][s]
        bicubic += [f"{psnr:.2f}", f"{ssim:.4f}"]
    table.add_row("bicubic", *bicubic)
    console = Console(soft_wrap=True)
    console.print(table)
    for s, (scored, total) in result.get("images", {}).items():
        if scored < total:
            console.print(
                f"{s}: scored on {scored} of {total} images (trainer.limit_val_batches); "
                "bicubic on the same images"
            )
    console.print(f"run directory : {result['run_dir']}")
    console.print(f"checkpoint    : {result['checkpoint']}")
    if result.get("best_checkpoint"):
        console.print(f"best          : {result['best_checkpoint']}")
    if result.get("csv_dir"):
        console.print(f"CSV metrics   : {result['csv_dir']}/metrics.csv")
    if result.get("wandb_dir"):
        run_path = str(result["wandb_dir"]).removesuffix("/files")
        hint = (
            f"  (offline: upload with `wandb sync {run_path}`)"
            if result.get("wandb_offline")
            else ""
        )
        console.print(f"W&B run       : {run_path}{hint}")
