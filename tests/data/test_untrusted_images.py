"""Damaged caches and awkward image files: each is rebuilt or refused, naming the file."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from hdsr.data import cache
from hdsr.data.benchmarks import BenchmarkImages
from hdsr.data.div2k import DIV2KImages
from hdsr.imaging import ImageReadError, read_image
from helpers.datatrees import make_benchmark, make_div2k
from helpers.imagefiles import random_png16


@pytest.fixture
def fresh_process(monkeypatch):
    """Forget which cache entries this process has verified, as a new process would."""

    def forget():
        monkeypatch.setattr(cache, "_verified", set(), raising=False)

    forget()
    return forget


def _cached_div2k(tmp_path: Path) -> tuple[Path, DIV2KImages]:
    root = make_div2k(tmp_path / "DIV2K", [1, 2, 3, 4])
    src = DIV2KImages(root, ranges=[[1, 4]])
    assert src.prepare(2, progress=False) == 8
    return root, src


def _zero_payload(entry: Path) -> None:
    """Overwrite the array bytes of a ``.npy`` file with zeros, keeping its header and size."""
    arr = np.load(entry, mmap_mode="r")
    size = entry.stat().st_size
    with open(entry, "r+b") as f:
        f.seek(size - arr.nbytes)
        f.write(bytes(arr.nbytes))
    assert entry.stat().st_size == size


# -- the decoded-image cache ---------------------------------------------------------------
def test_empty_cache_entry_is_rebuilt_with_a_warning(tmp_path, fresh_process, caplog):
    root, src = _cached_div2k(tmp_path)
    entry = root / ".hdsr_cache" / "DIV2K_train_HR" / "0004.npy"
    entry.write_bytes(b"")
    fresh_process()
    with caplog.at_level("WARNING"):
        assert src.prepare(2, progress=False) == 1
    assert "DIV2K_train_HR/0004.npy" in caplog.text
    pairs = src.load(2)
    np.testing.assert_array_equal(pairs[3].hr, read_image(root / "DIV2K_train_HR" / "0004.png"))


def test_zeroed_cache_entry_is_detected_and_rebuilt(tmp_path, fresh_process, caplog):
    root, src = _cached_div2k(tmp_path)
    entry = root / ".hdsr_cache" / "DIV2K_train_HR" / "0004.npy"
    _zero_payload(entry)
    fresh_process()
    with caplog.at_level("WARNING"):
        pairs = src.load(2)  # what a training run's setup() calls
    assert "DIV2K_train_HR/0004.npy" in caplog.text and "checksum" in caplog.text
    np.testing.assert_array_equal(pairs[3].hr, read_image(root / "DIV2K_train_HR" / "0004.png"))
    assert src.prepare(2, progress=False) == 0


def test_training_on_a_damaged_cache_rebuilds_it_first(tmp_path, fresh_process, caplog):
    from hdsr.data.datamodule import SRDataModule

    root, _ = _cached_div2k(tmp_path)
    _zero_payload(root / ".hdsr_cache" / "DIV2K_train_LR_bicubic" / "X2" / "0003x2.npy")
    fresh_process()
    bench = make_benchmark(tmp_path / "bench", "Set5", 1)
    dm = SRDataModule(
        2,
        DIV2KImages(root, ranges=[[1, 4]]),
        {"Set5": BenchmarkImages(bench, "Set5")},
        patch_size=32,
        batch_size=2,
        patches_per_epoch=4,
    )
    with caplog.at_level("WARNING"):
        dm.setup("fit")  # as a rank that did not run prepare_data does
    assert "X2/0003x2.npy" in caplog.text
    lr_png = read_image(root / "DIV2K_train_LR_bicubic" / "X2" / "0003x2.png")
    np.testing.assert_array_equal(dm.train_set.pairs[2].lr, lr_png)
    assert next(iter(dm.train_dataloader()))["lr"].shape == (2, 3, 16, 16)


def test_damaged_entry_where_it_cannot_be_rebuilt_is_named(tmp_path, fresh_process):
    root, src = _cached_div2k(tmp_path)
    pair = pickle.loads(pickle.dumps(src.load(2)[3]))  # as a worker of another process gets it
    _zero_payload(pair.hr_path)
    fresh_process()
    with pytest.raises(cache.CacheEntryError, match=r"DIV2K_train_HR/0004.npy.*delete it"):
        pair.hr  # noqa: B018
    np.testing.assert_array_equal(
        pair.lr, read_image(root / "DIV2K_train_LR_bicubic" / "X2" / "0004x2.png")
    )


def test_checksum_is_checked_once_per_entry_per_process(tmp_path, fresh_process, monkeypatch):
    root, src = _cached_div2k(tmp_path)
    fresh_process()
    sizes = []
    real = cache.checksum
    monkeypatch.setattr(cache, "checksum", lambda a: sizes.append(a.shape) or real(a))
    for _ in range(2):
        pairs = DIV2KImages(root, ranges=[[1, 4]]).load(2)
        for p in pickle.loads(pickle.dumps(pairs)):
            assert p.lr.shape[0] * 2 == p.hr.shape[0]
    assert len(sizes) == 8  # 4 HR + 4 LR entries, each verified once


def _settle(entries: list[Path]) -> None:
    """Date the entries' last write back a minute, as a cache built in an earlier run is."""
    for entry in entries:
        old = entry.stat().st_mtime_ns - 60 * 10**9
        os.utime(entry, ns=(old, old))


