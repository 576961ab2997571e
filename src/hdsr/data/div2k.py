"""DIV2K in its official layout, decoded once into the memory-mapped cache.

    <root>/DIV2K_train_HR/0001.png ... 0800.png
    <root>/DIV2K_train_LR_bicubic/X{2,3,4}/0001x{s}.png
    <root>/DIV2K_valid_HR/0801.png ... 0900.png
    <root>/DIV2K_valid_LR_bicubic/X{s}/0801x{s}.png

When an LR folder is missing, LR images are made from the mod-cropped HR with the
MATLAB-compatible bicubic (once; they are cached).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from hdsr.data.cache import ensure_cached, is_valid, source_record
from hdsr.data.pairs import CachedPair, check_aligned
from hdsr.imaging import read_image
from hdsr.imresize import imresize, modcrop

log = logging.getLogger(__name__)

LAYOUT = (
    "expected the official DIV2K layout: DIV2K_train_HR/0001.png, "
    "DIV2K_train_LR_bicubic/X<s>/0001x<s>.png, DIV2K_valid_HR/0801.png, "
    "DIV2K_valid_LR_bicubic/X<s>/0801x<s>.png"
)


def _split(index: int) -> str:
    return "train" if index <= 800 else "valid"


class DIV2KImages:
    """DIV2K images ``ranges`` (inclusive, 1-based; default 1-900 = train + valid).

    Args:
        root: folder holding the ``DIV2K_*`` folders.
        ranges: list of ``[first, last]`` image numbers.
        cache_dir: where decoded ``.npy`` files go (default ``<root>/.hdsr_cache``).
    """

    def __init__(
        self,
        root: str | Path,
        ranges: Sequence[Sequence[int]] = ((1, 900),),
        cache_dir: str | Path | None = None,
    ) -> None:
        self.root = Path(root).expanduser()
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else self.root / ".hdsr_cache"
        self.indices: list[int] = []
        for r in ranges:
            first, last = int(r[0]), int(r[1])
            if not 1 <= first <= last:
                raise ValueError(f"bad DIV2K range {list(r)}: need 1 <= first <= last")
            self.indices += range(first, last + 1)
        if not self.indices:
            raise ValueError("DIV2K ranges select no image")

    # paths --------------------------------------------------------------------------
    def hr_path(self, i: int) -> Path:
        return self.root / f"DIV2K_{_split(i)}_HR" / f"{i:04d}.png"

    def lr_dir(self, i: int, scale: int) -> Path:
        return self.root / f"DIV2K_{_split(i)}_LR_bicubic" / f"X{scale}"

    def lr_path(self, i: int, scale: int) -> Path:
        return self.lr_dir(i, scale) / f"{i:04d}x{scale}.png"

    def _entries(self, i: int, scale: int) -> tuple[Path, Path]:
        split = _split(i)
        hr = self.cache_dir / f"DIV2K_{split}_HR" / f"{i:04d}.npy"
        lr = self.cache_dir / f"DIV2K_{split}_LR_bicubic" / f"X{scale}" / f"{i:04d}x{scale}.npy"
        return lr, hr

    def _check_layout(self, scale: int) -> dict[str, bool]:
        """Raise on a missing root or HR folder; return {LR folder: present}."""
        if not self.root.is_dir():
            raise FileNotFoundError(f"DIV2K root {self.root} does not exist; {LAYOUT}")
        lr_present = {}
        for split in sorted({_split(i) for i in self.indices}):
            hr_dir = self.root / f"DIV2K_{split}_HR"
            if not hr_dir.is_dir():
                raise FileNotFoundError(f"DIV2K folder {hr_dir} does not exist; {LAYOUT}")
            lr_dir = self.root / f"DIV2K_{split}_LR_bicubic" / f"X{scale}"
            lr_present[str(lr_dir)] = lr_dir.is_dir()
        for i in self.indices:
            if not self.hr_path(i).is_file():
                raise FileNotFoundError(f"DIV2K image {self.hr_path(i)} is missing; {LAYOUT}")
        return lr_present

    # building -----------------------------------------------------------------------
    def prepare(self, scale: int, progress: bool = True) -> int:
        """Decode (and where needed generate) every image into the cache; return builds."""
        lr_present = self._check_layout(scale)
        for lr_dir, present in lr_present.items():
            if not present:
                log.warning(
                    "%s not found: generating x%d LR images from HR with the MATLAB-compatible "
                    "bicubic, once (cached in %s)",
                    lr_dir,
                    scale,
                    self.cache_dir,
                )
        todo = [i for i in self.indices if not self._is_cached(i, scale)]
        if not todo:
            return 0
        built = 0
        for i in _track(todo, f"Caching DIV2K x{scale} in {self.cache_dir}", progress):
            lr_entry, hr_entry = self._entries(i, scale)
            built += ensure_cached(
                hr_entry, self.hr_path(i), "hr", lambda i=i: read_image(self.hr_path(i))
            )
            lr_src, lr_tag = self._source(i, scale)
            built += ensure_cached(lr_entry, lr_src, lr_tag, lambda i=i: self._make_lr(i, scale))
        return built

    def _make_lr(self, i: int, scale: int):
        """The LR image from its file (checked against the HR size) or generated from HR."""
        hr = modcrop(read_image(self.hr_path(i)), scale)
        if not self.lr_dir(i, scale).is_dir():
            return imresize(hr, 1.0 / scale)
        lr = read_image(self.lr_path(i, scale))
        check_aligned(lr, hr, scale, str(self.lr_path(i, scale)))
        return lr

    def _source(self, i: int, scale: int) -> tuple[Path, str]:
        if self.lr_dir(i, scale).is_dir():
            return self.lr_path(i, scale), "lr"
        return self.hr_path(i), f"matlab-bicubic-x{scale}"

    def _is_cached(self, i: int, scale: int) -> bool:
        lr_entry, hr_entry = self._entries(i, scale)
        lr_src, lr_tag = self._source(i, scale)
        try:
            return is_valid(hr_entry, source_record(self.hr_path(i), "hr")) and is_valid(
                lr_entry, source_record(lr_src, lr_tag)
            )
        except FileNotFoundError:
            return False

    def load(self, scale: int) -> list[CachedPair]:
        """The cached pairs (building whatever is missing or stale first)."""
        self.prepare(scale, progress=False)
        pairs = []
        for i in self.indices:
            lr_entry, hr_entry = self._entries(i, scale)
            pairs.append(CachedPair(f"{i:04d}", lr_entry, hr_entry, scale))
        return pairs

    def __repr__(self) -> str:
        return f"DIV2KImages({str(self.root)!r}, {len(self.indices)} images)"


def _track(items, description: str, progress: bool):
    if not progress:
        return items
    from rich.progress import track

    return track(items, description=description)
