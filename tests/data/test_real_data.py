"""DIV2K and benchmark layouts, the decoded-image cache, alignment and bad input."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from hdsr.data import imresize, modcrop
from hdsr.data.benchmarks import BenchmarkImages
from hdsr.data.cache import ensure_cached, is_valid, source_record
from hdsr.data.datamodule import SRDataModule
from hdsr.data.datasets import TrainPatches
from hdsr.data.div2k import DIV2KImages
from hdsr.imaging import ImageReadError, read_image, write_png
from hdsr.metrics import psnr_y
from helpers.datatrees import make_benchmark, make_div2k, photo


# -- DIV2K -----------------------------------------------------------------------------
def test_div2k_reads_official_layout_across_train_and_valid(tmp_path):
    root = make_div2k(tmp_path / "DIV2K", [1, 2, 801], scales=(2, 4))
    src = DIV2KImages(root, ranges=[[1, 2], [801, 801]])
    pairs = src.load(4)
    assert [p.name for p in pairs] == ["0001", "0002", "0801"]
    for p in pairs:
        idx = int(p.name)
        split = "train" if idx <= 800 else "valid"
        lr_png = read_image(root / f"DIV2K_{split}_LR_bicubic/X4/{p.name}x4.png")
        np.testing.assert_array_equal(p.lr, lr_png)  # LR read from the given files
        np.testing.assert_array_equal(p.hr, read_image(root / f"DIV2K_{split}_HR/{p.name}.png"))
        assert isinstance(p.lr, np.memmap)  # served from the cache, memory-mapped
    assert (root / ".hdsr_cache" / "DIV2K_valid_HR" / "0801.npy").is_file()


def test_default_ranges_are_the_papers_900_images(tmp_path):
    assert len(DIV2KImages(tmp_path).indices) == 900
    assert DIV2KImages(tmp_path).indices[0] == 1 and DIV2KImages(tmp_path).indices[-1] == 900


def test_missing_lr_folder_is_generated_once_and_said(tmp_path, caplog):
    root = make_div2k(tmp_path / "D", [1, 2], with_lr=False, size=(61, 70))
    src = DIV2KImages(root, ranges=[[1, 2]], cache_dir=tmp_path / "cache")
    with caplog.at_level("WARNING"):
        assert src.prepare(3, progress=False) == 4  # 2 HR decodes + 2 generated LR
    assert "DIV2K_train_LR_bicubic/X3 not found" in caplog.text
    assert "MATLAB-compatible bicubic" in caplog.text
    assert src.prepare(3, progress=False) == 0  # cached: nothing rebuilt
    (p, _) = src.load(3)
    hr = read_image(root / "DIV2K_train_HR/0001.png")
    np.testing.assert_array_equal(p.lr, imresize(modcrop(hr, 3), 1 / 3))
    assert p.hr.shape == (61, 70, 3)  # kept whole; crops use the mod-cropped part


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_generated_patches_are_exactly_consistent(tmp_path, scale):
    """Downscaling an HR patch with MATLAB bicubic reproduces its LR patch (away from the
    patch border, where the kernel would reach outside the patch)."""
    root = make_div2k(tmp_path / "D", [1], with_lr=False, size=(96, 100))
    pairs = DIV2KImages(root, ranges=[[1, 1]]).load(scale)
    # without flips: a transpose swaps which pass MATLAB runs first, and each pass rounds
    ds = TrainPatches(pairs, scale, hr_patch=16 * scale, patches_per_epoch=8, seed=1, flips=False)
    m = 3  # LR pixels within 3 of the patch edge see outside-patch HR pixels
    for i in range(8):
        item = ds[i]
        lr = item["lr"].permute(1, 2, 0).numpy().astype(np.uint8)
        hr = item["hr"].permute(1, 2, 0).numpy().astype(np.uint8)
        down = imresize(hr, 1 / scale)
        np.testing.assert_array_equal(down[m:-m, m:-m], lr[m:-m, m:-m])


def test_prepare_data_builds_once_and_setup_reuses(tmp_path):
    root = make_div2k(tmp_path / "D", [1, 2, 3])
    bench = make_benchmark(tmp_path / "bench", "Set5", 2)
    dm = SRDataModule(
        2,
        DIV2KImages(root, ranges=[[1, 3]]),
        {"Set5": BenchmarkImages(bench, "Set5")},
        patch_size=32,
        batch_size=2,
        patches_per_epoch=4,
    )
    dm.prepare_data()
    cache = root / ".hdsr_cache"
    stamps = {p: p.stat().st_mtime_ns for p in cache.rglob("*.npy")}
    assert len(stamps) == 6
    dm.setup("fit")
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("*.npy")} == stamps
    batch = next(iter(dm.train_dataloader()))
    assert batch["lr"].shape == (2, 3, 16, 16) and batch["hr"].shape == (2, 3, 32, 32)


# -- the cache ---------------------------------------------------------------------------
def _source(tmp_path: Path, seed: int = 0) -> Path:
    src = tmp_path / "src.png"
    write_png(src, photo(20, 24, seed))
    return src


def test_cache_detects_stale_and_interrupted_entries(tmp_path):
    src = _source(tmp_path)
    entry = tmp_path / "cache" / "img.npy"
    assert ensure_cached(entry, src, "hr", lambda: read_image(src))
    assert not ensure_cached(entry, src, "hr", lambda: read_image(src))
    # stale: the source changed (new content, size and mtime)
    time.sleep(0.01)
    write_png(src, photo(30, 24, 1))
    assert not is_valid(entry, source_record(src, "hr"))
    assert ensure_cached(entry, src, "hr", lambda: read_image(src))
    assert np.load(entry).shape == (30, 24, 3)
    # another transform of the same source is another entry
    assert not is_valid(entry, source_record(src, "matlab-bicubic-x2"))
    # interrupted write: a truncated array file is never loaded
    data = entry.read_bytes()
    entry.write_bytes(data[: len(data) // 2])
    assert not is_valid(entry, source_record(src, "hr"))
    assert ensure_cached(entry, src, "hr", lambda: read_image(src))
    np.testing.assert_array_equal(np.load(entry), read_image(src))
    # a missing record (crash between the two renames) also means rebuild
    entry.with_name("img.npy.json").unlink()
    assert ensure_cached(entry, src, "hr", lambda: read_image(src))


def test_failed_build_leaves_no_entry_and_no_temp_files(tmp_path):
    src = _source(tmp_path)
    entry = tmp_path / "cache" / "img.npy"

    def boom():
        raise ImageReadError("decode failed")

    with pytest.raises(ImageReadError):
        ensure_cached(entry, src, "hr", boom)
    assert not entry.exists()
    assert [p.name for p in entry.parent.iterdir()] == ["img.npy.lock"]


_BUILDER = """
import os, sys, time
from pathlib import Path