def test_a_later_process_skips_the_checksum_of_a_settled_verified_entry(
    tmp_path, fresh_process, monkeypatch
):
    """Every start of every rank used to read the whole cache again to checksum it."""
    root, src = _cached_div2k(tmp_path)
    entries = sorted((root / ".hdsr_cache").rglob("*.npy"))
    assert len(entries) == 8
    summed = []
    real = cache.checksum
    monkeypatch.setattr(cache, "checksum", lambda a: summed.append(a.shape) or real(a))
    fresh_process()
    src.load(2)
    assert len(summed) == 8  # just written: checksummed, and not recorded as verified yet
    assert all("verified" not in json.loads(Path(f"{e}.json").read_text()) for e in entries)

    _settle(entries)
    fresh_process()
    src.load(2)
    assert len(summed) == 16  # a new identity (utime): checksummed again, then recorded
    fresh_process()
    pairs = DIV2KImages(root, ranges=[[1, 4]]).load(2)
    assert len(summed) == 16  # a later process: nothing read to check
    np.testing.assert_array_equal(pairs[1].hr, read_image(root / "DIV2K_train_HR" / "0002.png"))

    # a write after the verification changes the identity: the damage is found
    _zero_payload(root / ".hdsr_cache" / "DIV2K_train_HR" / "0002.npy")
    fresh_process()
    pairs = src.load(2)
    assert len(summed) > 16  # checked, found damaged, rebuilt
    np.testing.assert_array_equal(pairs[1].hr, read_image(root / "DIV2K_train_HR" / "0002.png"))


def test_a_read_only_cache_is_checksummed_each_time(tmp_path, fresh_process, monkeypatch):
    root, src = _cached_div2k(tmp_path)
    entries = sorted((root / ".hdsr_cache").rglob("*.npy"))
    _settle(entries)
    records = {e: Path(f"{e}.json").read_text() for e in entries}
    real_write = cache._atomic_write

    def read_only(path, write, binary):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(cache, "_atomic_write", read_only)
    for _ in range(2):
        fresh_process()
        assert len(src.load(2)) == 4
    assert {e: Path(f"{e}.json").read_text() for e in entries} == records
    monkeypatch.setattr(cache, "_atomic_write", real_write)


def test_records_without_a_checksum_are_rebuilt(tmp_path, fresh_process):
    root, src = _cached_div2k(tmp_path)
    meta = root / ".hdsr_cache" / "DIV2K_train_HR" / "0002.npy.json"
    record = json.loads(meta.read_text())
    assert record["version"] == cache.CACHE_VERSION >= 2
    del record["crc32"]
    meta.write_text(json.dumps(record))
    fresh_process()
    assert src.prepare(2, progress=False) == 1
    assert "crc32" in json.loads(meta.read_text())
    record.update(version=1)  # as hdsr with cache version 1 wrote it
    meta.write_text(json.dumps(record))
    assert src.prepare(2, progress=False) == 1


# -- 16-bit colour images --------------------------------------------------------------------
def test_read_image_refuses_16_bit_rgb_png(tmp_path):
    from PIL import Image

    deep = tmp_path / "deep_rgb.png"
    random_png16(deep, 6, 5)
    assert Image.open(deep).mode == "RGB"  # Pillow alone would drop the low bytes
    with pytest.raises(ImageReadError, match=r"deep_rgb.png: 16 bits per channel"):
        read_image(deep)


def test_read_image_refuses_16_bit_rgb_tiff(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    deep = tmp_path / "deep_rgb.tif"
    a = np.random.default_rng(1).integers(0, 65536, (6, 5, 3)).astype(np.uint16)
    tifffile.imwrite(deep, a, photometric="rgb")
    assert tifffile.TiffFile(deep).pages[0].bitspersample == 16
    with pytest.raises(ImageReadError, match=r"deep_rgb.tif: 16 bits per sample"):
        read_image(deep)


def test_16_bit_files_in_training_and_benchmark_data_are_named(tmp_path):
    root = make_div2k(tmp_path / "DIV2K", [1, 2])
    random_png16(root / "DIV2K_train_HR" / "0002.png", 60, 72)
    with pytest.raises(ImageReadError, match=r"DIV2K_train_HR/0002.png: 16 bits per channel"):
        DIV2KImages(root, ranges=[[1, 2]]).prepare(2, progress=False)
    root = make_div2k(tmp_path / "DIV2K_lr", [1])
    random_png16(root / "DIV2K_train_LR_bicubic" / "X2" / "0001x2.png", 30, 36)
    with pytest.raises(ImageReadError, match=r"X2/0001x2.png: 16 bits per channel"):
        DIV2KImages(root, ranges=[[1, 1]]).load(2)
    bench = make_benchmark(tmp_path / "bench", "Set5", 2)
    random_png16(bench / "Set5" / "HR" / "img_001.png", 48, 50)
    with pytest.raises(ImageReadError, match=r"Set5/HR/img_001.png: 16 bits per channel"):
        BenchmarkImages(bench, "Set5").load(2)


# -- benchmark sets ----------------------------------------------------------------------------
def test_benchmark_files_with_the_same_name_are_refused(tmp_path):
    from PIL import Image

    root = make_benchmark(tmp_path, "Set5", 2)
    hr = tmp_path / "Set5" / "HR"
    Image.open(hr / "img_001.png").save(hr / "img_001.bmp")
    with pytest.raises(ValueError, match=r"HR/img_001.bmp and .*HR/img_001.png.*same name"):
        BenchmarkImages(root, "Set5").load(2)
