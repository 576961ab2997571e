"""``hdsr-report`` on damaged run folders: a garbled ``metrics.csv`` or a config that is
not plain YAML data is one line naming the file, never a traceback; the run is skipped
with a warning when other runs can be read (exit 0), an error when none can (exit 2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hdsr.cli.report import main

CONFIG = """\
data:
  scale: 2
model:
  name: {name}
  net:
    _target_: hdsr.models.HDSRNet
    scale: ${{data.scale}}
    n_feats: 8
    n_blocks: 1
    lower_layers: 2
"""
METRICS = """\
epoch,step,train/loss,val/psnr_y/demo,val/ssim_y/demo
0,4,1.5,,
0,4,,20.5,0.6
"""


def _job(sweep: Path, name: str, config: str | None = None, metrics: bytes | None = None):
    """A run folder as ``hdsr-train -m`` writes it; returns (config file, metrics file)."""
    cfg = sweep / name / ".hydra" / "config.yaml"
    cfg.parent.mkdir(parents=True)
    cfg.write_text(CONFIG.format(name=name) if config is None else config)
    csv = sweep / name / "csv" / "version_0" / "metrics.csv"
    csv.parent.mkdir(parents=True)
    csv.write_bytes(METRICS.encode() if metrics is None else metrics)
    return cfg, csv


def _lines(err: str) -> list[str]:
    assert "Traceback" not in err, err
    return err.strip().splitlines()


GARBLED = [
    (METRICS.encode() + b"0,8,,2x.5,0.7\n", "line 4: val/psnr_y/demo='2x.5' is not a number"),
    (METRICS.encode() + b"0,8,,21,0.7,9,9\n", "line 4: 7 fields, the header has 5"),
    (METRICS.encode() + b"0,8,\x00,21,0.7\n", "line 4: train/loss='\\x00' is not a number"),
    (METRICS.encode() + b"0,8,," + b"1" * 200_000 + b",0.7\n", "line 4: field larger than"),
    (METRICS.encode() + b"0,8,,\xff\xfe,0.7\n", "not UTF-8 text"),
]


@pytest.mark.parametrize(("metrics", "says"), GARBLED)
def test_garbled_metrics_skip_that_run_with_a_warning(tmp_path, capsys, metrics, says):
    sweep = tmp_path / "sweep"
    _job(sweep, "a_good")
    _, bad = _job(sweep, "b_garbled", metrics=metrics)
    assert main([str(sweep), "--macs-input", "8x8"]) == 0
    captured = capsys.readouterr()
    (line,) = _lines(captured.err)
    assert line.startswith(f"hdsr-report: warning: run skipped: {bad}: {says}"), line
    md = (sweep / "ablation.md").read_text()
    assert "| a_good | x2 | 20.50/0.6000 |" in md and "| b_garbled |" not in md
    assert f"Skipped, unreadable: {bad}: {says}" in md
    assert (sweep / "val_psnr.png").is_file()


@pytest.mark.parametrize(("metrics", "says"), GARBLED[:1])
def test_the_only_run_garbled_is_one_error_line(tmp_path, capsys, metrics, says):
    sweep = tmp_path / "sweep"
    _, bad = _job(sweep, "garbled", metrics=metrics)
    assert main([str(sweep), "-o", str(tmp_path / "out")]) == 2
    assert _lines(capsys.readouterr().err) == [f"hdsr-report: error: {bad}: {says}"]
    assert not (tmp_path / "out" / "ablation.md").exists()


def test_a_python_yaml_tag_is_refused_never_constructed(tmp_path, capsys):
    """``!!python/...`` in a run's config: refused by name before anything is built, even
    the ``pathlib.Path`` tags OmegaConf's own YAML loader would construct."""
    sweep = tmp_path / "sweep"
    marker = tmp_path / "pwned"
    _job(sweep, "a_good")
    evil, _ = _job(
        sweep,
        "b_evil",
        config=CONFIG.format(name="b_evil")
        + f"extra: !!python/object/apply:os.system ['touch {marker}']\n",
    )
    path, _ = _job(
        sweep,
        "c_path",
        config=CONFIG.format(name="c_path") + "out: !!python/object/apply:pathlib.Path ['x']\n",
    )
    assert main([str(sweep), "--macs-input", "8x8"]) == 0
    assert _lines(capsys.readouterr().err) == [
        f"hdsr-report: warning: run skipped: {evil}: line 11: the YAML tag "
        "!!python/object/apply:os.system is refused (a run's config is plain data; "
        "nothing in it is constructed)",
        f"hdsr-report: warning: run skipped: {path}: line 11: the YAML tag "
        "!!python/object/apply:pathlib.Path is refused (a run's config is plain data; "
        "nothing in it is constructed)",
    ]
    assert not marker.exists()
    assert "| a_good |" in (sweep / "ablation.md").read_text()

    # the only run: an error, exit 2
    alone = tmp_path / "alone"
    cfg, _ = _job(alone, "evil", config="model: !!python/object:builtins.dict {}\n")
    assert main([str(alone)]) == 2
    (line,) = _lines(capsys.readouterr().err)
    assert line.startswith(f"hdsr-report: error: {cfg}: line 1: the YAML tag !!python/object:")


@pytest.mark.parametrize(
    ("config", "says"),
    [
        ("model: [1, 2\n", "line 2: not valid YAML (expected ',' or ']', but got '<stream end>')"),
        ("model: !local x\n", "line 1: the YAML tag !local is refused"),
        ("- 1\n- 2\n", "not a mapping of config keys"),
        (CONFIG.format(name="x").replace("  name: x\n", ""), "no model.name"),
        (CONFIG.format(name="x").replace("scale: 2", "scale: two"), "data.scale='two' is not"),
        (
            CONFIG.format(name="x").replace("${data.scale}", "${nowhere}"),
            "model.net: Interpolation key 'nowhere' not found",
        ),
        (
            CONFIG.format(name="x").replace("hdsr.models.HDSRNet", "os.system"),
            "model.net._target_",
        ),
    ],
)
def test_a_damaged_config_is_one_line_naming_it(tmp_path, capsys, config, says):
    sweep = tmp_path / "sweep"
    _job(sweep, "a_good")
    cfg, _ = _job(sweep, "b_bad", config=config)
    assert main([str(sweep), "--macs-input", "8x8"]) == 0
    (line,) = _lines(capsys.readouterr().err)
    assert line.startswith(f"hdsr-report: warning: run skipped: {cfg}: ") and says in line, line
