"""Console entry points: ``hdsr-train``, ``hdsr-prepare``, ``hdsr-eval`` (Hydra apps), and
the modules of the other commands (``upscale``, ``profiling``, ``report``, ``export``,
``search``).

Each command module holds its arguments and ``main()`` only; the work is done by the
library below (``hdsr.training``, ``hdsr.evaluation``, ``hdsr.inference``, ...), which
never imports this package."""

from __future__ import annotations

import sys

from hdsr.cli.evaluate import hydra_main as eval_hydra_main
from hdsr.cli.overrides import (
    UsageError,
    check_mode_flags,
    check_renamed_keys,
    expand_group_patterns,
    job_dir_overrides,
    with_overrides,
)
from hdsr.cli.train import hydra_main as train_hydra_main
from hdsr.cli.train import prepare_hydra_main
from hdsr.console import sacct_warning_once
from hdsr.run_dirs import interrupts_outside_the_task
from hdsr.training.config import CONFIG_MODULE


def train_main() -> None:
    """Entry point of ``hdsr-train``."""
    argv = expand_group_patterns(sys.argv[1:], CONFIG_MODULE)
    check_mode_flags(argv)
    check_renamed_keys(argv)
    sys.argv[1:] = with_overrides(argv, job_dir_overrides(argv))
    sacct_warning_once()  # launcher=slurm on a cluster without accounting
    with interrupts_outside_the_task():
        train_hydra_main()


def prepare_main() -> None:
    """Entry point of ``hdsr-prepare``: build the data caches for a config, train nothing."""
    argv = expand_group_patterns(sys.argv[1:], CONFIG_MODULE)
    if any(a in ("-m", "--multirun") for a in argv):
        raise UsageError("hdsr-prepare does not sweep; run it once per data.scale")
    check_renamed_keys(argv)
    # no run directory and no .hydra/ for a preparation step
    sys.argv[1:] = with_overrides(
        argv, ["hydra.output_subdir=null", "hydra.run.dir=.", "hydra/job_logging=stdout"]
    )
    with interrupts_outside_the_task():
        prepare_hydra_main()


def eval_main() -> None:
    """Entry point of ``hdsr-eval``: paper-protocol tables from checkpoints."""
    argv = expand_group_patterns(sys.argv[1:], CONFIG_MODULE)
    check_mode_flags(argv)
    sys.argv[1:] = argv
    with interrupts_outside_the_task():
        eval_hydra_main()
