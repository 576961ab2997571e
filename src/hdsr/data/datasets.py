"""Torch datasets over in-memory (LR, HR) pairs: random training patches, whole images."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from hdsr.data.pairs import ImagePair
from hdsr.data.transforms import augment, to_tensor_chw


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

    def patch_params(self, index: int) -> tuple[int, int, int, bool, bool, bool]:
        """(image, LR top, LR left, hflip, vflip, transpose) of patch ``index``."""
        rng = np.random.default_rng((self.seed, int(index)))
        image = int(rng.integers(len(self.pairs)))
        pair = self.pairs[image]
        lh, lw = pair.lr.shape[:2]
        top = int(rng.integers(0, lh - self.lr_patch + 1))
        left = int(rng.integers(0, lw - self.lr_patch + 1))
        flips = (False, False, False)
        if self.flips:
            flips = tuple(bool(b) for b in rng.integers(0, 2, size=3))
        return (image, top, left, *flips)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        image, top, left, hflip, vflip, transpose = self.patch_params(index)
        pair = self.pairs[image]
        p, s = self.lr_patch, self.scale
        lr = pair.lr[top : top + p, left : left + p]
        hr = pair.hr[top * s : (top + p) * s, left * s : (left + p) * s]
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


class DevicePatchLoader:
    """Training batches cropped on ``device`` from decoded images kept there.

    The decoded uint8 images move to the device once; each step's patches are the same
    ones ``TrainPatches`` gives for the same indices (same crops and flips, from the same
    index-seeded parameters), cut and flipped on the device, so a fast GPU never waits on
    host-side loading. Batches are dicts of ``(B, 3, h, w)`` float32 tensors on 0..255.
    Resumes like ``StepResumableLoader`` (the ``PatchSampler`` follows the global step).
    """

    def __init__(
        self, patches: TrainPatches, sampler: PatchSampler, device: str | torch.device
    ) -> None:
        self.patches = patches
        self.sampler = sampler  # Lightning calls sampler.set_epoch
        self.batch_size = sampler.batch_size
        self.device = torch.device(device)
        self.lr = [self._to_device(p.lr) for p in patches.pairs]
        self.hr = [self._to_device(p.hr) for p in patches.pairs]

    def _to_device(self, img: np.ndarray) -> torch.Tensor:
        arr = np.asarray(img)
        if arr.ndim == 2:
            arr = np.repeat(arr[:, :, None], 3, axis=2)
        return torch.from_numpy(np.ascontiguousarray(arr)).to(self.device)

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size

    def _patch(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, top, left, hflip, vflip, transpose = self.patches.patch_params(index)
        p, s = self.patches.lr_patch, self.patches.scale
        lr = self.lr[image][top : top + p, left : left + p]
        hr = self.hr[image][top * s : (top + p) * s, left * s : (left + p) * s]
        out = []
        for img in (lr, hr):
            if hflip:
                img = img.flip(1)
            if vflip:
                img = img.flip(0)
            if transpose:
                img = img.transpose(0, 1)
            out.append(img.permute(2, 0, 1))
        return out[0], out[1]

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        indices = list(iter(self.sampler))
        for start in range(0, len(indices) - self.batch_size + 1, self.batch_size):
            pairs = [self._patch(i) for i in indices[start : start + self.batch_size]]
            yield {
                "lr": torch.stack([p[0] for p in pairs]).float(),
                "hr": torch.stack([p[1] for p in pairs]).float(),
            }

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state_dict: dict) -> None:
        return None
