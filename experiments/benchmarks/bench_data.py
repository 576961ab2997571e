"""Training-data throughput: patches/s from the decoded cache vs decoding PNGs per patch.

Generates a DIV2K-sized tree (2040x1356 photo-like PNGs, official layout with LR files),
then measures how many HR-128 training patches (random crop + flips + tensor conversion)
one data-loader worker produces per second:

* cache: ``DIV2KImages`` + ``TrainPatches`` reading memory-mapped ``.npy`` files;
* png:   the same crops, but decoding the LR and HR PNGs for every patch.

    python experiments/benchmarks/bench_data.py [--images 8] [--scale 2] [--patches 4000]
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests"))
from hdsr.data.datasets import PatchSampler, TrainPatches, lr_patch_size  # noqa: E402
from hdsr.data.div2k import DIV2KImages  # noqa: E402
from hdsr.data.transforms import augment, paired_random_crop, to_tensor_chw  # noqa: E402
from hdsr.imaging import read_image  # noqa: E402
from helpers.datatrees import make_div2k  # noqa: E402


class PngPerPatch(Dataset):
    """The naive loader: decode both PNGs for every patch, then crop and flip."""

    def __init__(self, src: DIV2KImages, scale: int, hr_patch: int, n: int) -> None:
        self.files = [(src.lr_path(i, scale), src.hr_path(i)) for i in src.indices]
        self.scale, self.lr_patch, self.n = scale, lr_patch_size(hr_patch, scale), n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng((0, index))
        lr_path, hr_path = self.files[int(rng.integers(len(self.files)))]
        lr, hr = read_image(lr_path), read_image(hr_path)
        lr, hr = paired_random_crop(lr, hr, self.lr_patch, self.scale, rng, lr_path.name)
        lr, hr = augment([lr, hr], *(bool(b) for b in rng.integers(0, 2, size=3)))
        return {"lr": to_tensor_chw(lr), "hr": to_tensor_chw(hr)}


def rate_in_process(ds: Dataset, n: int) -> float:
    """Patches/s of one process producing items (the work of one loader worker)."""
    ds[0]
    t = time.perf_counter()
    for i in range(1, n + 1):
        ds[i]
    return n / (time.perf_counter() - t)


def rate_through_loader(ds: Dataset, n: int, batch: int = 16) -> float:
    """Patches/s delivered by a DataLoader with exactly one worker process."""
    loader = DataLoader(ds, batch_size=batch, sampler=PatchSampler(n), num_workers=1)
    it = iter(loader)
    next(it)  # worker start-up is not throughput
    t = time.perf_counter()
    count = 0
    for b in it:
        count += b["lr"].shape[0]
    return count / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--scale", type=int, default=2)
    ap.add_argument("--patch", type=int, default=128, help="HR patch size")
    ap.add_argument("--patches", type=int, default=4000, help="patches timed on the cache path")
    ap.add_argument("--root", type=Path, default=None, help="tree to reuse (default: a temp dir)")
    args = ap.parse_args()
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as tmp:
        root = args.root or Path(tmp) / "DIV2K"
        t = time.perf_counter()
        if not (root / "DIV2K_train_HR").is_dir():
            make_div2k(root, range(1, args.images + 1), scales=(args.scale,), size=(1356, 2040))
        t_gen = time.perf_counter() - t
        src = DIV2KImages(root, ranges=[[1, args.images]])
        t = time.perf_counter()
        src.prepare(args.scale, progress=False)
        t_cache = time.perf_counter() - t
        cached = TrainPatches(src.load(args.scale), args.scale, args.patch, args.patches + 1)
        png = PngPerPatch(src, args.scale, args.patch, max(args.patches // 40, 20) + 1)

        results = {
            "cache, in one process": rate_in_process(cached, args.patches),
            "cache, DataLoader 1 worker": rate_through_loader(cached, args.patches),
            "png per patch, in one process": rate_in_process(png, len(png) - 1),
            "png per patch, DataLoader 1 worker": rate_through_loader(png, len(png) - 1),
        }

    print(
        f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"python {platform.python_version()}"
    )
    print(
        f"tree: {args.images} images 2040x1356, x{args.scale}, HR patch {args.patch} "
        f"(LR {lr_patch_size(args.patch, args.scale)}); generated in {t_gen:.1f} s, "
        f"cached in {t_cache:.1f} s ({t_cache / args.images:.2f} s/image)"
    )
    print(f"{'loader':38s} {'patches/s':>10s}")
    for name, rate in results.items():
        print(f"{name:38s} {rate:10.0f}")
    speedup = results["cache, DataLoader 1 worker"] / results["png per patch, DataLoader 1 worker"]
    print(f"cache / png per patch (1 worker): {speedup:.1f}x")


if __name__ == "__main__":
    main()
