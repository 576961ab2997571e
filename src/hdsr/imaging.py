"""The leaf every part of hdsr shares: scales, image conversion and I/O.

It imports nothing else of hdsr, so ``models``, ``data``, the library and the commands can
all use it without depending on one another.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

#: the upscaling factors HDSRNet (and the paper's tables) define
SCALES = (2, 3, 4)

def check_scale(scale: int) -> int:
    """Return ``scale`` if HDSRNet supports it, else raise ``ValueError``."""
    if isinstance(scale, bool) or scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    return int(scale)


# -- images ------------------------------------------------------------------------------
def to_uint8(img: torch.Tensor, inplace: bool = False) -> torch.Tensor:
    """Float image(s) on 0..255 -> uint8, rounded half to even and clipped, as evaluated.

    ``inplace`` rounds and clips ``img`` itself (no float copy of a large image)."""
    if inplace:
        return img.round_().clamp_(0, 255).to(torch.uint8)
    return img.round().clamp(0, 255).to(torch.uint8)


def to_uint8_image(sr: torch.Tensor) -> torch.Tensor:
    """(1, 3, H, W) float on 0..255 -> uint8 (H, W, 3) on the CPU (see :func:`to_uint8`)."""
    return to_uint8(sr[0]).permute(1, 2, 0).cpu()


class ImageReadError(ValueError):
    """An image file that cannot be used; the message names it."""


def high_bit_depth(im: Image.Image) -> str:
    """A description if ``im`` stores more than 8 bits per channel that Pillow would
    silently reduce to 8-bit RGB(A)/LA (16-bit PNG and TIFF colour images), else ``""``.

    Call it before ``im.load()``, which empties the tile list it reads for PNG files.
    """
    if im.format == "PNG":
        for tile in im.tile:
            args = tile[3]  # the raw mode, e.g. "RGB;16B"
            raw = args if isinstance(args, str) else " ".join(map(str, args or ()))
            if ";16" in raw:
                return f"16 bits per channel ({raw})"
    elif im.format == "TIFF":
        bits = getattr(im, "tag_v2", {}).get(258)
        bits = bits if isinstance(bits, tuple) else (bits,) if bits else ()
        if any(b > 8 for b in bits):
            return f"{max(bits)} bits per sample"
    return ""


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Decode an 8-bit image to uint8: ``HxWx3`` RGB, or ``HxW`` for a gray image.

    Palette and alpha images are converted to RGB (alpha dropped). 16-bit and float
    images are refused, 16-bit PNG and TIFF colour images included (which Pillow would
    read as 8-bit RGB): benchmark protocols are defined on 8-bit images. The pixels are
    the stored ones, as MATLAB's ``imread`` gives them (EXIF orientation is not applied).
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            deep = high_bit_depth(im)
            im.load()  # decode now, so a truncated file fails here
            mode = im.mode
            if mode not in ("L", "RGB", "P", "PA", "RGBA", "LA", "CMYK", "YCbCr", "1"):
                raise ImageReadError(
                    f"{path}: unsupported image mode {mode!r} (8-bit gray or RGB expected)"
                )
            if deep:
                raise ImageReadError(
                    f"{path}: {deep}; 8-bit images expected (convert it to 8 bits per "
                    "channel first)"
                )
            if mode in ("L", "RGB"):
                arr = np.asarray(im)
            else:
                arr = np.asarray(im.convert("L" if mode in ("LA", "1") else "RGB"))
    except FileNotFoundError:
        raise ImageReadError(f"{path}: file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ImageReadError(f"{path}: cannot decode image ({err})") from None
    return np.array(arr, dtype=np.uint8, order="C")  # a writable copy


def write_png(path: str | os.PathLike[str], img: np.ndarray) -> None:
    """Write a uint8 ``HxWx3`` or ``HxW`` array as PNG."""
    if img.dtype != np.uint8:
        raise ValueError(f"{path}: write_png needs uint8, got {img.dtype}")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)


def center_crop(img: np.ndarray, size: int) -> np.ndarray:
    """The central ``size`` x ``size`` region of an HxW(xC) image (smaller images whole)."""
    h, w = img.shape[:2]
    top, left = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return img[top : top + size, left : left + size]
