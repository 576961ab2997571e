"""Image files that Pillow cannot write itself, or writes only with options (test helper)."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np


def _chunk(kind: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(kind + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def write_png16(path: Path, a: np.ndarray) -> None:
    """Write ``a`` (``HxWx3`` uint16) as a 16-bit-per-channel RGB PNG.

    Pillow reads such a file back as 8-bit mode "RGB", dropping the low bytes."""
    h, w, c = a.shape
    assert c == 3 and a.dtype == np.uint16
    raw = b"".join(b"\x00" + a[y].astype(">u2").tobytes() for y in range(h))
    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)  # 16 bits, colour type 2 (RGB)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(raw))
        + _chunk(b"IEND", b"")
    )


def png_bit_depth(path: Path) -> tuple[int, int]:
    """(bit depth, colour type) from the IHDR chunk of a PNG file."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return data[24], data[25]


def random_png16(path: Path, h: int, w: int, seed: int = 0) -> np.ndarray:
    """A 16-bit RGB PNG of random values at ``path`` (checked to be 16-bit); its array."""
    a = np.random.default_rng(seed).integers(0, 65536, (h, w, 3)).astype(np.uint16)
    write_png16(path, a)
    assert png_bit_depth(path) == (16, 2)
    return a
