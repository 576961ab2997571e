"""(LR, HR) image pairs held in memory as uint8 arrays."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hdsr.data.imresize import imresize, modcrop


@dataclass(frozen=True)
class ImagePair:
    """One image at one scale: ``hr`` is HxWx3 (or HxW gray) uint8, ``lr`` is (H/s)x(W/s)x3."""

    name: str
    lr: np.ndarray
    hr: np.ndarray
    scale: int


def make_pair(name: str, hr: np.ndarray, scale: int) -> ImagePair:
    """Mod-crop ``hr`` to a multiple of ``scale`` and make its LR with MATLAB bicubic."""
    hr = modcrop(np.ascontiguousarray(hr), scale)
    return ImagePair(name=name, lr=imresize(hr, 1.0 / scale), hr=hr, scale=scale)
