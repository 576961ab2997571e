"""LightningDataModule: random training patches and whole-image validation sets."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol

import lightning as L
import torch
from torch.utils.data import DataLoader

from hdsr.data.benchmarks import BenchmarkImages
from hdsr.data.datasets import (
    DevicePatchLoader,
    PatchSampler,
    ShardSampler,
    StepResumableLoader,
    TrainPatches,
    WholeImages,
)
from hdsr.data.pairs import ImagePair
from hdsr.imaging import check_scale


class PairSource(Protocol):
    """Anything that yields the (LR, HR) pairs of a set at a scale.

    A source may also have ``prepare(scale)``: one-off work (decoding into a cache,
    generating LR images) that Lightning runs on one process per node before ``setup``.
    """

    def load(self, scale: int) -> list[ImagePair]: ...


class SRDataModule(L.LightningDataModule):
    """Training patches from ``train`` and one whole-image validation loader per ``val_sets``.

    Args:
        scale: 2, 3 or 4.
        train: source of training pairs.
        val_sets: ``{set name: source}``, or benchmark names (``[Set5, Set14]``) found
            under ``benchmark_root``; metrics are logged per set name.
        test_sets: the same for ``Trainer.test`` (default: none).
        patch_size: nominal HR patch size; the LR patch is ``round(patch_size / scale)``.
        batch_size: training batch size.
        patches_per_epoch: training patches in one epoch.
        num_workers: data-loader workers for training.
        flips: random horizontal/vertical flips and transpose.
        device_resident: keep the decoded training images on the training device and cut
            the patches there (``DevicePatchLoader``); for fast GPUs. Needs the images to
            fit in device memory, on every rank (DIV2K 1-900, HR + LR: about 9.4 GB at
            x2, 8.3 GB at x3, 8.0 GB at x4); the free memory is checked before loading.
        seed: seed of the patch order.
        benchmark_root: folder of the benchmark sets named in ``val_sets``/``test_sets``.
        root, cache_dir: the data config's folders (the sources get them through
            interpolation; kept here for reference).
    """

    def __init__(
        self,
        scale: int,
        train: PairSource,
        val_sets: Mapping[str, PairSource] | Sequence[str],
        test_sets: Mapping[str, PairSource] | Sequence[str] | None = None,
        patch_size: int = 128,
        batch_size: int = 16,
        patches_per_epoch: int = 16000,
        num_workers: int = 0,
        flips: bool = True,
        seed: int = 0,
        device_resident: bool = False,
        root: str | None = None,
        benchmark_root: str | None = None,
        cache_dir: str | None = None,
    ) -> None:
        super().__init__()
        self.scale = check_scale(scale)
        self.train_source = train
        self.val_sources = resolve_sets(val_sets, benchmark_root, "data.val_sets")
        self.test_sources = resolve_sets(test_sets or {}, benchmark_root, "data.test_sets")
        if not self.val_sources:
            raise ValueError("data.val_sets is empty: name at least one validation set")
        self.patch_size = patch_size
        self.batch_size = batch_size
        self.patches_per_epoch = patches_per_epoch
        self.num_workers = num_workers
        self.flips = flips
        self.seed = seed
        self.device_resident = device_resident
        self.root, self.benchmark_root, self.cache_dir = root, benchmark_root, cache_dir
        self.train_set: TrainPatches | None = None
        self.val_pairs: dict[str, list[ImagePair]] = {}
        self.test_pairs: dict[str, list[ImagePair]] = {}

    @property
    def val_set_names(self) -> list[str]:
        return list(self.val_sources)

    @property
    def test_set_names(self) -> list[str]:
        return list(self.test_sources)

    def prepare_data(self) -> None:
        """Build caches once per node (Lightning calls this on local rank 0 only)."""
        prepare = getattr(self.train_source, "prepare", None)
        if prepare is not None:
            prepare(self.scale)

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = TrainPatches(
                self.train_source.load(self.scale),
                self.scale,
                self.patch_size,
                self.patches_per_epoch,
                seed=self.seed,
                flips=self.flips,
            )
        if stage in (None, "fit", "validate") and not self.val_pairs:
            self.val_pairs = {n: src.load(self.scale) for n, src in self.val_sources.items()}
        if stage in (None, "test") and not self.test_pairs:
            if not self.test_sources:
                raise ValueError("data.test_sets is empty: name at least one test set")
            self.test_pairs = {n: src.load(self.scale) for n, src in self.test_sources.items()}

    def _rank_world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def per_rank_batch_size(self) -> int:
        """``batch_size`` is the global batch: split over ranks, which must divide it."""
        _, world = self._rank_world()
        if self.batch_size % world:
            raise ValueError(
                f"data.batch_size={self.batch_size} (the global batch) is not divisible by "
                f"the {world} training processes (trainer.devices x trainer.num_nodes)"
            )
        return self.batch_size // world

    def train_dataloader(self) -> DataLoader | DevicePatchLoader:
        assert self.train_set is not None, "call setup('fit') first"
        rank, world = self._rank_world()
        batch = self.per_rank_batch_size()
        trainer = self.trainer
        sampler = PatchSampler(
            len(self.train_set),
            batch,
            rank,
            world,
            step_fn=(lambda: trainer.global_step) if trainer is not None else None,
        )
        if self.device_resident:
            device = trainer.strategy.root_device if trainer is not None else "cpu"
            return DevicePatchLoader(self.train_set, sampler, device)
        return StepResumableLoader(
            self.train_set,
            batch_size=batch,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            drop_last=True,
        )

    def val_dataloader(self) -> list[DataLoader]:
        return _whole_image_loaders(self.val_pairs, *self._rank_world())

    def test_dataloader(self) -> list[DataLoader]:
        return _whole_image_loaders(self.test_pairs, *self._rank_world())


class WholeImageSets(L.LightningDataModule):
    """Whole-image test loaders over pairs already loaded (``hdsr-eval``'s benchmarks).

    One batch-1 loader per set, in order; under DDP each rank takes its shard, padded by
    wrapping, as ``SRDataModule.test_dataloader`` does (``SRModule`` counts each image
    once).

    Args:
        pairs: ``{set name: pairs}``, every set non-empty.
    """

    def __init__(self, pairs: Mapping[str, Sequence[ImagePair]]) -> None:
        super().__init__()
        self.test_pairs = {name: list(p) for name, p in pairs.items()}

    def test_dataloader(self) -> list[DataLoader]:
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
        return _whole_image_loaders(self.test_pairs, rank, world)


def resolve_sets(
    sets: Mapping[str, PairSource] | Sequence[str], benchmark_root: str | None, key: str
) -> dict[str, PairSource]:
    """``{name: source}`` from a mapping, or from benchmark names under ``benchmark_root``."""
    if isinstance(sets, Mapping):
        return dict(sets)
    if isinstance(sets, str):
        sets = [sets]
    if sets and not benchmark_root:
        raise ValueError(
            f"{key} names benchmark sets {list(sets)} but data.benchmark_root is unset"
        )
    return {name: BenchmarkImages(benchmark_root, name) for name in sets}


def _whole_image_loaders(
    sets: Mapping[str, list[ImagePair]], rank: int, world: int
) -> list[DataLoader]:
    """Batch-1 loaders; under DDP each rank takes its own images (padded to one length by
    wrapping; ``SRModule`` drops the repeats by image index)."""
    return [
        DataLoader(
            WholeImages(pairs, name),
            batch_size=1,
            sampler=ShardSampler(len(pairs), rank, world),
            collate_fn=_collate_one,
        )
        for name, pairs in sets.items()
    ]


def _collate_one(items: list[dict]) -> dict:
    """Batch of one whole image: lr gets a batch dim; hr, name and index stay as they are."""
    (item,) = items
    return {
        "lr": item["lr"].unsqueeze(0),
        "hr": item["hr"],
        "name": item["name"],
        "index": item["index"],
    }
