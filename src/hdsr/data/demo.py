"""Embedded default data: real photographs that scikit-image ships (no download, ever)."""

from __future__ import annotations

from collections.abc import Sequence
from importlib.resources import as_file, files

import numpy as np

from hdsr.data.pairs import ImagePair, make_pair
from hdsr.imaging import read_image

#: Colour photographs bundled inside the scikit-image wheel: the name ``skimage.data``
#: gives each (``motorcycle_left``/``_right``: the views of ``stereo_motorcycle()``) and
#: its file in the wheel's ``data`` folder.
DEMO_FILES = {
    "astronaut": "astronaut.png",
    "chelsea": "chelsea.png",
    "coffee": "coffee.png",
    "rocket": "rocket.jpg",
    "motorcycle_left": "motorcycle_left.png",
    "motorcycle_right": "motorcycle_right.png",
    "hubble_deep_field": "hubble_deep_field.jpg",
    "immunohistochemistry": "ihc.png",
}
DEMO_IMAGES = tuple(DEMO_FILES)


def load_demo_image(name: str) -> np.ndarray:
    """One bundled photograph as a uint8 HxWx3 RGB array: the pixels ``skimage.data``
    returns, decoded from the wheel's file with Pillow directly (``skimage.data`` would
    first import ``skimage.io`` and its plugins, half a second of every run's start)."""
    if name not in DEMO_IMAGES:
        raise ValueError(f"unknown demo image {name!r}; choose from {', '.join(DEMO_IMAGES)}")
    with as_file(files("skimage") / "data" / DEMO_FILES[name]) as path:
        img = read_image(path)
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"demo image {name!r} is not uint8 RGB: {img.dtype} {img.shape}")
    return img


class DemoImages:
    """A list of bundled photographs; ``load(scale)`` returns their (LR, HR) pairs.

    LR images are made from the mod-cropped HR with the MATLAB-compatible bicubic.
    """

    def __init__(self, names: Sequence[str]) -> None:
        if not names:
            raise ValueError("DemoImages needs at least one image name")
        for n in names:
            if n not in DEMO_IMAGES:
                raise ValueError(f"unknown demo image {n!r}; choose from {', '.join(DEMO_IMAGES)}")
        self.names = list(names)

    def load(self, scale: int) -> list[ImagePair]:
        return [make_pair(n, load_demo_image(n), scale) for n in self.names]

    def __repr__(self) -> str:
        return f"DemoImages({self.names})"
