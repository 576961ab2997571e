"""(LR, HR) image pairs held in memory as uint8 arrays."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hdsr.data.cache import open_cached
from hdsr.imresize import imresize, modcrop


@dataclass(frozen=True)
class ImagePair:
    """One image at one scale: ``hr`` is HxWx3 (or HxW gray) uint8, ``lr`` is (H/s)x(W/s)x3."""

    name: str
    lr: np.ndarray
    hr: np.ndarray
    scale: int


def check_aligned(lr: np.ndarray, hr: np.ndarray, scale: int, name: str) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``hr`` is exactly ``scale`` x ``lr``."""
    lh, lw = lr.shape[:2]
    hh, hw = hr.shape[:2]
    if (hh, hw) != (lh * scale, lw * scale):
        raise ValueError(
            f"{name}: LR size {lw}x{lh} is not HR size {hw}x{hh} / {scale} "
            f"(expected {hw // scale}x{hh // scale} for the mod-cropped HR)"
        )


def make_pair(name: str, hr: np.ndarray, scale: int) -> ImagePair:
    """Mod-crop ``hr`` to a multiple of ``scale`` and make its LR with MATLAB bicubic."""
    hr = modcrop(np.ascontiguousarray(hr), scale)
    return ImagePair(name=name, lr=imresize(hr, 1.0 / scale), hr=hr, scale=scale)


class CachedPair:
    """An (LR, HR) pair whose arrays live in the decoded-image cache.

    ``lr`` and ``hr`` are read-only memory maps opened on first use in each process; the
    maps are not pickled, so data-loader workers open their own instead of copying data.
    """

    def __init__(self, name: str, lr_path: Path, hr_path: Path, scale: int) -> None:
        self.name = name
        self.lr_path = Path(lr_path)
        self.hr_path = Path(hr_path)
        self.scale = scale
        self._maps: dict[str, np.ndarray] = {}

    def _open(self, which: str) -> np.ndarray:
        if which not in self._maps:
            self._maps[which] = open_cached(self.lr_path if which == "lr" else self.hr_path)
        return self._maps[which]

    @property
    def lr(self) -> np.ndarray:
        return self._open("lr")

    @property
    def hr(self) -> np.ndarray:
        return self._open("hr")

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_maps"} | {"_maps": {}}

    def __repr__(self) -> str:
        return f"CachedPair({self.name!r}, x{self.scale})"