import numpy as np

from hdsr.data.cache import ensure_cached
from hdsr.imaging import read_image

src, entry, log, ready, n = sys.argv[1:6]
Path(ready, str(os.getpid())).touch()
deadline = time.monotonic() + 120
while len(os.listdir(ready)) < int(n) and time.monotonic() < deadline:
    time.sleep(0.01)  # all builders start together


def produce():
    with open(log, "a") as f:
        f.write(f"{os.getpid()}\\n")
    time.sleep(0.3)  # a slow decode, so the builders overlap
    return read_image(Path(src))


ensure_cached(Path(entry), Path(src), "hr", produce)
print(int(np.load(entry).sum()))
"""


def test_concurrent_builders_build_once_and_others_wait(tmp_path):
    # separate interpreters: a fork of this (threaded) test process can deadlock
    src = _source(tmp_path)
    entry, log, ready = tmp_path / "cache" / "img.npy", tmp_path / "builds.log", tmp_path / "up"
    ready.mkdir()
    args = [str(src), str(entry), str(log), str(ready), "3"]
    builders = [
        subprocess.Popen(
            [sys.executable, "-c", _BUILDER, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    outs = [b.communicate(timeout=300) for b in builders]
    assert all(b.returncode == 0 for b in builders), [err[-2000:] for _, err in outs]
    assert len(log.read_text().splitlines()) == 1
    sums = {int(out.strip()) for out, _ in outs}
    assert sums == {int(read_image(src).sum())}


# -- benchmarks ----------------------------------------------------------------------------
def test_benchmark_reads_lr_files_and_mod_crops_hr(tmp_path):
    root = make_benchmark(tmp_path, "Set5", 3, scales=(3,), size=(50, 47))
    pairs = BenchmarkImages(root, "Set5").load(3)
    assert [p.name for p in pairs] == ["img_000", "img_001", "img_002"]
    for p in pairs:
        assert p.hr.shape == (48, 45, 3) and p.lr.shape == (16, 15, 3)
        lr_file = read_image(root / "Set5" / "LR_bicubic" / "X3" / f"{p.name}x3.png")
        np.testing.assert_array_equal(p.lr, lr_file)


def test_benchmark_generates_lr_when_absent_and_accepts_aliases(tmp_path):
    root = make_benchmark(tmp_path, "BSD100", 2)
    make_benchmark(tmp_path, "U100", 1)
    (p, _) = BenchmarkImages(root, "B100").load(4)
    np.testing.assert_array_equal(p.lr, imresize(modcrop(p.hr, 4), 1 / 4))
    assert len(BenchmarkImages(root, "Urban100").load(2)) == 1
    assert len(BenchmarkImages(root, "Mine", folders=["U100"]).load(2)) == 1


def test_gray_benchmark_image_is_gray_hr_and_three_channel_input(tmp_path):
    from hdsr.data.datasets import WholeImages
    from hdsr.evaluation.bicubic import bicubic_scores

    root = make_benchmark(tmp_path, "Set14", 2, gray=(1,), size=(40, 44))
    pairs = BenchmarkImages(root, "Set14").load(2)
    gray = pairs[1]
    assert gray.hr.ndim == 2 and gray.lr.ndim == 2
    item = WholeImages(pairs, "Set14")[1]
    assert item["lr"].shape == (3, 20, 22)  # the network gets a 3-channel copy
    assert item["hr"].shape == (40, 44)
    ((psnr, _),) = bicubic_scores({"Set14": [gray]}, 2).values()
    assert psnr == pytest.approx(psnr_y(imresize(gray.lr, 2), gray.hr, 2))


# -- bad input ------------------------------------------------------------------------------
def test_missing_root_and_split_folders_name_the_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere does not exist.*DIV2K_train_HR/0001"):
        DIV2KImages(tmp_path / "nowhere", ranges=[[1, 1]]).prepare(2)
    root = make_div2k(tmp_path / "D", [1])
    with pytest.raises(FileNotFoundError, match=r"DIV2K_valid_HR does not exist"):
        DIV2KImages(root, ranges=[[1, 1], [801, 801]]).prepare(2)
    with pytest.raises(FileNotFoundError, match=r"0002.png is missing"):
        DIV2KImages(root, ranges=[[1, 2]]).prepare(2)
    with pytest.raises(FileNotFoundError, match=r"benchmark root .* does not exist"):
        BenchmarkImages(tmp_path / "nobench", "Set5").load(2)
    with pytest.raises(FileNotFoundError, match=r"'Set5' not found \(tried .*Set5\)"):
        BenchmarkImages(tmp_path, "Set5").load(2)
    (tmp_path / "Set14").mkdir()
    with pytest.raises(FileNotFoundError, match=r"Set14/HR does not exist"):
        BenchmarkImages(tmp_path, "Set14").load(2)


def test_empty_set_is_an_error(tmp_path):
    (tmp_path / "Set5" / "HR").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"'Set5' is empty: no images in .*Set5/HR"):
        BenchmarkImages(tmp_path, "Set5").load(2)


def test_truncated_png_is_named(tmp_path):
    root = make_div2k(tmp_path / "D", [1, 2])
    bad = root / "DIV2K_train_HR" / "0002.png"
    bad.write_bytes(bad.read_bytes()[:200])
    with pytest.raises(ImageReadError, match=r"0002.png: cannot decode"):
        DIV2KImages(root, ranges=[[1, 2]]).prepare(2, progress=False)
    assert not (root / ".hdsr_cache" / "DIV2K_train_HR" / "0002.npy").exists()
    bench = make_benchmark(tmp_path / "b", "Set5", 1)
    (bench / "Set5" / "HR" / "img_000.png").write_bytes(b"not a png")
    with pytest.raises(ImageReadError, match=r"img_000.png"):
        BenchmarkImages(bench, "Set5").load(2)


def test_lr_of_wrong_size_is_named(tmp_path):
    root = make_div2k(tmp_path / "D", [1], scales=(2,))
    write_png(root / "DIV2K_train_LR_bicubic/X2/0001x2.png", photo(29, 36, 0))
    with pytest.raises(ValueError, match=r"0001x2.png: LR size 36x29 is not HR size 72x60 / 2"):
        DIV2KImages(root, ranges=[[1, 1]]).prepare(2, progress=False)
    bench = make_benchmark(tmp_path / "b", "Set5", 1, scales=(2,))
    write_png(bench / "Set5/LR_bicubic/X2/img_000x2.png", photo(10, 10, 0))
    with pytest.raises(ValueError, match=r"img_000x2.png: LR size 10x10"):
        BenchmarkImages(bench, "Set5").load(2)
    (bench / "Set5/LR_bicubic/X2/img_000x2.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"img_000x2.png is missing"):
        BenchmarkImages(bench, "Set5").load(2)


def test_image_smaller_than_the_patch_is_named(tmp_path):
    root = make_div2k(tmp_path / "D", [1], size=(40, 90))
    pairs = DIV2KImages(root, ranges=[[1, 1]]).load(2)
    with pytest.raises(ValueError, match=r"0001: image 90x40 is smaller than the HR patch 64x64"):
        TrainPatches(pairs, 2, hr_patch=64, patches_per_epoch=2)


def test_sixteen_bit_images_are_refused(tmp_path):
    from PIL import Image

    path = tmp_path / "deep.png"
    Image.fromarray(np.zeros((8, 8), np.uint16)).save(path)
    with pytest.raises(ImageReadError, match=r"deep.png: unsupported image mode"):
        read_image(path)
