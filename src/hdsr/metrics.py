"""Benchmark metrics of the super-resolution literature: PSNR and SSIM on the Y channel.

Protocol (what makes numbers comparable with published tables):

* RGB uint8 images are converted to Y with MATLAB's ``rgb2ycbcr`` on uint8
  (``Y = round(16 + (65.481 R + 128.553 G + 24.966 B) / 255)``); gray images are used as
  they are.
* ``crop_border`` pixels (usually the scale factor) are shaved from every border.
* PSNR uses peak 255 and is computed in float64 per image.
* SSIM follows Wang et al. 2004: 11x11 Gaussian window (sigma 1.5, normalised),
  K1 = 0.01, K2 = 0.03, L = 255, 'valid' filtering (no padding, like MATLAB
  ``filter2(..., 'valid')``), mean of the SSIM map, all in float64.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = ["psnr_y", "rgb_to_y", "sr_like_hr", "ssim_y"]

_PEAK = 255.0
_SSIM_WINDOW = 11
_SSIM_SIGMA = 1.5
_SSIM_C1 = (0.01 * _PEAK) ** 2
_SSIM_C2 = (0.03 * _PEAK) ** 2


def _to_numpy(img: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    """Return ``img`` as a numpy array; torch tensors are moved to the CPU."""
    if isinstance(img, torch.Tensor):
        return img.detach().cpu().numpy()
    if isinstance(img, np.ndarray):
        return img
    raise TypeError(f"{name} must be a numpy array or torch tensor, got {type(img).__name__}")


def rgb_to_y(img: np.ndarray) -> np.ndarray:
    """Luma of MATLAB ``rgb2ycbcr`` on uint8 input, rounded to integers.

    Args:
        img: ``uint8`` RGB array of shape ``(H, W, 3)`` (0..255), or a gray ``(H, W)``
            array of any real dtype, which is returned unchanged as float64.

    Returns:
        float64 array of shape ``(H, W)``; for RGB input integer values in 16..235.
    """
    if img.ndim == 2:
        return img.astype(np.float64)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 RGB or HxW gray image, got shape {img.shape}")
    if img.dtype != np.uint8:
        raise ValueError(f"rgb_to_y expects uint8 RGB (0..255), got {img.dtype}")
    y = 65.481 * img[..., 0]  # uint8 * float promotes to float64
    y += 128.553 * img[..., 1]
    y += 24.966 * img[..., 2]
    y /= 255.0
    y += 16.0
    # Values are positive, so floor(x + 0.5) is round half away from zero.
    return np.floor(y + 0.5)


def _prepare_pair(
    sr: np.ndarray | torch.Tensor, hr: np.ndarray | torch.Tensor, crop_border: int
) -> tuple[np.ndarray, np.ndarray]:
    """Validate a pair, convert both to Y (float64) and shave ``crop_border`` pixels."""
    sr_np = _to_numpy(sr, "sr")
    hr_np = _to_numpy(hr, "hr")
    for name, arr in (("sr", sr_np), ("hr", hr_np)):
        if arr.dtype != np.uint8:
            raise ValueError(f"{name} must be uint8 (0..255, rounded and clipped), got {arr.dtype}")
        if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] != 3):
            raise ValueError(f"{name} must be HxWx3 RGB or HxW gray, got shape {arr.shape}")
    if sr_np.shape != hr_np.shape:
        raise ValueError(f"shape mismatch: sr {sr_np.shape} vs hr {hr_np.shape}")
    if crop_border < 0:
        raise ValueError(f"crop_border must be >= 0, got {crop_border}")
    h, w = sr_np.shape[:2]
    if h - 2 * crop_border <= 0 or w - 2 * crop_border <= 0:
        raise ValueError(f"crop_border={crop_border} leaves nothing of a {h}x{w} image")
    if crop_border:
        sr_np = sr_np[crop_border:-crop_border, crop_border:-crop_border]
        hr_np = hr_np[crop_border:-crop_border, crop_border:-crop_border]
    return rgb_to_y(sr_np), rgb_to_y(hr_np)


def psnr_y(sr: np.ndarray | torch.Tensor, hr: np.ndarray | torch.Tensor, crop_border: int) -> float:
    """PSNR (dB, peak 255) between the Y channels of two images.

    Args:
        sr: ``uint8`` array or CPU/GPU tensor, ``(H, W, 3)`` RGB or ``(H, W)`` gray,
            values 0..255.
        hr: same shape and dtype as ``sr``.
        crop_border: pixels shaved from every border before comparing (usually the
            scale factor); must leave at least one pixel.

    Returns:
        PSNR in dB as a Python float; ``inf`` when the cropped Y channels are identical.

    Raises:
        ValueError: on a shape mismatch, a non-uint8 dtype or a too-large crop.
    """
    sr_y, hr_y = _prepare_pair(sr, hr, crop_border)
    mse = float(np.mean((sr_y - hr_y) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(_PEAK**2 / mse)


def _gaussian_window_1d() -> np.ndarray:
    """Normalised 1-D Gaussian (11 taps, sigma 1.5), float64, shape ``(11,)``.

    Its outer product with itself equals MATLAB ``fspecial('gaussian', 11, 1.5)``.
    """
    x = np.arange(_SSIM_WINDOW, dtype=np.float64) - (_SSIM_WINDOW - 1) / 2
    g = np.exp(-(x**2) / (2 * _SSIM_SIGMA**2))
    return g / g.sum()


_GAUSS = _gaussian_window_1d()
_SSIM_BAND = 64  # output rows filtered at a time; keeps the working set in cache


def _filter_valid(maps: np.ndarray) -> np.ndarray:
    """Separable Gaussian 'valid' filtering of the last two axes.

    ``maps`` is float64 ``(..., h, w)``; the result is ``(..., h - 10, w - 10)``. The
    window is symmetric, so mirrored taps are added before multiplying.
    """
    half = _SSIM_WINDOW // 2
    w_out = maps.shape[-1] - 2 * half
    rows = maps[..., half : half + w_out] * _GAUSS[half]
    for k in range(half):
        rows += (
            maps[..., k : k + w_out] + maps[..., 2 * half - k : 2 * half - k + w_out]
        ) * _GAUSS[k]
    h_out = rows.shape[-2] - 2 * half
    out = rows[..., half : half + h_out, :] * _GAUSS[half]
    for k in range(half):
        out += (
            rows[..., k : k + h_out, :] + rows[..., 2 * half - k : 2 * half - k + h_out, :]
        ) * _GAUSS[k]
    return out


def _ssim_map_mean(img1: np.ndarray, img2: np.ndarray) -> float:
    """Mean SSIM map of two float64 ``(H, W)`` arrays, 'valid' Gaussian filtering.

    Only sigma1^2 + sigma2^2 enters the formula, so E[x^2 + y^2] is filtered as one map
    (four filtered maps instead of five). Rows are processed in bands for speed.
    """
    h, w = img1.shape
    if h < _SSIM_WINDOW or w < _SSIM_WINDOW:
        raise ValueError(
            f"SSIM needs at least {_SSIM_WINDOW}x{_SSIM_WINDOW} pixels after cropping, got {h}x{w}"
        )
    pad = _SSIM_WINDOW - 1
    total = 0.0
    for r0 in range(0, h - pad, _SSIM_BAND):
        r1 = min(r0 + _SSIM_BAND, h - pad) + pad
        a = img1[r0:r1]
        b = img2[r0:r1]
        mu1, mu2, e_sq, e_12 = _filter_valid(np.stack([a, b, a * a + b * b, a * b]))
        mu12 = mu1 * mu2
        mu_sq = mu1 * mu1 + mu2 * mu2
        numerator = (2 * mu12 + _SSIM_C1) * (2 * (e_12 - mu12) + _SSIM_C2)
        denominator = (mu_sq + _SSIM_C1) * (e_sq - mu_sq + _SSIM_C2)
        total += float((numerator / denominator).sum())
    return total / ((h - pad) * (w - pad))


def ssim_y(sr: np.ndarray | torch.Tensor, hr: np.ndarray | torch.Tensor, crop_border: int) -> float:
    """SSIM (Wang et al. 2004) between the Y channels of two images.

    Args:
        sr: ``uint8`` array or tensor, ``(H, W, 3)`` RGB or ``(H, W)`` gray, 0..255.
        hr: same shape and dtype as ``sr``.
        crop_border: pixels shaved from every border first; at least 11x11 pixels must
            remain for the 'valid' window.

    Returns:
        Mean of the SSIM map as a Python float (1.0 for identical images; at most 1).

    Raises:
        ValueError: on a shape mismatch, a non-uint8 dtype or a too-large crop.
    """
    sr_y, hr_y = _prepare_pair(sr, hr, crop_border)
    return _ssim_map_mean(sr_y, hr_y)


def sr_like_hr(sr: np.ndarray, hr: np.ndarray) -> np.ndarray:
    """Match an RGB uint8 SR output to a gray HR: the rounded channel mean, else ``sr``.

    The network always sees 3 channels (a gray LR is copied to RGB), so its output for a
    gray image is RGB with near-equal channels; the gray HR is compared as it is.
    """
    if hr.ndim == 2 and sr.ndim == 3:
        return np.round(sr.astype(np.float64).mean(axis=2)).astype(np.uint8)
    return sr
