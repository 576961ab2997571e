"""hdsr-train's command line: nested-group patterns, repeated keys, config errors."""

from __future__ import annotations

import pytest

from hdsr.cli.overrides import UsageError, expand_group_patterns
from hdsr.errors import ConfigError
from hdsr.training.config import check_config
from helpers.configs import ABLATIONS, compose

MODULE = "hdsr.conf"


def test_nine_table1_variants_ship_with_the_package():
    assert len(ABLATIONS) == 9
    assert [a.split("_")[0] for a in ABLATIONS] == [f"r{i}" for i in range(1, 10)]


def test_nested_group_glob_expands_to_every_variant():
    argv = expand_group_patterns(["-m", "model=ablation/*", "trainer.max_steps=1"], MODULE)
    assert argv[0] == "-m" and argv[2] == "trainer.max_steps=1"
    key, value = argv[1].split("=", 1)
    assert key == "model"
    assert value.split(",") == [f"ablation/{a}" for a in ABLATIONS]


def test_partial_patterns_and_mixed_lists():
    argv = expand_group_patterns(["--multirun", "model=ablation/r[12]_*,hdsrnet"], MODULE)
    assert argv[1] == "model=ablation/r1_six_conv,ablation/r2_residual_conv,hdsrnet"


def test_pattern_matching_nothing_is_an_error(capsys):
    with pytest.raises(UsageError) as err:
        expand_group_patterns(["-m", "model=ablation/nope*"], MODULE)
    assert err.value.code == 2
    msg = capsys.readouterr().err
    assert "matches no option" in msg and "model/ablation" in msg and "r9_hdsrnet" in msg


def test_group_key_given_twice_is_rejected(capsys):
    with pytest.raises(UsageError):
        expand_group_patterns(
            ["-m", "model=ablation/r1_six_conv", "model=ablation/r2_residual_conv"], MODULE
        )
    assert "given twice" in capsys.readouterr().err


def test_several_options_without_multirun_is_an_error(capsys):
    with pytest.raises(UsageError):
        expand_group_patterns(["model=ablation/*"], MODULE)
    assert "add -m" in capsys.readouterr().err


def test_plain_arguments_pass_through_untouched():
    argv = ["data.scale=3", "model=hdsrnet", "--cfg", "job", "logger.wandb.tags=[a*]"]
    assert expand_group_patterns(argv, MODULE) == argv


@pytest.mark.parametrize("bad", [1, 5, 8])
def test_bad_scale_is_a_config_error_naming_the_key(bad):
    cfg = compose([f"data.scale={bad}"])
    with pytest.raises(ConfigError, match=r"data\.scale"):
        check_config(cfg)


def test_scale_switches_the_whole_stack():
    cfg = compose(["data.scale=3", "data.patch_size=96"])
    check_config(cfg)
    assert cfg.model.net.scale == 3 and cfg.data.scale == 3
    assert cfg.run_name == "hdsrnet_x3_s0"


@pytest.mark.parametrize("key", ["data.patch_size", "data.batch_size", "data.patches_per_epoch"])
@pytest.mark.parametrize("value", ["0", "abc", "2.5", "true"])
def test_sizes_that_are_not_positive_integers_are_config_errors(key, value):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.") + ".*positive integer"):
        check_config(compose([f"{key}={value}"]))


@pytest.mark.parametrize(
    ("override", "says"),
    [
        ("optimizer.lr=-1e-4", "optimizer.lr must be a positive number"),
        ("optimizer.lr=0", "optimizer.lr must be a positive number"),
        ("optimizer.lr=nan", "optimizer.lr must be a positive number"),
        ("optimizer.eps=0", "optimizer.eps must be a positive number"),
        ("optimizer=adamw optimizer.weight_decay=-0.1", "optimizer.weight_decay must be"),
        ("optimizer.betas=[0.9,1.0]", r"optimizer.betas must be two numbers in \[0, 1\)"),
        ("scheduler.gamma=0", "scheduler.gamma must be a positive number"),
        ("scheduler.step_size=0", "scheduler.step_size must be a positive integer"),
        ("model.net.temperature=0", "model.net.temperature must be a positive number"),
        ("model.net.temperature=-40", "model.net.temperature must be a positive number"),
    ],
)
def test_numbers_pytorch_or_the_network_would_refuse_later_are_refused_up_front(override, says):
    """They failed once training started (Adam's or the network's ValueError traceback)."""
    with pytest.raises(ConfigError, match=says):
        check_config(compose(override.split()))


