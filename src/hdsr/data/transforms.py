"""Paired patch cropping and augmentation for (LR, HR) uint8 images of shape HxWxC."""

from __future__ import annotations

import numpy as np


def paired_random_crop(
    lr: np.ndarray,
    hr: np.ndarray,
    lr_patch: int,
    scale: int,
    rng: np.random.Generator,
    name: str = "image",
) -> tuple[np.ndarray, np.ndarray]:
    """Crop a random ``lr_patch`` square from ``lr`` and the aligned ``scale*lr_patch`` from ``hr``.

    The crop is drawn on the LR grid; the HR crop starts at ``scale`` times its coordinates.
    Raises ``ValueError`` (naming ``name``) if the pair is misaligned or too small.
    """
    lh, lw = lr.shape[:2]
    hh, hw = hr.shape[:2]
    # HR may carry up to scale-1 extra rows/columns (a cached HR that is not mod-cropped)
    if not (lh * scale <= hh < (lh + 1) * scale and lw * scale <= hw < (lw + 1) * scale):
        raise ValueError(f"{name}: HR size {hw}x{hh} is not {scale}x the LR size {lw}x{lh}")
    if lh < lr_patch or lw < lr_patch:
        raise ValueError(
            f"{name}: LR image {lw}x{lh} is smaller than the LR patch {lr_patch}x{lr_patch} "
            f"(HR patch {lr_patch * scale} at x{scale})"
        )
    top = int(rng.integers(0, lh - lr_patch + 1))
    left = int(rng.integers(0, lw - lr_patch + 1))
    hp = lr_patch * scale
    lr_crop = lr[top : top + lr_patch, left : left + lr_patch]
    hr_crop = hr[top * scale : top * scale + hp, left * scale : left * scale + hp]
    return lr_crop, hr_crop


def augment(
    images: list[np.ndarray], hflip: bool, vflip: bool, transpose: bool
) -> list[np.ndarray]:
    """Apply the same horizontal flip, vertical flip and H/W transpose to every image."""
    out = []
    for img in images:
        if hflip:
            img = img[:, ::-1]
        if vflip:
            img = img[::-1, :]
        if transpose:
            img = img.swapaxes(0, 1)
        out.append(img)
    return out


def to_tensor_chw(img: np.ndarray):
    """uint8 HxWxC (or HxW) array -> float32 torch tensor CxHxW on the 0..255 scale.

    A single-channel image becomes a 3-channel copy, as the network expects RGB.
    """
    import torch

    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    chw = np.ascontiguousarray(img.transpose(2, 0, 1))
    if any(s < 0 for s in chw.strides):  # a flipped 1-pixel side counts as contiguous
        chw = chw.copy()
    return torch.from_numpy(chw).float()
