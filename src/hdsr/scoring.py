"""Paper-protocol scores of models and of the bicubic baseline on sets of images."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hdsr.data.pairs import ImagePair
from hdsr.imresize import imresize
from hdsr.metrics import psnr_y, sr_like_hr, ssim_y


def run_label(path: str | Path) -> str:
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
    for label in (run_label, str):
        groups: dict[tuple[str, int], list[Any]] = {}
        for m in models:
            groups.setdefault((m.name, m.scale), []).append(m)
        clashes = [m for g in groups.values() if len(g) > 1 for m in g if m.source != "-"]
        if not clashes:
            return
        for m in clashes:
            m.name = f"{base[id(m)]} ({label(m.source)})"


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

    ``bicubic`` holds the baseline's scores (``hdsr.scoring.bicubic_per_image``),
    computed once per scale and shared by every model of that scale.
    """
    from rich.progress import track

    from hdsr.data.transforms import to_tensor_chw
    from hdsr.imaging import to_uint8_image, write_png
    from hdsr.inference import upscale
    from hdsr.metrics import psnr_y, sr_like_hr, ssim_y

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
