"""``hdsr-train`` and ``hdsr-prepare``: the Hydra tasks (the run is ``hdsr.training.run``).

The heavy imports (Lightning, W&B) happen inside the tasks, so ``--help`` stays quick.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from hdsr.run_dirs import startup_interrupts

# registers the resolvers the config tree uses (hdsr_job_dir, hdsr_first_set)
from hdsr.training.config import CONFIG_MODULE


@hydra.main(version_base="1.3", config_path=f"pkg://{CONFIG_MODULE}", config_name="train")
def hydra_main(cfg: DictConfig) -> float | None:
    with startup_interrupts():
        from hdsr.training.run import train  # Lightning: loaded once the job starts

        result = train(cfg)
    metrics = result["metrics"]
    key = next((k for k in metrics if k.startswith("val/psnr_y/")), None)
    return metrics[key] if key else None


@hydra.main(version_base="1.3", config_path=f"pkg://{CONFIG_MODULE}", config_name="train")
def prepare_hydra_main(cfg: DictConfig) -> None:
    with startup_interrupts():
        from hdsr.training.run import prepare  # Lightning: loaded once the job starts

        prepare(cfg)
