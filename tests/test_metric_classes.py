"""Tests for the torchmetrics classes hdsr.metrics.PSNRY / SSIMY.

They must give exactly the functional psnr_y / ssim_y numbers, average over distinct images
in index order bitwise like SRModule's one-process mean, and sync over DDP ranks (two gloo
processes on the CPU here).
"""

from __future__ import annotations

import math
import os
import pickle
import sys
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch

from hdsr.metrics import PSNRY, SSIMY, psnr_y, sr_like_hr, ssim_y

CLASSES = [(PSNRY, psnr_y), (SSIMY, ssim_y)]


def image_pair(shape: tuple[int, ...], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(SR, HR) uint8: random HR and a noisy copy of it."""
    rng = np.random.default_rng(seed)
    hr = rng.integers(0, 256, shape, dtype=np.uint8)
    sr = np.clip(hr.astype(np.int64) + rng.integers(-25, 26, shape), 0, 255).astype(np.uint8)
    return sr, hr


# A small validation set: mixed sizes, RGB and gray (index -> (SR, HR)).
SET_SHAPES = [(40, 36, 3), (33, 47), (52, 30, 3), (29, 29, 3), (45, 38)]


def small_set() -> list[tuple[np.ndarray, np.ndarray]]:
    return [image_pair(shape, seed) for seed, shape in enumerate(SET_SHAPES)]


def one_process_mean(scores: list[float]) -> float:
    """What SRModule._log_scores computes: Python sum in index order over the count."""
    return sum(s for s in scores) / len(scores)


class TableScore(PSNRY):
    """A metric whose per-image score is looked up in ``TABLE`` by the image's index,
    which the 1x2 uint8 'image' carries in its two pixels (high byte, low byte)."""

    TABLE: dict[int, float] = {}

    @staticmethod
    def _score(sr: np.ndarray, hr: np.ndarray, crop_border: int) -> float:
        return TableScore.TABLE[int(hr[0, 0]) * 256 + int(hr[0, 1])]


def table_image(index: int) -> np.ndarray:
    return np.array([[index // 256, index % 256]], dtype=np.uint8)


def random_scores(n: int, seed: int) -> list[float]:
    return np.random.default_rng(seed).uniform(20.0, 40.0, n).tolist()


# --- single process -----------------------------------------------------------------------


@pytest.mark.parametrize(("cls", "fn"), CLASSES)
@pytest.mark.parametrize("shape", [(40, 36, 3), (37, 41)], ids=["rgb", "gray"])
def test_single_image_equals_functional(cls, fn, shape) -> None:
    sr, hr = image_pair(shape, seed=3)
    m = cls(scale=3)
    m.update(sr, hr, 7)
    value = m.compute()
    assert value.dtype == torch.float64 and value.ndim == 0
    assert float(value) == fn(sr, hr, 3)
    assert m.per_image() == [(7, fn(sr, hr, 3))]


@pytest.mark.parametrize(("cls", "fn"), CLASSES)
def test_torch_uint8_inputs_equal_numpy(cls, fn) -> None:
    sr, hr = image_pair((32, 28, 3), seed=4)
    m = cls(scale=2)
    m.update(torch.from_numpy(sr), torch.from_numpy(hr), torch.tensor(0))
    assert float(m.compute()) == fn(sr, hr, 2)


def test_gray_hr_with_rgb_uint8_sr_uses_sr_like_hr() -> None:
    sr, hr = image_pair((30, 30, 3), seed=5)
    gray_hr = hr[..., 1].copy()
    m = PSNRY(scale=2)
    m.update(sr, gray_hr, 0)
    assert float(m.compute()) == psnr_y(sr_like_hr(sr, gray_hr), gray_hr, 2)


@pytest.mark.parametrize(("cls", "fn"), CLASSES)
@pytest.mark.parametrize("gray", [False, True], ids=["rgb_hr", "gray_hr"])
@pytest.mark.parametrize("layout", ["1chw", "chw"])
def test_float_sr_tensor_rounded_like_srmodule(cls, fn, gray, layout) -> None:
    from hdsr.imaging import to_uint8_image

    _, hr = image_pair((26, 34, 3), seed=6)
    if gray:
        hr = hr[..., 0].copy()
    # Network-like output: off-grid values, exact .5 ties and values outside 0..255.
    rng = np.random.default_rng(6)
    out = torch.from_numpy(rng.uniform(-10.0, 265.0, (1, 3, 26, 34))).float()
    out[0, :, :2, :2] = torch.tensor([[0.5, 1.5], [2.5, 254.5]])
    expected = fn(sr_like_hr(to_uint8_image(out).numpy(), hr), hr, 2)
    m = cls(scale=2)
    m.update(out if layout == "1chw" else out[0], torch.from_numpy(hr), 0)
    assert float(m.compute()) == expected


def test_bf16_sr_tensor_like_evaluate() -> None:
    """hdsr-eval casts a bf16 output to float32 before to_uint8_image; so does update."""
    from hdsr.imaging import to_uint8_image

    _, hr = image_pair((24, 24, 3), seed=8)
    out = torch.from_numpy(np.random.default_rng(8).uniform(0, 255, (1, 3, 24, 24)))
    out = out.to(torch.bfloat16)
    m = PSNRY(scale=2)
    m.update(out, hr, 0)
    assert float(m.compute()) == psnr_y(to_uint8_image(out.float()).numpy(), hr, 2)


@pytest.mark.parametrize(("cls", "fn"), CLASSES)
def test_mean_over_a_set_equals_one_process_mean(cls, fn) -> None:
    images = small_set()
    m = cls(scale=2)
    for i in [3, 0, 4, 1, 2]:  # update order does not matter
        m.update(*images[i], i)
    scores = [fn(sr, hr, 2) for sr, hr in images]
    assert float(m.compute()) == one_process_mean(scores)
    assert m.per_image() == list(enumerate(scores))


def test_repeated_indices_count_once_first_kept() -> None:
    images = small_set()
    m = PSNRY(scale=2)
    for i in [0, 1, 2, 0, 1]:
        m.update(*images[i], i)
    m.update(*images[4], 2)  # a different image under a seen index: the first one stays
    scores = [psnr_y(sr, hr, 2) for sr, hr in images[:3]]
    assert m.per_image() == list(enumerate(scores))
    assert float(m.compute()) == one_process_mean(scores)


@pytest.mark.parametrize("seed", range(8))
def test_mean_is_bitwise_python_sum_in_index_order(seed: int) -> None:
    n = 500
    scores = random_scores(n, seed)
    TableScore.TABLE = dict(enumerate(scores))
    order = np.random.default_rng(seed).permutation(n).tolist() + [0, 17, n - 1]  # + repeats
    m = TableScore(scale=0)
    for i in order:
        m.update(table_image(i), table_image(i), i)
    value = m.compute()
    assert float(value) == one_process_mean(scores)  # bitwise, not approx
    assert m.per_image() == list(enumerate(scores))


def test_torch_sum_would_not_be_bitwise() -> None:
    """Why compute() sums in Python floats: torch's float64 sum rounds differently."""
    differs = 0
    for seed in range(8):
        scores = random_scores(500, seed)
        differs += torch.tensor(scores, dtype=torch.float64).sum().item() != sum(scores)
    assert differs > 0


def test_forward_returns_the_image_score_and_accumulates() -> None:
    images = small_set()
    m = SSIMY(scale=2)
    for i, (sr, hr) in enumerate(images[:3]):
        assert float(m(sr, hr, i)) == ssim_y(sr, hr, 2)
    scores = [ssim_y(sr, hr, 2) for sr, hr in images[:3]]
    assert float(m.compute()) == one_process_mean(scores)


def test_identical_image_gives_inf_psnr() -> None:
    _, hr = image_pair((20, 20, 3), seed=9)
    m = PSNRY(scale=2)
    m.update(hr, hr, 0)
    assert float(m.compute()) == math.inf


def test_reset_and_empty() -> None:
    images = small_set()
    m = PSNRY(scale=2)
    m.update(*images[0], 0)
    m.reset()
    with pytest.warns(UserWarning, match="before the ``update``"):
        assert math.isnan(float(m.compute()))
    assert m.per_image() == []
    m.update(*images[1], 1)
    assert float(m.compute()) == psnr_y(*images[1], 2)


def test_metric_flags_and_no_checkpoint_state() -> None:
    m = PSNRY(scale=4)
    assert m.scale == 4
    assert (m.full_state_update, m.higher_is_better, m.is_differentiable) == (False, True, False)
    assert SSIMY.full_state_update is False and SSIMY.higher_is_better is True
    m.update(*image_pair((20, 20, 3), 0), 0)
    assert m.state_dict() == {}
    assert m.indices[0].dtype == m.scores[0].dtype == torch.float64


def test_bad_inputs_raise() -> None:
    sr, hr = image_pair((24, 24, 3), seed=10)
    m = PSNRY(scale=2)
    with pytest.raises(ValueError, match="floating torch tensor"):
        m.update(sr.astype(np.float32), hr, 0)  # float numpy: not the network's output
    with pytest.raises(ValueError, match="floating sr tensor"):
        m.update(torch.zeros(2, 3, 24, 24), hr, 0)  # a batch of two
    with pytest.raises(ValueError, match="floating sr tensor"):
        m.update(torch.zeros(24, 24, 3), hr, 0)  # channel-last float
    with pytest.raises(ValueError, match="shape mismatch"):
        m.update(sr[:20], hr, 0)
    for bad in (1.0, True, "3", torch.tensor(1.0), np.array([1, 2])):
        with pytest.raises((TypeError, ValueError)):
            m.update(sr, hr, bad)
    with pytest.raises(ValueError, match="index"):
        m.update(sr, hr, -1)
    for scale in (-1, 2.0, True):
        with pytest.raises(ValueError, match="scale"):
            PSNRY(scale=scale)
    assert m.per_image() == []  # nothing was kept


def test_index_forms() -> None:
    sr, hr = image_pair((24, 24, 3), seed=11)
    m = PSNRY(scale=2)
    m.update(sr, hr, np.int64(5))
    m.update(sr, hr, torch.tensor([6]))
    m.update(sr, hr, np.array(7, dtype=np.uint16))
    assert [i for i, _ in m.per_image()] == [5, 6, 7]


# --- DDP: two gloo processes on the CPU -------------------------------------------------------

WORLD = 2


def _shard(n: int, rank: int) -> list[int]:
    """Rank ``rank``'s indices of an ``n``-image set, interleaved and padded by wrapping."""
    per_rank = -(-n // WORLD)
    return [(rank + WORLD * k) % n for k in range(per_rank)]


def _ddp_worker(rank: int, store_path: str, out_dir: str) -> None:
    if sys.platform == "linux":
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.distributed.init_process_group(
        "gloo",
        store=torch.distributed.FileStore(store_path, WORLD),
        rank=rank,
        world_size=WORLD,
        timeout=timedelta(seconds=60),
    )
    try:
        out: dict = {}
        # 3 images on 2 ranks: rank 0 scores [0, 2], rank 1 [1, 0].
        images = small_set()[:3]
        for cls in (PSNRY, SSIMY):
            m = cls(scale=2)
            shard = _shard(3, rank)
            for i in shard:
                m.update(*images[i], i)
            out[cls.__name__] = {
                "shard": shard,
                "compute": float(m.compute()),
                "per_image": m.per_image(),
                "local_after": len(m.indices),  # the local state is back after the sync
                "compute_again": float(m.compute()),
            }
        # 41 random scores, shards of 21 (rank 1 repeats image 0).
        TableScore.TABLE = dict(enumerate(random_scores(41, seed=123)))
        m = TableScore(scale=0)
        for i in _shard(41, rank):
            m.update(table_image(i), table_image(i), i)
        out["table"] = {"compute": float(m.compute()), "per_image": m.per_image()}
        # A rank with no image at all (1 image, no padding).
        m = PSNRY(scale=2)
        if rank == 0:
            m.update(*images[0], 0)
        out["empty_rank"] = {"compute": float(m.compute()), "per_image": m.per_image()}
        Path(out_dir, f"rank{rank}.pkl").write_bytes(pickle.dumps(out))
    finally:
        torch.distributed.destroy_process_group()


def test_ddp_sync_two_ranks_gloo(tmp_path: Path) -> None:
    ctx = torch.multiprocessing.spawn(
        _ddp_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=WORLD, join=False
    )
    deadline = time.monotonic() + 120
    while not ctx.join(timeout=1):  # raises if a worker failed
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail("DDP workers did not finish in 120 s")
    results = [pickle.loads((tmp_path / f"rank{r}.pkl").read_bytes()) for r in range(WORLD)]

    images = small_set()[:3]
    assert results[0]["PSNRY"]["shard"] == [0, 2]
    assert results[1]["PSNRY"]["shard"] == [1, 0]
    for cls, fn in CLASSES:
        scores = [fn(sr, hr, 2) for sr, hr in images]
        for r in range(WORLD):
            got = results[r][cls.__name__]
            assert got["compute"] == one_process_mean(scores)
            assert got["compute_again"] == got["compute"]
            assert got["per_image"] == list(enumerate(scores))
            assert got["local_after"] == 2

    table = random_scores(41, seed=123)
    for r in range(WORLD):
        assert results[r]["table"]["compute"] == one_process_mean(table)
        assert results[r]["table"]["per_image"] == list(enumerate(table))
        assert results[r]["empty_rank"]["compute"] == psnr_y(*images[0], 2)
        assert results[r]["empty_rank"]["per_image"] == [(0, psnr_y(*images[0], 2))]


# --- one averaging rule for every table -----------------------------------------------------


def test_results_csv_mean_is_the_logged_metric_bit_for_bit() -> None:
    """hdsr-eval's results.csv (results.summarize) averages like the logged test metric;
    numpy's pairwise mean would differ in the last bits for sets of 8 or more images."""
    from hdsr.evaluation.tables import summarize

    numpy_differs = 0
    for seed in range(8):
        scores = random_scores(100, seed)  # B100's size
        TableScore.TABLE = dict(enumerate(scores))
        m = TableScore(scale=0)
        for i in range(100):
            m.update(table_image(i), table_image(i), i)
        rows = [
            {
                "model": "hdsrnet",
                "scale": 2,
                "set": "B100",
                "image": f"{i}",
                "psnr_y": s,
                "ssim_y": s / 100,
                "bicubic_psnr_y": s - 3,
                "bicubic_ssim_y": s / 200,
            }
            for i, s in enumerate(scores)
        ]
        measured = {r["method"]: r for r in summarize(rows, ["B100"]) if r["source"] == "measured"}
        assert measured["hdsrnet"]["psnr_y"] == float(m.compute())
        assert measured["hdsrnet"]["images"] == 100
        numpy_differs += float(np.mean(scores)) != float(m.compute())
    assert numpy_differs > 0  # the guard: the rule matters on sets of this size


def test_bicubic_baseline_mean_is_the_metric_over_its_images() -> None:
    from hdsr.data.pairs import ImagePair
    from hdsr.evaluation.bicubic import bicubic_per_image, bicubic_scores, bicubic_sr

    rng = np.random.default_rng(0)
    pairs = []
    for k in range(14):  # Set14's size
        hr = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
        lr = hr[::2, ::2].copy()
        pairs.append(ImagePair(name=f"img{k}", lr=lr, hr=hr, scale=2))
    psnr, ssim = PSNRY(scale=2), SSIMY(scale=2)
    for i, p in enumerate(pairs):
        sr = bicubic_sr(p.lr, p.hr, 2)
        psnr.update(sr, p.hr, i)
        ssim.update(sr, p.hr, i)
    assert bicubic_scores({"S": pairs}, 2)["S"] == (float(psnr.compute()), float(ssim.compute()))
    per_image = bicubic_per_image({"S": pairs}, 2)["S"]
    assert list(per_image) == [p.name for p in pairs]
