"""MATLAB-parity and behaviour tests for hdsr.imresize."""

from __future__ import annotations

import hashlib
import json
from functools import cache

import numpy as np
import pytest
import skimage.data

from hdsr.imresize import imresize, modcrop
from helpers import FIXTURES

FIXTURE = json.loads((FIXTURES / "matlab_bicubic.json").read_text())
IMAGES = sorted(FIXTURE["images"])
SCALES = (2, 3, 4)


@cache
def hr_image(name: str) -> np.ndarray:
    """HR uint8 RGB image from scikit-image, loaded once per test session."""
    img = getattr(skimage.data, name)()
    img.setflags(write=False)
    return img


@cache
def lr_sr(name: str, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """(LR, bicubic SR) pair built from the modcropped HR image, computed once."""
    lr = imresize(modcrop(hr_image(name), scale), 1 / scale)
    return lr, imresize(lr, scale)


def sha256(arr: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()


@pytest.mark.parametrize("name", IMAGES)
def test_hr_shape_matches_fixture(name: str) -> None:
    assert list(hr_image(name).shape) == FIXTURE["images"][name]["hr_shape"]


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("name", IMAGES)
def test_lr_bit_exact(name: str, scale: int) -> None:
    expected = FIXTURE["images"][name][f"x{scale}"]
    lr, _ = lr_sr(name, scale)
    assert lr.dtype == np.uint8
    assert list(lr.shape) == expected["lr_shape"]
    assert lr[0, :4].tolist() == expected["lr_first_pixels"]
    assert sha256(lr) == expected["lr_sha256"]


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("name", IMAGES)
def test_bicubic_sr_bit_exact(name: str, scale: int) -> None:
    expected = FIXTURE["images"][name][f"x{scale}"]
    _, sr = lr_sr(name, scale)
    assert sr.dtype == np.uint8
    assert sr.shape == modcrop(hr_image(name), scale).shape
    assert sha256(sr) == expected["sr_sha256"]


def test_output_size_guards_float_error() -> None:
    img = np.zeros((510, 513, 3), dtype=np.uint8)
    assert imresize(img, 1 / 3).shape == (170, 171, 3)
    assert imresize(np.zeros((10, 7), dtype=np.uint8), 0.5).shape == (5, 4)  # ceil(3.5)


def test_output_shape_argument() -> None:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (48, 36, 3), dtype=np.uint8)
    out = imresize(img, None, output_shape=(24, 9))
    assert out.shape == (24, 9, 3)
    # A uniform factor given as a shape gives the same result as the factor itself.
    np.testing.assert_array_equal(imresize(img, None, output_shape=(12, 9)), imresize(img, 0.25))


def test_uint8_in_uint8_out() -> None:
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)
    for scale in (0.5, 1 / 3, 2, 3):
        assert imresize(img, scale).dtype == np.uint8


def test_float_input_is_float64_and_not_rounded() -> None:
    rng = np.random.default_rng(2)
    img8 = rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)
    for dtype in (np.float32, np.float64):
        out = imresize(img8.astype(dtype), 0.25)
        assert out.dtype == np.float64
        assert out.shape == (10, 8, 3)
        assert np.any(out != np.round(out))
    # Overshoot from the negative lobes is kept: no clipping to 0..255 for floats.
    edge = np.zeros((16, 16))
    edge[:, 8:] = 255.0
    up = imresize(edge, 4)
    assert up.min() < 0 and up.max() > 255


def test_uint8_rounds_each_pass() -> None:
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, (37, 41, 3), dtype=np.uint8)
    out8 = imresize(img, 0.5)
    out_float = imresize(img.astype(np.float64), 0.5)
    # Rounding between the passes keeps the uint8 result within 1 of the float one.
    assert np.abs(out8.astype(np.float64) - out_float).max() <= 1.0
    assert np.any(out8 != np.clip(np.floor(out_float + 0.5), 0, 255))


def test_gray_matches_per_channel() -> None:
    rng = np.random.default_rng(4)
    img = rng.integers(0, 256, (33, 27, 3), dtype=np.uint8)
    for scale in (0.25, 3):
        color = imresize(img, scale)
        for c in range(3):
            gray = imresize(img[..., c], scale)
            assert gray.ndim == 2
            np.testing.assert_array_equal(gray, color[..., c])


def test_scale_one_is_identity() -> None:
    rng = np.random.default_rng(5)
    img = rng.integers(0, 256, (20, 25, 3), dtype=np.uint8)
    np.testing.assert_array_equal(imresize(img, 1), img)


def test_constant_image_stays_constant() -> None:
    img = np.full((30, 42, 3), 77, dtype=np.uint8)
    for scale in (0.25, 1 / 3, 2, 4):
        out = imresize(img, scale)
        assert np.all(out == 77)


def test_boundary_rules_differ_only_near_borders() -> None:
    rng = np.random.default_rng(6)
    img = rng.random((64, 64))
    clamp = imresize(img, 0.25, boundary="clamp")
    symmetric = imresize(img, 0.25, boundary="symmetric")
    assert not np.array_equal(clamp, symmetric)
    # With an x4 kernel (16 input pixels wide), output pixels 2..13 see no outside taps.
    np.testing.assert_array_equal(clamp[2:-2, 2:-2], symmetric[2:-2, 2:-2])


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        imresize(np.zeros((4, 4, 3, 1), dtype=np.uint8), 0.5)
    with pytest.raises(ValueError):
        imresize(np.zeros((4, 4), dtype=np.int32), 0.5)
    with pytest.raises(ValueError):
        imresize(np.zeros((4, 4), dtype=np.uint8), 0)
    with pytest.raises(ValueError):
        imresize(np.zeros((4, 4), dtype=np.uint8), None)
    with pytest.raises(ValueError):
        imresize(np.zeros((4, 4), dtype=np.uint8), 0.5, boundary="reflect")  # type: ignore[arg-type]


def test_modcrop() -> None:
    img = np.arange(7 * 10 * 3).reshape(7, 10, 3)
    assert modcrop(img, 3).shape == (6, 9, 3)
    assert modcrop(img, 2).shape == (6, 10, 3)
    assert modcrop(img[..., 0], 4).shape == (4, 8)
    np.testing.assert_array_equal(modcrop(img, 3), img[:6, :9])
    with pytest.raises(ValueError):
        modcrop(img, 0)
