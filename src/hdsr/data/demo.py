"""Embedded default data: real photographs that scikit-image ships (no download, ever)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from hdsr.data.pairs import ImagePair, make_pair

#: Colour photographs bundled inside the scikit-image wheel.
DEMO_IMAGES = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "motorcycle_left",
    "motorcycle_right",
    "hubble_deep_field",
    "immunohistochemistry",
)


def load_demo_image(name: str) -> np.ndarray:
    """One bundled photograph as a uint8 HxWx3 RGB array."""
    if name not in DEMO_IMAGES:
        raise ValueError(f"unknown demo image {name!r}; choose from {', '.join(DEMO_IMAGES)}")
    import skimage.data

    if name.startswith("motorcycle_"):  # the left/right views of skimage's stereo pair
        left, right, _ = skimage.data.stereo_motorcycle()
        img = left if name == "motorcycle_left" else right
    else:
        img = getattr(skimage.data, name)()
    img = np.asarray(img)
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
