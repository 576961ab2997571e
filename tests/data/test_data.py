"""Patches, augmentation, the patch order and the embedded demo data."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hdsr.data import imresize
from hdsr.data.datasets import PatchSampler, TrainPatches, WholeImages
from hdsr.data.demo import DEMO_IMAGES, DemoImages, load_demo_image
from hdsr.data.pairs import make_pair
from hdsr.data.transforms import augment, paired_random_crop


def _pair(h=40, w=56, scale=2, seed=0):
    rng = np.random.default_rng(seed)
    hr = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    return make_pair("img", hr, scale)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_paired_crop_is_aligned(scale):
    # HR built by nearest upsampling of the LR, so alignment can be checked exactly
    rng = np.random.default_rng(scale)
    lr = rng.integers(0, 256, size=(20, 24, 3), dtype=np.uint8)
    hr = lr.repeat(scale, 0).repeat(scale, 1)
    for _ in range(20):
        lp, hp = paired_random_crop(lr, hr, 8, scale, rng)
        assert lp.shape == (8, 8, 3) and hp.shape == (8 * scale, 8 * scale, 3)
        np.testing.assert_array_equal(hp[::scale, ::scale], lp)


def test_crop_errors_name_the_image():
    lr = np.zeros((10, 10, 3), np.uint8)
    with pytest.raises(ValueError, match="photo.png.*smaller than the LR patch"):
        paired_random_crop(
            lr, np.zeros((20, 20, 3), np.uint8), 16, 2, np.random.default_rng(), "photo.png"
        )
    with pytest.raises(ValueError, match="photo.png.*not 2x"):
        paired_random_crop(
            lr, np.zeros((22, 20, 3), np.uint8), 4, 2, np.random.default_rng(), "photo.png"
        )


@pytest.mark.parametrize("flags", [(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 1)])
def test_augment_applies_the_same_transform_to_both(flags):
    lr = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    hr = lr.repeat(2, 0).repeat(2, 1)
    la, ha = augment([lr, hr], *map(bool, flags))
    np.testing.assert_array_equal(ha[::2, ::2], la)
    if flags[2]:
        assert la.shape == (3, 2, 3)


def test_train_patches_are_reproducible_and_varied():
    ds = TrainPatches([_pair(), _pair(seed=1)], scale=2, hr_patch=16, patches_per_epoch=10, seed=3)
    a, b = ds[5], ds[5]
    torch.testing.assert_close(a["lr"], b["lr"])
    assert a["lr"].shape == (3, 8, 8) and a["hr"].shape == (3, 16, 16)
    assert a["lr"].dtype == torch.float32 and a["hr"].max() <= 255
    assert not torch.equal(ds[5]["lr"], ds[6]["lr"])
    other_seed = TrainPatches([_pair(), _pair(seed=1)], 2, 16, 10, seed=4)
    assert not torch.equal(other_seed[5]["lr"], a["lr"])


def test_lr_patch_follows_the_recipe():
    from hdsr.data.datasets import lr_patch_size

    assert [lr_patch_size(128, s) for s in (2, 3, 4)] == [64, 43, 32]
    ds = TrainPatches([_pair(60, 60, 3)], scale=3, hr_patch=32, patches_per_epoch=2)
    assert ds[0]["lr"].shape == (3, 11, 11) and ds[0]["hr"].shape == (3, 33, 33)


def test_image_smaller_than_patch_is_rejected_up_front():
    with pytest.raises(ValueError, match="img: image 56x40 is smaller than the HR patch 64x64"):
        TrainPatches([_pair()], scale=2, hr_patch=64, patches_per_epoch=4)


def test_patch_sampler_runs_on_across_epochs():
    s = PatchSampler(4)
    assert list(s) == [0, 1, 2, 3]
    s.set_epoch(2)
    assert list(s) == [8, 9, 10, 11] and len(s) == 4


def test_whole_images_give_lr_tensor_and_uint8_hr():
    item = WholeImages([_pair()], "set")[0]
    assert item["lr"].shape == (3, 20, 28) and item["hr"].dtype == torch.uint8
    assert item["hr"].shape == (40, 56, 3) and item["name"] == "img"
    with pytest.raises(ValueError, match="'empty' is empty"):
        WholeImages([], "empty")


def test_demo_images_are_bundled_photos_with_matlab_bicubic_lr():
    (pair,) = DemoImages(["chelsea"]).load(3)
    assert pair.hr.shape == (300, 450, 3)  # 451 mod-cropped to a multiple of 3
    np.testing.assert_array_equal(pair.lr, imresize(pair.hr, 1 / 3))
    with pytest.raises(ValueError, match="unknown demo image 'lena'"):
        DemoImages(["lena"])


def test_demo_images_are_the_pixels_skimage_data_gives():
    """The demo files are decoded without skimage.io; the pixels (hence every demo number)
    are skimage.data's."""
    import skimage.data

    left, right, _ = skimage.data.stereo_motorcycle()
    views = {"motorcycle_left": left, "motorcycle_right": right}
    for name in DEMO_IMAGES:
        expected = views[name] if name in views else getattr(skimage.data, name)()
        got = load_demo_image(name)
        assert got.dtype == expected.dtype and got.shape == expected.shape, name
        np.testing.assert_array_equal(got, expected, err_msg=name)


