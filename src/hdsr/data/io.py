"""Reading 8-bit images with errors that name the file."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError


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
