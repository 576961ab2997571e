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
    """Indices ``rank, rank + world, ...`` of ``n`` items, wrapped round to one length.

    Every rank gets ``ceil(n / world)`` indices, so all ranks run the same number of
    validation batches whatever the set's size (a rank with none would fail, or leave the
    others waiting at the epoch-end gather). Items past ``n`` wrap to the start: they are
    scored twice, and the scores carry the item's index so the duplicates are dropped
    before averaging (``SRModule``): each item still counts once.
    """

    def __init__(self, n: int, rank: int = 0, world_size: int = 1) -> None:
        self.n, self.rank, self.world_size = n, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices())

    def _indices(self) -> list[int]:
        if self.n == 0:
            return []
        per_rank = -(-self.n // self.world_size)
        return [(self.rank + k * self.world_size) % self.n for k in range(per_rank)]

    def __len__(self) -> int:
        return len(self._indices())

    @staticmethod
    def owner(index: int, world_size: int) -> int:
        """The rank whose shard holds ``index`` before the wrap (``index % world_size``);
        a rank that gets it again gets a repeat, and is always a higher rank."""
        return index % world_size


class WholeImages(Dataset):
    """Whole images for validation/test (batch size 1).

    Returns ``{"lr": (3, h, w) float32 0..255, "hr": uint8 (H, W, 3) or (H, W), "name": str,
    "index": int}`` (the image's position in the set, which identifies it across ranks).
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
        return {
            "lr": to_tensor_chw(p.lr),
            "hr": torch.from_numpy(p.hr),
            "name": p.name,
            "index": index,
        }


class DeviceMemoryError(RuntimeError):
    """The training images do not fit in the free memory of the training device."""


def resident_bytes(pairs: Sequence[ImagePair]) -> int:
    """Bytes ``DevicePatchLoader`` keeps on the device for ``pairs``: HR and LR, each as
    3-channel uint8 (a gray image is stored as RGB)."""
    total = 0
    for p in pairs:
        for img in (p.hr, p.lr):
            h, w = np.shape(img)[:2]
            total += 3 * int(h) * int(w)
    return total


def check_device_memory(device: str | torch.device, needed: int) -> None:
    """Raise ``DeviceMemoryError`` when a CUDA ``device`` has less than ``needed`` bytes
    free (``torch.cuda.mem_get_info``); other devices are not checked."""
    device = torch.device(device)
    if device.type != "cuda":
        return
    free, total = torch.cuda.mem_get_info(device)
    if needed <= free:
        return
    gb = 1e9
    raise DeviceMemoryError(
        f"data.device_resident=true needs {needed / gb:.2f} GB on {device} for the decoded "
        f"training images (HR + LR, uint8), but only {free / gb:.2f} GB of its "
        f"{total / gb:.2f} GB is free (and training needs memory of its own besides). Set "
        "data.device_resident=false to keep the images in host memory (DataLoader "
        "workers then cut the patches), or train on fewer images"
    )


class DevicePatchLoader:
    """Training batches cropped on ``device`` from decoded images kept there.

    The decoded uint8 images move to the device once, packed HxWx3 one after another into
    one flat uint8 buffer for LR and one for HR (a gray image is repeated to 3 channels),
    with each image's offset and width kept as int64 tensors beside them. Each
    step's patches are the same ones ``TrainPatches`` gives for the same indices (same
    crops and flips, from the same index-seeded ``patch_params``). The batch's parameters
    go to the device as one ``(B, 6)`` tensor, and broadcast arithmetic turns them into
    the flat-buffer index of every output element, crop, flips and transpose included;
    one gather then cuts the whole batch. The number of kernels per batch is fixed
    whatever ``B`` (a few dozen tiny ones on ``B``-element tensors, then for each of LR
    and HR one index add, one gather and one conversion to float), so a fast GPU never
    waits on host-side loading. Batches are dicts of contiguous ``(B, 3, h, w)`` float32
    tensors on 0..255. Resumes like ``StepResumableLoader`` (the ``PatchSampler`` follows
    the global step).

    No step waits for the device: a batch's ``(B, 6)`` parameters are written into pinned
    host memory and copied with ``non_blocking=True`` (a blocking copy from pageable
    memory would synchronise the host with the GPU every step), and nothing on the device
    is read back. The caching host allocator keeps each pinned block until its copy has
    run, so the host never overwrites parameters still in flight.

    Memory: every rank keeps its own copy of the images, HR and LR as 3-channel uint8.
    DIV2K 1-900 (2040 px on the long side) takes about 9.4 GB at x2 (7.5 GB HR + 1.9 GB
    LR), 8.3 GB at x3 and 8.0 GB at x4, per rank. On CUDA the free device memory is
    checked first (``torch.cuda.mem_get_info``), and ``DeviceMemoryError`` says how much
    is needed and free before anything is allocated.
    """

    def __init__(
        self, patches: TrainPatches, sampler: PatchSampler, device: str | torch.device
    ) -> None:
        self.patches = patches
        self.sampler = sampler  # Lightning calls sampler.set_epoch
        self.batch_size = sampler.batch_size
        self.device = torch.device(device)
        pairs = patches.pairs
        check_device_memory(self.device, resident_bytes(pairs))
        self.lr, self.lr_offsets, self.lr_widths = self._pack([p.lr for p in pairs])
        self.hr, self.hr_offsets, self.hr_widths = self._pack([p.hr for p in pairs])
        p = patches.lr_patch
        self._lr_range = torch.arange(p, dtype=torch.int64, device=self.device)
        self._hr_range = torch.arange(p * patches.scale, dtype=torch.int64, device=self.device)
        self._channels = torch.arange(3, dtype=torch.int64, device=self.device).view(1, 3, 1, 1)

    def _pack(
        self, images: Sequence[np.ndarray]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Copy HxWx3 (or HxW gray) uint8 images into one flat uint8 tensor on the device.

        Returns ``(flat, offsets, widths)``; image ``i`` of height ``h`` is
        ``flat[offsets[i] : offsets[i] + 3 * h * widths[i]].view(h, widths[i], 3)`` (a
        crop needs only the row stride). Only one image at a time is staged on the host
        (none when the device is the CPU).
        """
        shapes = [np.shape(img)[:2] for img in images]
        sizes = [3 * h * w for h, w in shapes]
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        flat = torch.empty(int(offsets[-1]), dtype=torch.uint8, device=self.device)
        on_cpu = self.device.type == "cpu"
        staging = None
        if not on_cpu:
            pin = self.device.type == "cuda"
            staging = torch.empty(max(sizes), dtype=torch.uint8, pin_memory=pin)
        for img, (h, w), start, size in zip(images, shapes, offsets[:-1], sizes, strict=True):
            start = int(start)
            arr = np.asarray(img)
            if arr.ndim == 2:
                arr = arr[:, :, None]  # broadcast to 3 channels by the copy below
            dst = flat[start : start + size] if on_cpu else staging[:size]
            np.copyto(dst.numpy().reshape(h, w, 3), arr, casting="no")
            if not on_cpu:
                flat[start : start + size].copy_(dst)
        widths = torch.tensor([w for _, w in shapes], dtype=torch.int64, device=self.device)
        return flat, torch.from_numpy(offsets[:-1]).to(self.device), widths

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size

    def _crop(self, params: torch.Tensor, hr: bool) -> torch.Tensor:
        """Gather the LR (or HR) patches of a batch's ``patch_params`` rows, ``(B, 6)``.

        As in ``augment``, the crop is flipped left-right, then upside down, then
        transposed: output pixel ``(u, v)`` is crop pixel ``(v, u)`` under the transpose,
        and a flip reads row (or column) ``P - 1 - r`` for ``r``. So the source row and
        column, and hence the flat index, are affine in ``u`` and ``v`` with per-patch
        coefficients, and the ``(B, 3, P, P)`` index is two broadcast multiply-adds.
        """
        if hr:
            flat, offsets, widths, pos = self.hr, self.hr_offsets, self.hr_widths, self._hr_range
            scale = self.patches.scale
        else:
            flat, offsets, widths, pos = self.lr, self.lr_offsets, self.lr_widths, self._lr_range
            scale = 1
        image, top, left, hflip, vflip, transpose = params.unbind(1)
        last = pos.numel() - 1
        row_stride = 3 * widths[image]
        row0 = top * scale + vflip * last
        col0 = left * scale + hflip * last
        row_step = (1 - 2 * vflip) * row_stride
        col_step = (1 - 2 * hflip) * 3
        base = offsets[image] + row0 * row_stride + col0 * 3
        transpose = transpose.bool()
        u_step = torch.where(transpose, col_step, row_step).view(-1, 1, 1, 1)
        v_step = torch.where(transpose, row_step, col_step).view(-1, 1, 1, 1)
        index = (base.view(-1, 1, 1, 1) + self._channels) + u_step * pos.view(1, 1, -1, 1)
        index = index + v_step * pos.view(1, 1, 1, -1)
        return flat.gather(0, index.view(-1)).view(index.shape).float()

    def _upload(self, rows: list[tuple[int, int, int, bool, bool, bool]]) -> torch.Tensor:
        """A batch's ``patch_params`` rows as a ``(B, 6)`` int64 tensor on the device.

        On CUDA the rows go through pinned memory with a non-blocking copy, so the step
        does not wait for the device; elsewhere the copy is an ordinary one (none on CPU).
        """
        params = torch.tensor(rows, dtype=torch.int64)
        if self.device.type == "cpu":
            return params
        if self.device.type == "cuda":
            return params.pin_memory().to(self.device, non_blocking=True)
        return params.to(self.device)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        indices = list(iter(self.sampler))
        for start in range(0, len(indices) - self.batch_size + 1, self.batch_size):
            batch = indices[start : start + self.batch_size]
            params = self._upload([self.patches.patch_params(i) for i in batch])
            yield {"lr": self._crop(params, hr=False), "hr": self._crop(params, hr=True)}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state_dict: dict) -> None:
        return None
