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

A set's score is the mean of its per-image scores. :class:`PSNRY` and :class:`SSIMY` are
torchmetrics ``Metric`` wrappers of :func:`psnr_y` and :func:`ssim_y` that accumulate the
per-image scores (with the image's index in its set) and average them after torchmetrics
has gathered them from every DDP rank, each image counted once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import ClassVar

import numpy as np
import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from hdsr.imaging import to_uint8

__all__ = ["PSNRY", "SSIMY", "psnr_y", "rgb_to_y", "sr_like_hr", "ssim_y"]

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


def mean_over_images(scores: Sequence[float]) -> float:
    """The mean of per-image scores: their sum in the given order, in Python floats, over n.

    The one rule by which hdsr averages a set: validation and test metrics
    (:meth:`PSNRY.compute`), ``hdsr-eval``'s ``results.csv`` and the bicubic baseline.
    The order is the set's (ascending image index), so every path gives the same bits.
    NaN for no scores.
    """
    values = [float(v) for v in scores]
    return sum(values) / len(values) if values else math.nan


def _sr_to_uint8(sr: np.ndarray | torch.Tensor, hr: np.ndarray) -> np.ndarray:
    """The SR image as scored: uint8, channel-last, matched to ``hr`` by :func:`sr_like_hr`.

    A floating torch tensor is the network's output, ``(1, 3, H, W)`` or ``(3, H, W)`` on
    0..255: it is rounded (half to even), clamped to 0..255 and cast to uint8 on its device
    (in at least float32), then moved to the host as ``(H, W, 3)``: exactly SRModule's
    ``to_uint8_image``. Anything else must already be a uint8 image.
    """
    if isinstance(sr, torch.Tensor) and sr.is_floating_point():
        if sr.ndim == 4 and sr.shape[0] == 1:
            sr = sr[0]
        if sr.ndim != 3 or sr.shape[0] != 3:
            raise ValueError(
                "a floating sr tensor must be (1, 3, H, W) or (3, H, W) on 0..255, "
                f"got {tuple(sr.shape)}"
            )
        sr = sr.detach().to(torch.promote_types(sr.dtype, torch.float32))
        sr_u8 = to_uint8(sr).permute(1, 2, 0).cpu()
        return sr_like_hr(sr_u8.numpy(), hr)
    sr_np = _to_numpy(sr, "sr")
    if sr_np.dtype != np.uint8:
        raise ValueError(
            "sr must be a uint8 image (HxWx3 or HxW) or a floating torch tensor "
            f"(1, 3, H, W) on 0..255, got a {sr_np.dtype} {type(sr).__name__}"
        )
    return sr_like_hr(sr_np, hr)


def _image_index(index: int | np.integer | np.ndarray | torch.Tensor) -> int:
    """``index`` as a Python int in ``0 .. 2**53 - 1`` (exact in the float64 state)."""
    if isinstance(index, (np.ndarray, torch.Tensor)):
        if index.ndim > 1 or math.prod(index.shape) != 1:
            raise ValueError(f"index must be one integer, got shape {tuple(index.shape)}")
        index = index.reshape(-1)[0]
        index = index.item() if isinstance(index, torch.Tensor) else index
    if isinstance(index, (bool, np.bool_)) or not isinstance(index, (int, np.integer)):
        raise TypeError(f"index must be an integer, got {type(index).__name__}")
    if not 0 <= index < 2**53:
        raise ValueError(f"index must be in 0 .. 2**53 - 1, got {index}")
    return int(index)


class _PerImageYMetric(Metric):
    """Mean over distinct images of a per-image Y-channel score (see :class:`PSNRY`)."""

    is_differentiable: ClassVar[bool] = False
    higher_is_better: ClassVar[bool] = True
    full_state_update: ClassVar[bool] = False

    indices: list[torch.Tensor] | torch.Tensor
    scores: list[torch.Tensor] | torch.Tensor

    def __init__(self, scale: int, **kwargs) -> None:
        super().__init__(**kwargs)
        if isinstance(scale, bool) or not isinstance(scale, int) or scale < 0:
            raise ValueError(f"scale (the border shaved) must be an int >= 0, got {scale!r}")
        self.scale = scale
        # Both states float64 (indices below 2**53 are exact), one entry per update.
        self.add_state("indices", default=[], dist_reduce_fx="cat")
        self.add_state("scores", default=[], dist_reduce_fx="cat")

    #: the per-image protocol score (:func:`psnr_y` or :func:`ssim_y`), set by each subclass
    _score: Callable[[np.ndarray, np.ndarray, int], float]

    def update(
        self,
        sr: np.ndarray | torch.Tensor,
        hr: np.ndarray | torch.Tensor,
        index: int | np.integer | np.ndarray | torch.Tensor,
    ) -> None:
        """Score one image and keep its score with its index.

        Args:
            sr: the SR image, either a uint8 image (numpy or torch, any device) laid out as
                :func:`psnr_y` takes it, ``(H, W, 3)`` RGB or ``(H, W)`` gray; or the
                network's raw output, a floating torch tensor ``(1, 3, H, W)`` or
                ``(3, H, W)`` on 0..255, which is rounded (half to even), clamped and cast
                to uint8 exactly as ``SRModule`` does (``to_uint8_image``). An RGB SR of a
                gray ``hr`` is reduced to its rounded channel mean (:func:`sr_like_hr`).
            hr: the uint8 ground truth, ``(H, W, 3)`` or ``(H, W)``, numpy or torch.
            index: the image's position in its set (an int, or a one-element integer
                array or tensor), ``0 <= index < 2**53``. Updates with the same index are
                one image: :meth:`compute` and :meth:`per_image` keep one of them.
        """
        i = _image_index(index)
        hr_np = _to_numpy(hr, "hr")
        value = self._score(_sr_to_uint8(sr, hr_np), hr_np, self.scale)
        self.indices.append(torch.tensor([i], dtype=torch.float64, device=self.device))
        self.scores.append(torch.tensor([value], dtype=torch.float64, device=self.device))

    def sync(self, *args, **kwargs) -> None:
        """torchmetrics' ``Metric.sync``, safe on a rank that scored no image.

        torchmetrics gathers an empty list state as an empty tensor of the metric's
        default dtype (float32), which no gather with the other ranks' float64 tensors
        survives (gloo aborts on the size mismatch); an empty float64 tensor is put in the
        empty states first. It holds no score, so the results are unchanged.
        """
        for name in ("indices", "scores"):
            state = getattr(self, name)
            if isinstance(state, list) and not state:
                state.append(torch.empty(0, dtype=torch.float64, device=self.device))
        super().sync(*args, **kwargs)

    def _distinct(self) -> list[tuple[int, float]]:
        """(index, score) per distinct index, ascending; the first of repeats is kept.

        After a sync the states are the ranks' states concatenated in rank order, so a
        repeat keeps the score of the lowest rank that has it.
        """
        if isinstance(self.indices, list) and not self.indices:
            return []
        indices = dim_zero_cat(self.indices).tolist()
        scores = dim_zero_cat(self.scores).tolist()
        by_index: dict[int, float] = {}
        for i, s in zip(indices, scores, strict=True):
            by_index.setdefault(int(i), s)
        return sorted(by_index.items())

    def compute(self) -> torch.Tensor:
        """Mean score over the distinct images of every rank, as a float64 scalar tensor.

        The sum runs over the images in ascending index order in Python floats, so the
        value is bitwise ``sum(scores in index order) / n``, what a single process that
        scored the whole set gets. NaN when no image was scored; ``inf`` for PSNR when an
        image is reproduced exactly.
        """
        mean = mean_over_images([s for _, s in self._distinct()])
        return torch.tensor(mean, dtype=torch.float64, device=self.device)

    def per_image(self) -> list[tuple[int, float]]:
        """``[(index, score)]`` over every rank, each image once, in ascending index order.

        Syncs the states across ranks like :meth:`compute` (and restores the local ones
        afterwards), so in DDP every rank must call it.
        """
        with self.sync_context(dist_sync_fn=self.dist_sync_fn, should_sync=self.sync_on_compute):
            return self._distinct()


class PSNRY(_PerImageYMetric):
    """PSNR on Y (dB), :func:`psnr_y` per image, averaged over the distinct images.

    Args:
        scale: the pixels shaved from every border (the scale factor of the protocol).
        **kwargs: torchmetrics ``Metric`` options (``sync_on_compute``, ``process_group``...).

    ``update(sr, hr, index)`` scores one image (see :meth:`_PerImageYMetric.update` for the
    input contract), ``compute()`` is the set's mean after torchmetrics has gathered the
    states of every DDP rank (float64, exactly the single-process mean in index order),
    ``per_image()`` the ``[(index, score)]`` list behind it. Scores are computed on the
    host in float64; the states live on the metric's device (keep it on the process
    group's device, e.g. CUDA under NCCL).
    """

    _score = staticmethod(psnr_y)


class SSIMY(_PerImageYMetric):
    """SSIM on Y, :func:`ssim_y` per image, averaged over the distinct images.

    Same arguments, input contract and reduction as :class:`PSNRY`.
    """

    _score = staticmethod(ssim_y)
