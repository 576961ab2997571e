"""Tests for hdsr.metrics: MATLAB-parity PSNR/SSIM on Y and input validation."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from functools import cache

import numpy as np
import pytest
import skimage.data
import torch
import torch.nn.functional as F

from hdsr.data import imresize, modcrop
from hdsr.metrics import psnr_y, rgb_to_y, ssim_y
from helpers import FIXTURES

FIXTURE = json.loads((FIXTURES / "matlab_bicubic.json").read_text())
IMAGES = sorted(FIXTURE["images"])
SCALES = (2, 3, 4)
TOL = 1e-6  # the fixture rounds to 6 decimals

Metric = Callable[[np.ndarray, np.ndarray, int], float]


@cache
def hr_sr(name: str, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """(modcropped HR, bicubic SR) uint8 RGB pair, computed once per session."""
    hr = modcrop(getattr(skimage.data, name)(), scale)
    sr = imresize(imresize(hr, 1 / scale), scale)
    return hr, sr


def random_pair(shape: tuple[int, ...], seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    hr = rng.integers(0, 256, shape, dtype=np.uint8)
    noise = rng.integers(-20, 21, shape)
    sr = np.clip(hr.astype(np.int64) + noise, 0, 255).astype(np.uint8)
    return sr, hr


def reference_ssim(y1: np.ndarray, y2: np.ndarray) -> float:
    """Textbook SSIM: full 11x11 window, five filtered maps, one 'valid' conv2d."""
    x = torch.arange(11, dtype=torch.float64) - 5
    g = torch.exp(-(x**2) / (2 * 1.5**2))
    window = torch.outer(g, g)
    window = (window / window.sum()).view(1, 1, 11, 11)
    a = torch.from_numpy(y1)[None, None]
    b = torch.from_numpy(y2)[None, None]
    mu1, mu2 = F.conv2d(a, window), F.conv2d(b, window)
    s11 = F.conv2d(a * a, window) - mu1**2
    s22 = F.conv2d(b * b, window) - mu2**2
    s12 = F.conv2d(a * b, window) - mu1 * mu2
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    ssim_map = ((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1**2 + mu2**2 + c1) * (s11 + s22 + c2))
    return float(ssim_map.mean())


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("name", IMAGES)
def test_bicubic_psnr_matches_fixture(name: str, scale: int) -> None:
    hr, sr = hr_sr(name, scale)
    expected = FIXTURE["images"][name][f"x{scale}"]["bicubic_psnr_y"]
    assert psnr_y(sr, hr, scale) == pytest.approx(expected, abs=TOL)


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("name", IMAGES)
def test_bicubic_ssim_matches_fixture(name: str, scale: int) -> None:
    hr, sr = hr_sr(name, scale)
    expected = FIXTURE["images"][name][f"x{scale}"]["bicubic_ssim_y"]
    assert ssim_y(sr, hr, scale) == pytest.approx(expected, abs=TOL)


def test_rgb_to_y_known_values() -> None:
    img = np.array([[[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255]]], np.uint8)
    y = rgb_to_y(img)
    assert y.dtype == np.float64
    assert y.shape == (1, 5)
    # 16 + 65.481 = 81.481 -> 81; 16 + 128.553 -> 145; 16 + 24.966 -> 41.
    np.testing.assert_array_equal(y, [[16, 235, 81, 145, 41]])


def test_rgb_to_y_gray_passthrough() -> None:
    gray = np.arange(12, dtype=np.uint8).reshape(3, 4)
    y = rgb_to_y(gray)
    assert y.dtype == np.float64
    np.testing.assert_array_equal(y, gray)


def test_rgb_to_y_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        rgb_to_y(np.zeros((4, 4, 3), dtype=np.float32))
    with pytest.raises(ValueError):
        rgb_to_y(np.zeros((4, 4, 4), dtype=np.uint8))


@pytest.mark.parametrize("shape", [(40, 30, 3), (40, 30)])
def test_identical_images(shape: tuple[int, ...]) -> None:
    _, hr = random_pair(shape)
    assert psnr_y(hr, hr.copy(), 4) == math.inf
    assert ssim_y(hr, hr.copy(), 4) == pytest.approx(1.0, abs=1e-12)


def test_psnr_known_value_gray() -> None:
    hr = np.full((20, 20), 100, dtype=np.uint8)
    sr = hr + np.uint8(1)  # MSE 1 -> PSNR = 20 log10(255)
    assert psnr_y(sr, hr, 2) == pytest.approx(20 * math.log10(255), abs=1e-12)


def test_crop_border_is_applied() -> None:
    hr = np.full((20, 20), 100, dtype=np.uint8)
    sr = hr.copy()
    sr[:3] = 0  # damage only the top three rows
    assert psnr_y(sr, hr, 3) == math.inf
    assert psnr_y(sr, hr, 2) < 30


def test_ssim_matches_reference_across_bands() -> None:
    # Large enough for several row bands plus a partial one, odd sizes on purpose.
    sr, hr = random_pair((157, 83, 3), seed=7)
    expected = reference_ssim(rgb_to_y(sr[2:-2, 2:-2]), rgb_to_y(hr[2:-2, 2:-2]))
    assert ssim_y(sr, hr, 2) == pytest.approx(expected, abs=1e-12)


def test_metrics_symmetric_and_bounded() -> None:
    sr, hr = random_pair((64, 48, 3), seed=8)
    assert psnr_y(sr, hr, 2) == pytest.approx(psnr_y(hr, sr, 2), abs=1e-12)
    assert ssim_y(sr, hr, 2) == pytest.approx(ssim_y(hr, sr, 2), abs=1e-12)
    assert -1.0 <= ssim_y(sr, hr, 2) < 1.0


def test_accepts_torch_tensors() -> None:
    sr, hr = random_pair((32, 24, 3), seed=9)
    sr_t, hr_t = torch.from_numpy(sr), torch.from_numpy(hr)
    assert psnr_y(sr_t, hr_t, 2) == psnr_y(sr, hr, 2)
    assert ssim_y(sr_t, hr_t, 2) == ssim_y(sr, hr, 2)


@pytest.mark.parametrize("metric", [psnr_y, ssim_y])
def test_shape_mismatch_raises(metric: Metric) -> None:
    a = np.zeros((32, 32, 3), dtype=np.uint8)
    b = np.zeros((32, 30, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="shape mismatch"):
        metric(a, b, 2)
    with pytest.raises(ValueError, match="shape mismatch"):
        metric(a, a[..., 0], 2)


@pytest.mark.parametrize("metric", [psnr_y, ssim_y])
def test_non_uint8_raises(metric: Metric) -> None:
    a = np.zeros((32, 32, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="uint8"):
        metric(a.astype(np.float32), a, 2)
    with pytest.raises(ValueError, match="uint8"):
        metric(a, a.astype(np.float64), 2)


@pytest.mark.parametrize("metric", [psnr_y, ssim_y])
def test_crop_too_large_raises(metric: Metric) -> None:
    a = np.zeros((20, 30, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match="crop_border"):
        metric(a, a, 10)
    with pytest.raises(ValueError, match="crop_border"):
        metric(a, a, -1)


def test_ssim_needs_a_full_window() -> None:
    a = np.zeros((20, 30, 3), dtype=np.uint8)
    assert psnr_y(a, a, 5) == math.inf  # 10x20 is fine for PSNR
    with pytest.raises(ValueError, match="11x11"):
        ssim_y(a, a, 5)
