"""The device-resident loader's CUDA paths proved on the CPU: the free-memory check before
loading (``torch.cuda.mem_get_info`` mocked) and the non-blocking, pinned copy of each
step's patch parameters (tensor copies to "cuda" mocked)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hdsr.data.datasets import (
    DeviceMemoryError,
    DevicePatchLoader,
    PatchSampler,
    TrainPatches,
    check_device_memory,
    resident_bytes,
)
from hdsr.data.pairs import ImagePair, make_pair


def _pair(h: int, w: int, scale: int, seed: int) -> ImagePair:
    rng = np.random.default_rng(seed)
    hr = rng.integers(0, 256, size=(h * scale, w * scale, 3), dtype=np.uint8)
    return ImagePair(f"img{seed}", np.ascontiguousarray(hr[::scale, ::scale]), hr, scale)


# -- device-resident loader: memory check ------------------------------------------------
def test_resident_bytes_count_hr_and_lr_as_rgb():
    gray = make_pair("g", np.zeros((10, 12), dtype=np.uint8), 2)
    rgb = _pair(7, 9, 2, seed=0)
    assert resident_bytes([gray, rgb]) == 3 * (10 * 12 + 5 * 6) + 3 * (14 * 18 + 7 * 9)
    # DIV2K 1-900 (about 2040x1356 on average), HR + LR per rank: ~9.4/8.3/8.0 GB
    hr = 900 * 3 * 2040 * 1356
    for scale, expected in ((2, 9.4), (3, 8.3), (4, 8.0)):
        assert round((hr + hr / scale**2) / 1e9, 1) == pytest.approx(expected, abs=0.11)


def test_device_resident_loader_refuses_images_larger_than_free_memory(monkeypatch):
    pairs = [_pair(20, 24, 2, seed=0), _pair(22, 20, 2, seed=1)]
    ds = TrainPatches(pairs, scale=2, hr_patch=16, patches_per_epoch=8)
    needed = resident_bytes(pairs)
    asked = []

    def mem_get_info(device=None):
        asked.append(torch.device(device))
        return needed - 1, 80 * 10**9

    monkeypatch.setattr(torch.cuda, "mem_get_info", mem_get_info)
    with pytest.raises(DeviceMemoryError) as err:
        DevicePatchLoader(ds, PatchSampler(8, 2), "cuda:1")  # nothing allocated before
    msg = str(err.value)
    assert f"needs {needed / 1e9:.2f} GB on cuda:1" in msg
    assert f"only {(needed - 1) / 1e9:.2f} GB of its 80.00 GB is free" in msg
    assert "data.device_resident=false" in msg
    assert asked == [torch.device("cuda:1")]  # the rank's own device
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (needed, 10**10))
    check_device_memory("cuda:1", needed)  # exactly enough: no error


def test_memory_check_asks_cuda_only(monkeypatch):
    def fail(device=None):
        raise AssertionError("mem_get_info called for a CPU device")

    monkeypatch.setattr(torch.cuda, "mem_get_info", fail)
    check_device_memory("cpu", 10**15)
    ds = TrainPatches([_pair(20, 24, 2, seed=0)], scale=2, hr_patch=16, patches_per_epoch=8)
    DevicePatchLoader(ds, PatchSampler(8, 2), "cpu")


# -- device-resident loader: no blocking copy per step ------------------------------------
def test_device_resident_steps_copy_their_parameters_pinned_and_non_blocking(monkeypatch):
    """Each step copies its (B, 6) parameters once, from pinned memory, non-blocking (a
    blocking copy from pageable memory would make the host wait for the GPU every step);
    the batches are still exactly TrainPatches' patches. CUDA is mocked: the loader is
    built on the CPU, then pointed at "cuda", and the copies to it are recorded."""
    pairs = [_pair(20, 28, 2, seed=0), _pair(26, 22, 2, seed=1)]
    ds = TrainPatches(pairs, scale=2, hr_patch=16, patches_per_epoch=24, seed=3)
    loader = DevicePatchLoader(ds, PatchSampler(24, 4), "cpu")
    loader.device = torch.device("cuda")
    pinned: set[int] = set()
    copies: list[tuple[tuple[int, ...], bool, bool]] = []
    real_to = torch.Tensor.to

    def pin_memory(self, *args, **kwargs):
        out = self.clone()
        pinned.add(id(out))
        return out

    def to(self, *args, **kwargs):
        target = args[0] if args else kwargs.get("device")
        if isinstance(target, (str, torch.device)) and torch.device(target).type == "cuda":
            copies.append((tuple(self.shape), id(self) in pinned, kwargs.get("non_blocking")))
            return self
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "pin_memory", pin_memory)
    monkeypatch.setattr(torch.Tensor, "to", to)
    batches = list(loader)
    monkeypatch.undo()
    assert len(batches) == 6
    assert copies == [((4, 6), True, True)] * 6  # one pinned, non-blocking copy per step
    for step, batch in enumerate(batches):
        for j in range(4):
            item = ds[step * 4 + j]
            assert torch.equal(batch["lr"][j], item["lr"])
            assert torch.equal(batch["hr"][j], item["hr"])
