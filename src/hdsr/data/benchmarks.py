"""Benchmark sets (Set5, Set14, B100, Urban100) in the layout most SR tools use.

    <root>/<Set>/HR/<name>.png
    <root>/<Set>/LR_bicubic/X<s>/<name>x<s>.png      (optional)

HR is mod-cropped to a multiple of the scale. When the LR folder is absent, LR images are
made from the mod-cropped HR with the MATLAB-compatible bicubic. Gray images stay gray:
the network gets a 3-channel copy and the metrics use the gray image as Y. Images are named
by their stem, so two files of the same stem (``a.png`` and ``a.bmp``) are refused.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from hdsr.data.pairs import ImagePair, check_aligned
from hdsr.imaging import read_image
from hdsr.imresize import imresize, modcrop

log = logging.getLogger(__name__)

#: folder names tried, in order, for each canonical set name
ALIASES: dict[str, tuple[str, ...]] = {
    "Set5": ("Set5",),
    "Set14": ("Set14",),
    "B100": ("B100", "BSD100", "BSDS100"),
    "Urban100": ("Urban100", "U100"),
}
IMAGE_SUFFIXES = (".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff")
LAYOUT = (
    "expected <root>/<Set>/HR/<name>.png and optionally <root>/<Set>/LR_bicubic/X<s>/<name>x<s>.png"
)


class BenchmarkImages:
    """One benchmark set under ``root``.

    Args:
        root: folder holding the set folders.
        name: the set's name in metric keys (``val/psnr_y/<name>``).
        folders: folder names to look for, first found wins (default: the common aliases
            of ``name``, e.g. B100 or BSD100).
    """

    def __init__(self, root: str | Path, name: str, folders: Sequence[str] | None = None) -> None:
        self.root = Path(root).expanduser()
        self.name = name
        self.folders = tuple(folders) if folders else ALIASES.get(name, (name,))

    def set_dir(self) -> Path:
        if not self.root.is_dir():
            raise FileNotFoundError(f"benchmark root {self.root} does not exist; {LAYOUT}")
        for folder in self.folders:
            if (self.root / folder).is_dir():
                return self.root / folder
        tried = ", ".join(str(self.root / f) for f in self.folders)
        raise FileNotFoundError(f"benchmark set {self.name!r} not found (tried {tried}); {LAYOUT}")

    def load(self, scale: int) -> list[ImagePair]:
        set_dir = self.set_dir()
        hr_dir = set_dir / "HR"
        if not hr_dir.is_dir():
            raise FileNotFoundError(f"{hr_dir} does not exist; {LAYOUT}")
        hr_files = sorted(p for p in hr_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not hr_files:
            raise ValueError(f"benchmark set {self.name!r} is empty: no images in {hr_dir}")
        _refuse_same_names(self.name, hr_files)
        lr_dir = set_dir / "LR_bicubic" / f"X{scale}"
        if not lr_dir.is_dir():
            log.info(
                "%s not found: making x%d LR with the MATLAB-compatible bicubic", lr_dir, scale
            )
        pairs = []
        for hr_path in hr_files:
            hr = modcrop(read_image(hr_path), scale)
            if lr_dir.is_dir():
                lr_path = lr_dir / f"{hr_path.stem}x{scale}{hr_path.suffix}"
                if not lr_path.is_file():
                    raise FileNotFoundError(f"{lr_path} is missing (the LR of {hr_path})")
                lr = read_image(lr_path)
                check_aligned(lr, hr, scale, str(lr_path))
            else:
                lr = imresize(hr, 1.0 / scale)
            pairs.append(ImagePair(hr_path.stem, lr, hr, scale))
        return pairs

    def __repr__(self) -> str:
        return f"BenchmarkImages({str(self.root)!r}, {self.name!r})"


def _refuse_same_names(set_name: str, files: Sequence[Path]) -> None:
    """Raise ``ValueError`` naming both files when two images share a name (their stem):
    they would give two result rows of that name, and one saved image would replace the
    other."""
    seen: dict[str, Path] = {}
    for path in files:
        if path.stem in seen:
            raise ValueError(
                f"benchmark set {set_name!r}: {seen[path.stem]} and {path} have the same name "
                f"{path.stem!r} (images are named by their stem); keep only one of them"
            )
        seen[path.stem] = path
