"""Torch datasets over in-memory (LR, HR) pairs: random training patches, whole images."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

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
    """Patch indices for one rank, as a pure function of the optimizer step.

    Optimizer step ``t`` uses the global batch ``[t * global_batch, (t + 1) * global_batch)``
    of patch indices; rank ``r`` takes ``t * global_batch + r * batch + [0, batch)``. So the
    union over ranks of a step is the same global batch whatever the number of ranks, and
    a run resumed from any step boundary (``step_fn`` returns the trainer's global step
    when an epoch's iterator is created) sees exactly the patches an uninterrupted run
    would, wherever its epochs ended. An epoch is ``num_samples // global_batch`` steps;
    ``len`` is the full epoch, as Lightning expects.
    """

    def __init__(
        self,
        num_samples: int,
        batch_size: int = 1,
        rank: int = 0,
        world_size: int = 1,
        step_fn: Callable[[], int] | None = None,
    ) -> None:
        self.num_samples = int(num_samples)
        self.batch_size = int(batch_size)
        self.rank, self.world_size = int(rank), int(world_size)
        self.global_batch = self.batch_size * self.world_size
        self.steps_per_epoch = self.num_samples // self.global_batch
        if self.steps_per_epoch < 1:
            raise ValueError(
                f"{num_samples} patches per epoch is less than one global batch "
                f"({self.global_batch})"
            )
        self.step_fn = step_fn
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Lightning calls this each epoch; without ``step_fn`` the epoch gives the start."""
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        if self.step_fn is not None:
            first_step = self.step_fn()
        else:
            first_step = self.epoch * self.steps_per_epoch
        for t in range(first_step, first_step + self.steps_per_epoch):
            first = t * self.global_batch + self.rank * self.batch_size
            yield from range(first, first + self.batch_size)

    def __len__(self) -> int:
        return self.steps_per_epoch * self.batch_size


class StepResumableLoader(DataLoader):
    """A DataLoader over a ``PatchSampler`` driven by the trainer's global step.

    Its position is fully restored with the checkpoint's global step, so there is no extra
    state to save; ``state_dict``/``load_state_dict`` tell Lightning it is resumable.
    """

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state_dict: dict) -> None:
        return None


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world, ...`` of ``n`` items: each item on exactly one rank.

    Unlike ``DistributedSampler`` nothing is padded or repeated, so metrics averaged over
    the gathered per-item scores count every image once.
    """

    def __init__(self, n: int, rank: int = 0, world_size: int = 1) -> None:
        self.n, self.rank, self.world_size = n, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world_size))


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
