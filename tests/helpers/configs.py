"""Hydra composition of the package's own configs."""

from __future__ import annotations

from pathlib import Path

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
ABLATIONS = sorted(p.stem for p in (CONF_DIR / "model" / "ablation").glob("*.yaml"))
MODEL_OPTIONS = ["hdsrnet"] + [f"ablation/{a}" for a in ABLATIONS]  # the trainable ones


def compose(overrides: list[str]):
    """Compose the ``train`` config from the installed ``hdsr.conf`` package."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module

    with initialize_config_module(config_module="hdsr.conf", version_base="1.3"):
        return hydra_compose(config_name="train", overrides=overrides)
