"""Sizes written as text, as the commands and configs take them: memory sizes (``8G``,
``512M``) and image sizes (``256x256``)."""

from __future__ import annotations

import argparse
import re

_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_memory(text: str | int) -> int:
    """``"8G"``, ``"512M"``, ``"1.5GiB"``, ``"800MB"``, ``"2000000000"`` -> bytes.

    Units are binary (K = 1024); B, iB and a bare number (bytes) are accepted. Raises
    ``ValueError`` naming the text for anything else or a size under one byte.
    """
    if isinstance(text, int) and not isinstance(text, bool):
        value = text
    else:
        m = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgt]?)(?:i?b)?\s*", str(text).lower())
        if not m:
            raise ValueError(
                f"memory size must be a number with an optional unit K, M, G or T "
                f"(e.g. 8G, 512M), got {text!r}"
            )
        value = int(float(m.group(1)) * _UNITS[m.group(2)])
    if value < 1:
        raise ValueError(f"memory size must be at least 1 byte, got {text!r}")
    return value


def format_memory(n: float) -> str:
    """Bytes as a short human string: ``1.5 GiB``, ``840 MiB``."""
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            value = n / size
            return f"{value:.1f} {unit}" if value < 100 else f"{value:.0f} {unit}"
    return f"{int(n)} B"


def parse_size(text: str) -> tuple[int, int]:
    """``"256x256"`` (H x W) or ``"256"`` -> ``(256, 256)``; raises
    ``argparse.ArgumentTypeError`` for anything else, so it serves as an argparse ``type``."""
    parts = str(text).lower().split("x")
    try:
        hw = tuple(int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be HxW or N, got {text!r}") from None
    if len(hw) == 1:
        hw = (hw[0], hw[0])
    if len(hw) != 2 or min(hw) < 1:
        raise argparse.ArgumentTypeError(f"size must be HxW with positive sides, got {text!r}")
    return hw  # type: ignore[return-value]