@pytest.mark.parametrize("scale, smallest", [(2, 2), (3, 2), (4, 3)])
def test_hr_patch_too_small_for_the_scale_names_the_smallest(scale, smallest):
    says = rf"data\.patch_size={smallest - 1} .*at least {smallest}"
    with pytest.raises(ConfigError, match=says):
        check_config(compose([f"data.scale={scale}", f"data.patch_size={smallest - 1}"]))
    check_config(compose([f"data.scale={scale}", f"data.patch_size={smallest}"]))


def test_one_pixel_lr_patches_flip_and_convert():
    import numpy as np

    from hdsr.data.transforms import augment, to_tensor_chw

    lr = np.arange(3, dtype=np.uint8).reshape(1, 1, 3)
    for flips in ((True, False, False), (False, True, True), (True, True, False)):
        (out,) = augment([lr], *flips)
        assert to_tensor_chw(out).flatten().tolist() == [0.0, 1.0, 2.0]


def test_added_overrides_follow_the_users_so_flags_may_come_last():
    from hdsr.cli.overrides import with_overrides

    extra = ["hydra.run.dir=."]
    assert with_overrides(["data.scale=3", "--cfg", "job"], extra) == [
        "data.scale=3",
        "hydra.run.dir=.",
        "--cfg",
        "job",
    ]
    assert with_overrides(["--cfg", "job"], extra) == ["hydra.run.dir=.", "--cfg", "job"]
    assert with_overrides(["-m", "seed=1,2"], extra) == ["-m", "seed=1,2", "hydra.run.dir=."]


def test_multirun_with_cfg_is_a_usage_error_in_the_users_terms(capsys):
    from hdsr.cli.overrides import check_mode_flags

    with pytest.raises(UsageError):
        check_mode_flags(["-m", "seed=1,2", "--cfg", "job"])
    err = capsys.readouterr().err
    assert "-m and --cfg cannot be combined" in err and "hydra." not in err
    check_mode_flags(["seed=1", "--cfg", "job"])  # one job's config: fine


def test_job_directories_name_only_the_swept_keys():
    from hdsr.cli.overrides import is_sweep, job_dir_overrides

    assert is_sweep("1,2") and is_sweep("range(1,3)") and is_sweep("ablation/a,ablation/b")
    assert not is_sweep("[1,2]") and not is_sweep("'a,b'") and not is_sweep("3")
    assert job_dir_overrides(["model=hdsrnet"]) == []  # single run: run_name only
    extra, run_dir = job_dir_overrides(
        ["-m", "model=a,b", "optimizer.lr=1e-4,2e-4", "optimizer=adamw", "data.batch_size=2"]
    )
    assert run_dir == "hydra.run.dir=${hydra.sweep.dir}/${hydra.sweep.subdir}"
    key, value = extra.split("=", 1)
    assert key == "hydra.job.config.override_dirname.exclude_keys"
    excluded = value.strip("[]").split(",")
    assert "data.batch_size" in excluded and "model" in excluded and "optimizer" in excluded
    assert "optimizer.lr" not in excluded  # jobs: hdsrnet_x2_s0,optimizer.lr=0.0001, ...=0.0002


@pytest.mark.parametrize(
    ("typed", "instead"),
    [
        ("optim.lr=2e-4", "optimizer.lr=2e-4"),
        ("optim.eps=1e-6", "optimizer.eps=1e-6"),
        ("optim.lr_step=200000", "scheduler.step_size=200000"),
        ("+optim.lr_gamma=0.1", "scheduler.gamma=0.1"),
    ],
)
def test_old_optim_keys_say_what_replaced_them(typed, instead, capsys):
    from hdsr.cli.overrides import check_renamed_keys

    with pytest.raises(UsageError) as err:
        check_renamed_keys(["-m", "seed=1,2", typed])
    assert err.value.code == 2
    assert f"write {instead} " in capsys.readouterr().err
    check_renamed_keys(["optimizer.lr=2e-4", "scheduler=released", "data.scale=3"])


def test_an_optim_block_in_a_config_file_is_a_config_error():
    with pytest.raises(ConfigError, match=r"'optim\.lr' is no longer a key.*write optimizer\.lr"):
        check_config(compose(["+optim.lr=1e-4"]))
