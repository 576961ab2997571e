"""What a run prints: each log line once, and no third-party tips.

Lightning gives its ``lightning`` logger a console handler of its own (``INFO: ...`` on
stderr) when it is imported, while its records also reach the root logger, where Hydra's
job logging prints them (stdout) and writes them to ``<run dir>/<job>.log``: every INFO
line appeared twice. It also logs advertisements for its cloud services with every
Trainer ("💡 Tip: ... install litlogger", "... litmodels").
"""

from __future__ import annotations

import logging
import os
import subprocess
import warnings

#: loggers to which Lightning adds a console handler when it is imported (the last two
#: only when the root logger had no handler yet), and stops propagation
LIGHTNING_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric")
#: the loggers Lightning's rank-zero messages, the tips among them, are logged to
RANK_ZERO_LOGGERS = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
)
#: how Lightning's tips begin
TIP_PREFIXES = ("💡 Tip", "Tip:")
#: Lightning 2.6's SLURMEnvironment.detect() warns this wherever an ``srun`` executable
#: exists and the process was not started by srun: on every login node of a cluster,
#: for every run that has nothing to do with SLURM. Inside a SLURM job the hint is right
#: (a parallel job without srun) and is kept.
SRUN_HINT = r"The `srun` command is available on your system but is not used"
#: Lightning 2.6.6's ``lightning.pytorch.utilities._pytree`` builds torch's ``LeafSpec``,
#: which torch 2.13 deprecates with a FutureWarning at every fit: Lightning's code, not
#: the user's, and nothing the user can act on. Filtered by message and module only.
LEAFSPEC_DEPRECATION = r"`isinstance\(treespec, LeafSpec\)` is deprecated"
LEAFSPEC_MODULE = r"lightning\.pytorch\.utilities\._pytree"


class DropTips(logging.Filter):
    """Leave out the records that are third-party tips (Lightning's ``💡 Tip: ...``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a record that cannot format is not ours to drop
            return True
        return not message.lstrip().startswith(TIP_PREFIXES)


def one_line_each() -> None:
    """Print each of Lightning's log lines once, and none of its tips (nor its ``srun``
    hint outside a SLURM job: see ``SRUN_HINT``, nor its use of a torch API that torch
    deprecates: ``LEAFSPEC_DEPRECATION``).

    Call after Lightning is imported. When the root logger has handlers (Hydra's job
    logging: the console and the job's log file), Lightning's own console handlers are
    removed and its records propagate to them, so they are printed once and the log
    file stays complete. Without root handlers (Lightning used outside a Hydra job)
    Lightning keeps its handlers. Tips are dropped either way. Safe to call again.
    """
    if logging.getLogger().handlers:
        for name in LIGHTNING_LOGGERS:
            logger = logging.getLogger(name)
            for handler in list(logger.handlers):
                if type(handler) is logging.StreamHandler:  # not file or capture handlers
                    logger.removeHandler(handler)
            logger.propagate = True
    for name in RANK_ZERO_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropTips) for f in logger.filters):
            logger.addFilter(DropTips())
    if not os.environ.get("SLURM_JOB_ID"):
        warnings.filterwarnings("ignore", message=SRUN_HINT)
    warnings.filterwarnings(
        "ignore", message=LEAFSPEC_DEPRECATION, category=FutureWarning, module=LEAFSPEC_MODULE
    )


class SacctWarningOnce(logging.Filter):
    """Let the first of submitit's "Bypassing sacct error" warnings through, with what it
    means, and drop the rest.

    submitit polls the jobs it submitted with ``sacct``; on a cluster without accounting
    storage every poll failed with a warning from submitit and a line from sacct itself
    ("Slurm accounting storage is disabled"), every few seconds for the whole sweep.
    When sacct says exactly that, polling it stops (``stop_polling_sacct``): it can never
    answer there, and submitit follows the jobs through the result files they write.
    """

    def __init__(self) -> None:
        super().__init__()
        self.seen = False

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a record that cannot format is not ours to drop
            return True
        if "Bypassing sacct error" not in message:
            return True
        if self.seen:
            return False
        self.seen = True
        stopped = stop_polling_sacct()
        record.msg = f"{message} ({stopped}; this warning is shown once)"
        record.args = ()
        return True


def stop_polling_sacct() -> str:
    """Stop submitit's ``sacct`` polls when this cluster keeps no accounting (sacct says
    "accounting storage is disabled"); say what was done."""
    try:
        probe = subprocess.run(
            ["sacct", "-n", "-j", "1"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"sacct cannot run here: {err}"
    if "accounting storage is disabled" not in probe.stderr.lower():
        return "sacct failed; submitit keeps polling it"
    try:
        from submitit.slurm.slurm import SlurmInfoWatcher
    except ImportError:
        return "this cluster keeps no accounting"
    SlurmInfoWatcher._make_command = lambda self: None  # nothing to ask: no more polls
    return (
        "this cluster keeps no accounting: sacct is not polled again; submitit follows "
        "the jobs through the result files they write"
    )


def sacct_warning_once() -> None:
    """Install ``SacctWarningOnce`` on submitit's logger (safe to call again)."""
    logger = logging.getLogger("submitit")
    if not any(isinstance(f, SacctWarningOnce) for f in logger.filters):
        logger.addFilter(SacctWarningOnce())
