"""Small dataset trees in the field's layouts, made from generated images (test helper)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hdsr.data import imresize, modcrop
from hdsr.imaging import write_png


def photo(h: int, w: int, seed: int, gray: bool = False) -> np.ndarray:
    """A smooth, photo-like uint8 image (gradients + blobs + a little noise)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    chans = []
    for c in range(1 if gray else 3):
        f = rng.uniform(0.02, 0.15, size=2)
        img = 128 + 60 * np.sin(f[0] * x + c) * np.cos(f[1] * y - c) + 40 * (x / w - y / h)
        img += rng.normal(0, 4, size=(h, w))
        chans.append(img)
    out = np.clip(np.stack(chans, axis=2), 0, 255).round().astype(np.uint8)
    return out[..., 0] if gray else out


def make_div2k(root: Path, indices, scales=(2,), size=(60, 72), with_lr=True) -> Path:
    """DIV2K_{train,valid}_HR/NNNN.png and (optionally) DIV2K_*_LR_bicubic/X<s>/NNNNx<s>.png."""
    for i in indices:
        split = "train" if i <= 800 else "valid"
        hr = photo(*size, seed=i)
        write_png(root / f"DIV2K_{split}_HR" / f"{i:04d}.png", hr)
        if with_lr:
            for s in scales:
                lr = imresize(modcrop(hr, s), 1 / s)
                write_png(root / f"DIV2K_{split}_LR_bicubic" / f"X{s}" / f"{i:04d}x{s}.png", lr)
    return root


def make_benchmark(root: Path, folder: str, n: int, scales=(), gray=(), size=(48, 50)) -> Path:
    """<root>/<folder>/HR/img_NNN.png, LR_bicubic/X<s>/img_NNNx<s>.png for ``scales``."""
    for k in range(n):
        hr = photo(*size, seed=100 + k, gray=k in gray)
        write_png(root / folder / "HR" / f"img_{k:03d}.png", hr)
        for s in scales:
            lr = imresize(modcrop(hr, s), 1 / s)
            write_png(root / folder / "LR_bicubic" / f"X{s}" / f"img_{k:03d}x{s}.png", lr)
    return root
