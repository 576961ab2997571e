"""The optimizer and scheduler config groups: SRModule built from the composed ``model``
config, the paper's defaults to the bit, the released trainer's schedule, AdamW, the
fused/foreach choice, what a checkpoint records, and the old ``optim.*`` keys."""

from __future__ import annotations

import io
import warnings
from types import SimpleNamespace

import lightning as L
import pytest
import torch

from hdsr.training.optimizers import describe, kernel_keywords
from hdsr.training.run import build_module
from helpers.configs import compose

TINY_NET = ["model.net.n_feats=8", "model.net.n_blocks=1", "model.net.lower_layers=2"]


def module_of(overrides: list[str], seed: int = 0):
    """SRModule as hdsr-train builds it from the composed config (tiny network)."""
    cfg = compose([*TINY_NET, *overrides])
    torch.manual_seed(seed)
    return build_module(cfg, SimpleNamespace(val_set_names=["demo"], test_set_names=[]))


def configured(module):
    conf = module.configure_optimizers()
    return conf["optimizer"], conf["lr_scheduler"]


def lrs(scheduler, optimizer, steps: int) -> list[float]:
    """The learning rate before each of ``steps`` optimizer steps (index = global step)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # stepping the scheduler without optimizer steps
        out = []
        for _ in range(steps):
            out.append(optimizer.param_groups[0]["lr"])
            scheduler.step()
    return out


def test_default_config_builds_the_paper_adam_and_steplr_exactly():
    """hdsr 0.1 built Adam(lr 1e-4, betas (0.9, 0.999), eps 1e-8, fused) and StepLR(300k, 0.5)."""
    module = module_of([])
    opt, sched = configured(module)
    assert (
        type(opt) is torch.optim.Adam
        and type(sched["scheduler"]) is torch.optim.lr_scheduler.StepLR
    )
    assert sched["interval"] == "step" and sched.get("frequency", 1) == 1
    ref_net = module_of([]).net  # same seed: same weights
    ref = torch.optim.Adam(ref_net.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-8, fused=True)
    ref_sched = torch.optim.lr_scheduler.StepLR(ref, step_size=300_000, gamma=0.5)
    assert opt.state_dict() == ref.state_dict()  # every param-group setting, betas a tuple
    assert sched["scheduler"].state_dict() == ref_sched.state_dict()
    # three updates on the same gradients give the same weights, to the bit
    x = torch.rand(2, 3, 8, 8) * 255
    for _ in range(3):
        for o, net in ((opt, module.net), (ref, ref_net)):
            o.zero_grad()
            net(x).abs().mean().backward()
            o.step()
    for a, b in zip(module.net.parameters(), ref_net.parameters(), strict=True):
        assert torch.equal(a, b)
    # the rate halves at step 300,000 exactly as StepLR's
    got = lrs(sched["scheduler"], opt, 300_002)
    assert got == lrs(ref_sched, ref, 300_002)
    assert got[299_999] == 1e-4 and got[300_000] == got[300_001] == 5e-5


def test_released_schedule_halves_once_at_200k_and_stays():
    """The authors' trainer: MultiStepLR, milestone epoch 200 of 1000 iterations."""
    opt, sched = configured(module_of(["scheduler=released"]))
    sched = sched["scheduler"]
    assert type(sched) is torch.optim.lr_scheduler.MultiStepLR and sched.gamma == 0.5
    assert dict(sched.milestones) == {200_000: 1}
    got = lrs(sched, opt, 600_002)  # past where the paper's StepLR halves (300k, 600k)
    assert set(got[:200_000]) == {1e-4}
    assert set(got[200_000:]) == {5e-5}


def test_the_command_line_picks_the_groups_of_a_paper_recipe():
    """The recipes name the paper's optimizer and schedule (tests/test_ops_configs.py);
    the command line still chooses."""
    cfg = compose(["experiment=paper_x4", "scheduler=released", "optimizer=adamw"])
    assert cfg.scheduler._target_.endswith("MultiStepLR")
    assert cfg.optimizer._target_ == "torch.optim.AdamW"


def test_adamw_with_another_learning_rate():
    """hdsr-train optimizer=adamw optimizer.lr=2e-4"""
    opt, sched = configured(module_of(["optimizer=adamw", "optimizer.lr=2e-4"]))
    assert type(opt) is torch.optim.AdamW
    group = opt.param_groups[0]
    assert group["lr"] == 2e-4 and group["weight_decay"] == 0.01 and group["fused"]
    assert sched["scheduler"].base_lrs == [2e-4]


@pytest.mark.parametrize("option", ["adam", "adamw"])
@pytest.mark.parametrize(
    ("precision", "clip", "kernel"),
    [("32-true", 10, "fused"), ("bf16-mixed", 10, "foreach"), ("bf16-mixed", None, "fused")],
)
def test_module_picks_the_kernel_lightning_accepts(option, precision, clip, kernel):
    module = module_of([f"optimizer={option}"])
    module.trainer = L.Trainer(
        accelerator="cpu", precision=precision, gradient_clip_val=clip, logger=False
    )
    group = configured(module)[0].param_groups[0]
    assert group[kernel] and not group["foreach" if kernel == "fused" else "fused"]


def test_a_kernel_set_in_the_config_is_kept():
    opt, _ = configured(module_of(["+optimizer.fused=false"]))
    assert not opt.param_groups[0]["fused"]
    assert kernel_keywords(torch.optim.LBFGS, {"fused": True}) == {}  # takes neither


def test_checkpoints_record_the_optimizer_and_scheduler_as_plain_data():
    module = module_of(["optimizer=adamw", "scheduler=released"])
    hp = dict(module.hparams)
    assert hp["optimizer"] == {
        "_target_": "torch.optim.adamw.AdamW",
        "lr": 1e-4,
        "betas": [0.9, 0.999],
        "eps": 1e-8,
        "weight_decay": 0.01,
    }
    assert hp["scheduler"] == {
        "_target_": "torch.optim.lr_scheduler.MultiStepLR",
        "milestones": [200_000],
        "gamma": 0.5,
    }
    assert hp["model_name"] == "hdsrnet" and hp["net_config"]["n_feats"] == 8
    assert "name" not in hp and "lr" not in hp
    buf = io.BytesIO()
    torch.save({"hyper_parameters": hp}, buf)
    buf.seek(0)
    assert torch.load(buf, weights_only=True)["hyper_parameters"] == hp  # what hdsr reads
    assert describe(None) is None
