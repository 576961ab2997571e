"""The parts of a training run, built from the ``hdsr-train`` config: the LightningModule
(``model``, with its ``optimizer`` and ``scheduler``).
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf


def build_module(cfg: DictConfig, datamodule: Any) -> Any:
    """The LightningModule of ``cfg.model`` (``SRModule``): its network, the optimizer
    and scheduler partials, and the data's set names; the network's config is kept for
    its checkpoints."""
    from hydra.utils import instantiate

    make = instantiate(cfg.model, _partial_=True)
    return make(
        val_set_names=datamodule.val_set_names,
        test_set_names=datamodule.test_set_names,
        net_config=OmegaConf.to_container(cfg.model.net, resolve=True),
    )
