"""Torch datasets over in-memory (LR, HR) pairs: random training patches, whole images."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from hdsr.data.pairs import ImagePair
from hdsr.data.transforms import augment, paired_random_crop, to_tensor_chw


def lr_patch_size(hr_patch: int, scale: int) -> int:
    """LR patch side for a nominal HR patch: HR 128 gives LR 64, 43 and 32 at x2, x3, x4.

    The HR patch actually cropped is ``scale`` times the LR patch (129 at x3).
    """
    lr_patch = round(hr_patch / scale)
    if lr_patch < 1:
        raise ValueError(f"patch size {hr_patch} is too small for scale {scale}")
    return lr_patch


class TrainPatches(Dataset):
    """Random aligned (LR, HR) patches, ``patches_per_epoch`` per epoch.

    Item ``i`` is a pure function of ``(seed, i)``: the image, the crop and the flips come
    from a generator seeded with both, so the patch order is the same with any number of
    workers and can be replayed. ``PatchSampler`` hands out indices that run on across
    epochs (``epoch * patches_per_epoch + j``).

    Returns ``{"lr": (3, p, p), "hr": (3, s*p, s*p)}`` float32 tensors on 0..255.
    """

    def __init__(
        self,
        pairs: Sequence[ImagePair],
        scale: int,
        hr_patch: int,
        patches_per_epoch: int,
        seed: int = 0,
        flips: bool = True,
    ) -> None:
        if not pairs:
            raise ValueError("the training set is empty")
        self.pairs = list(pairs)
        self.scale = scale
        self.lr_patch = lr_patch_size(hr_patch, scale)
        self.patches_per_epoch = int(patches_per_epoch)
        self.seed = int(seed)
        self.flips = flips
        for p in self.pairs:  # fail now, not in a worker mid-epoch
            if min(p.lr.shape[:2]) < self.lr_patch:
                h, w = p.hr.shape[:2]
                hp = self.lr_patch * scale
                raise ValueError(f"{p.name}: image {w}x{h} is smaller than the HR patch {hp}x{hp}")

    def __len__(self) -> int:
        return self.patches_per_epoch

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng((self.seed, int(index)))
        pair = self.pairs[int(rng.integers(len(self.pairs)))]
        lr, hr = paired_random_crop(pair.lr, pair.hr, self.lr_patch, self.scale, rng, pair.name)
        if self.flips:
            hflip, vflip, transpose = (bool(b) for b in rng.integers(0, 2, size=3))
            lr, hr = augment([lr, hr], hflip, vflip, transpose)
        return {"lr": to_tensor_chw(lr), "hr": to_tensor_chw(hr)}


class PatchSampler(Sampler[int]):
    """Yields ``epoch * n + j`` for ``j < n``; Lightning calls ``set_epoch`` every epoch."""

    def __init__(self, num_samples: int) -> None:
        self.num_samples = int(num_samples)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        start = self.epoch * self.num_samples
        return iter(range(start, start + self.num_samples))

    def __len__(self) -> int:
        return self.num_samples


class WholeImages(Dataset):
    """Whole images for validation/test (batch size 1).

    Returns ``{"lr": (3, h, w) float32 0..255, "hr": uint8 (H, W, 3) or (H, W), "name": str}``.
    """

    def __init__(self, pairs: Sequence[ImagePair], set_name: str) -> None:
        if not pairs:
            raise ValueError(f"validation set {set_name!r} is empty")
        self.pairs = list(pairs)
        self.set_name = set_name

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict:
        p = self.pairs[index]
        return {"lr": to_tensor_chw(p.lr), "hr": torch.from_numpy(p.hr), "name": p.name}
