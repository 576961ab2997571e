"""The steady-state training step never makes the host wait for the device: no collective
for the stop flag on most steps, no ``.item()`` outside logging steps (counted on CPU)."""

from __future__ import annotations

import collections
from types import SimpleNamespace

import lightning as L
import pytest
import torch

from hdsr.training.callbacks import GracefulStop
from helpers.callbacks import callback_overrides
from helpers.configs import compose


class _Strategy:
    def __init__(self) -> None:
        self.calls = 0

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:  # noqa: A002
        self.calls += 1
        return decision


def _fake_trainer(world_size: int) -> SimpleNamespace:
    trainer = SimpleNamespace(world_size=world_size, strategy=_Strategy(), should_stop=False)
    trainer.saved_at = []  # the batch at which each checkpoint was written
    trainer.save_checkpoint = lambda path, weights_only=None: trainer.saved_at.append(
        trainer.batches
    )
    return trainer


@pytest.mark.parametrize("every", [1, 4, 10])
def test_ranks_agree_on_a_stop_every_n_batches(every):
    stop = GracefulStop("unused.ckpt", check_every_n_steps=every)
    trainer = _fake_trainer(world_size=2)
    for batch in range(1, 21):
        trainer.batches = batch
        stop.on_train_batch_end(trainer)
    assert trainer.strategy.calls == 20 // every  # one all-reduce per N batches
    assert not trainer.saved_at


def test_a_signal_stops_within_n_batches_plus_one_with_a_checkpoint():
    stop = GracefulStop("unused.ckpt", check_every_n_steps=4)
    trainer = _fake_trainer(world_size=2)
    for batch in range(1, 13):
        trainer.batches = batch
        if batch == 5:
            stop.received = 15  # SIGTERM arrives during batch 5
        stop.on_train_batch_end(trainer)
        if trainer.should_stop:
            break
    assert trainer.saved_at == [8] and trainer.should_stop and stop.exit_code == 128 + 15


def test_one_process_checks_every_batch_without_a_collective():
    stop = GracefulStop("unused.ckpt", check_every_n_steps=10)
    trainer = _fake_trainer(world_size=1)
    trainer.batches = 1
    trainer.strategy.reduce_boolean_decision = lambda decision, all=True: decision
    stop.received = 15
    stop.on_train_batch_end(trainer)
    assert trainer.saved_at == [1]


def test_bad_check_interval_is_named():
    from hdsr.errors import ConfigError
    from hdsr.training.config import check_config

    with pytest.raises(ConfigError, match=r"stop\.check_every_n_steps"):
        check_config(compose(["stop.check_every_n_steps=0"]))


SYNCING = ("item", "__bool__", "tolist", "__float__", "__int__", "cpu", "numpy")


@pytest.mark.slow
def test_training_steps_read_no_tensor_values_between_logging_steps(tmp_path, monkeypatch):
    """hdsr-train's own loop (in process): count the tensor reads that would each wait for a
    GPU, per optimizer step. Only logging steps (every trainer.log_every_n_steps) read."""
    import hdsr.training.run as train_mod

    counts: collections.Counter = collections.Counter()
    per_step: dict[int, dict[str, int]] = {}

    for name in SYNCING:
        original = getattr(torch.Tensor, name)

        def counting(self, *args, _name=name, _original=original, **kwargs):
            counts[_name] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counting)

    class Probe(L.Callback):
        def on_train_batch_start(self, trainer, *args):
            counts.clear()

        def on_train_batch_end(self, trainer, *args):
            per_step[trainer.global_step] = dict(counts)

    cfg = compose(
        [
            *callback_overrides("probe", Probe()),
            f"paths.run_dir={tmp_path / 'run'}",
            "logger=csv",
            "trainer.max_steps=12",
            "trainer.log_every_n_steps=4",
            "trainer.limit_val_batches=0",
            "checkpoint.every_n_train_steps=null",
            "data.batch_size=2",
            "data.patch_size=32",
            "data.patches_per_epoch=24",
            "model.net.n_feats=8",
            "model.net.n_blocks=1",
            "model.net.lower_layers=2",
        ]
    )
    train_mod.train(cfg)
    assert sorted(per_step) == list(range(1, 13))
    quiet = {s: c for s, c in per_step.items() if s % 4 != 0}
    assert all(not c for c in quiet.values()), quiet
    assert any(per_step[s] for s in (4, 8, 12))  # the logging steps do read the loss
