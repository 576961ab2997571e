"""The bicubic baseline of the paper's tables: MATLAB-bicubic upsampling of each LR image,
scored on Y as the networks are, and the per-set means."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from hdsr.data.pairs import ImagePair
from hdsr.imresize import imresize
from hdsr.metrics import mean_over_images, psnr_y, sr_like_hr, ssim_y


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
    return set_means(bicubic_per_image(sets, scale))


def set_means(
    per_image: Mapping[str, Mapping[str, tuple[float, float]]],
) -> dict[str, tuple[float, float]]:
    """Mean (PSNR, SSIM) of each set of ``{set: {image: (PSNR, SSIM)}}`` (``mean_over_images``)."""
    out = {}
    for name, images in per_image.items():
        scores = list(images.values())
        out[name] = (
            mean_over_images([s[0] for s in scores]),
            mean_over_images([s[1] for s in scores]),
        )
    return out