def test_demo_train_and_validation_images_differ():
    from helpers.configs import compose

    cfg = compose([])
    train, val = set(cfg.data.train.names), set(cfg.data.val_sets.demo.names)
    assert train and val and not train & val


def test_device_resident_loader_gives_the_dataloader_batches():
    from torch.utils.data import DataLoader

    from hdsr.data.datasets import DevicePatchLoader

    pairs = [_pair(40, 56, 2, seed=0), _pair(44, 50, 2, seed=1)]
    ds = TrainPatches(pairs, scale=2, hr_patch=16, patches_per_epoch=12, seed=5)
    step = {"n": 0}
    host = DataLoader(ds, batch_size=3, sampler=PatchSampler(12, 3, step_fn=lambda: step["n"]))
    dev = DevicePatchLoader(ds, PatchSampler(12, 3, step_fn=lambda: step["n"]), "cpu")
    assert len(dev) == len(host) == 4
    for a, b in zip(host, dev, strict=True):
        torch.testing.assert_close(a["lr"], b["lr"], rtol=0, atol=0)
        torch.testing.assert_close(a["hr"], b["hr"], rtol=0, atol=0)
    step["n"] = 2  # resumed at step 2: the same later batches
    first_host = next(iter(host))
    torch.testing.assert_close(next(iter(dev))["hr"], first_host["hr"], rtol=0, atol=0)


@pytest.mark.parametrize("scale", [2, 3])
def test_device_resident_loader_matches_every_patch_and_flip(scale):
    from itertools import product

    from hdsr.data.datasets import DevicePatchLoader

    rng = np.random.default_rng(scale)
    gray = make_pair("gray", rng.integers(0, 256, size=(31, 47), dtype=np.uint8), scale)
    wide = _pair(27, 61, scale, seed=1)
    tall = _pair(58, 34, scale, seed=2)
    assert gray.hr.ndim == 2 and gray.lr.ndim == 2
    ds = TrainPatches([wide, gray, tall], scale, hr_patch=16, patches_per_epoch=160, seed=7)
    dev = DevicePatchLoader(ds, PatchSampler(160, 32), "cpu")
    p = ds.lr_patch
    seen = set()
    batches = list(dev)
    assert len(batches) == 5
    for b, batch in enumerate(batches):
        assert batch["lr"].shape == (32, 3, p, p) and batch["hr"].shape == (
            32,
            3,
            p * scale,
            p * scale,
        )
        assert batch["lr"].dtype == torch.float32 and batch["lr"].is_contiguous()
        assert batch["hr"].is_contiguous()
        for j in range(32):
            index = b * 32 + j
            expected = ds[index]
            torch.testing.assert_close(batch["lr"][j], expected["lr"], rtol=0, atol=0)
            torch.testing.assert_close(batch["hr"][j], expected["hr"], rtol=0, atol=0)
            image, *_, hflip, vflip, transpose = ds.patch_params(index)
            seen.add((image, hflip, vflip, transpose))
    # every image (gray included) under every one of the eight flip/transpose combinations
    assert seen == {(i, *f) for i in range(3) for f in product((False, True), repeat=3)}
