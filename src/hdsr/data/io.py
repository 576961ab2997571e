"""Reading 8-bit images with errors that name the file."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError


class ImageReadError(ValueError):
    """An image file that cannot be used; the message names it."""


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Decode an 8-bit image to uint8: ``HxWx3`` RGB, or ``HxW`` for a gray image.

    Palette and alpha images are converted to RGB (alpha dropped). 16-bit and float
    images are refused: benchmark protocols are defined on 8-bit images.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()  # decode now, so a truncated file fails here
            mode = im.mode
            if mode in ("L", "RGB"):
                arr = np.asarray(im)
            elif mode in ("P", "PA", "RGBA", "LA", "CMYK", "YCbCr", "1"):
                arr = np.asarray(im.convert("L" if mode in ("LA", "1") else "RGB"))
            else:
                raise ImageReadError(
                    f"{path}: unsupported image mode {mode!r} (8-bit gray or RGB expected)"
                )
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
