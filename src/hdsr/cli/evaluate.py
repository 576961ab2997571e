"""``hdsr-eval``: the Hydra task (the work is ``hdsr.evaluation.run``).

Lightning, torchmetrics and W&B load inside the task, so ``--help`` stays quick.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig, OmegaConf

from hdsr.evaluation.names import eval_name
from hdsr.run_dirs import startup_interrupts
from hdsr.training.config import CONFIG_MODULE

if not OmegaConf.has_resolver("hdsr_eval_name"):  # the eval config's run name
    OmegaConf.register_new_resolver("hdsr_eval_name", eval_name)


@hydra.main(version_base="1.3", config_path=f"pkg://{CONFIG_MODULE}", config_name="eval")
def hydra_main(cfg: DictConfig) -> None:
    with startup_interrupts():
        from hdsr.evaluation.run import run_eval  # Lightning: loaded once the job starts

        run_eval(cfg)
