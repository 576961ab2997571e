"""The study in Optuna's journal: the storage, the space file's pruner and sampler, what
the worker records on a trial, whether a RUNNING trial still has a worker, and which
trials count toward the study's target.

Optuna is the ``search`` extra: it is imported inside the functions that use it, so that
``hdsr-search`` without it says which extra to install.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hdsr.search import PROG
from hdsr.search.schema import SpaceError

MISSING_OPTUNA = "hdsr-search needs the search extra: pip install 'hdsr[search]'"
#: the trial a child ``hdsr-train`` reports to (JSON; set by the worker for its child)
TRIAL_ENV = "HDSR_SEARCH_TRIAL"

# trial attributes (user attributes are shown in dashboards; system ones are bookkeeping)
RUN_DIR = "hdsr:run_dir"
COMMAND = "hdsr:command"  # the hdsr-train overrides that reproduce the trial
RETRY_OF = "hdsr:retry_of"  # this trial resumes trial N (its run directory)
PRUNED_AT = "hdsr:pruned_at_step"
SURPLUS = "hdsr:surplus"  # asked for after the study reached its target; not run
ERROR = "hdsr:error"
HOST = "hdsr:host"
WORKER_PID = "hdsr:worker_pid"
TRAINER_PID = "hdsr:trainer_pid"
HEARTBEAT = "hdsr:heartbeat"


def import_optuna() -> Any:
    """The optuna module, quiet but for warnings; SystemExit naming the extra without it."""
    try:
        import optuna  # the search extra
    except ImportError:
        raise SystemExit(f"{PROG}: error: {MISSING_OPTUNA}") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


def journal_storage(path: str | Path) -> Any:
    """Optuna's storage on the journal file ``path``."""
    from optuna.storages import JournalStorage  # the search extra
    from optuna.storages.journal import JournalFileBackend

    return JournalStorage(JournalFileBackend(str(path)))


def build_pruner(spec: Mapping[str, Any]) -> Any:
    """The Optuna pruner of a validated ``pruner`` spec."""
    from optuna import pruners  # the search extra

    args = {k: v for k, v in spec.items() if k != "kind"}
    make = {
        "median": pruners.MedianPruner,
        "percentile": pruners.PercentilePruner,
        "hyperband": pruners.HyperbandPruner,
        "successive_halving": pruners.SuccessiveHalvingPruner,
        "nop": pruners.NopPruner,
    }[spec["kind"]]
    if spec["kind"] == "percentile" and "percentile" not in args:
        raise SpaceError("pruner.percentile is missing (the percentile pruner needs it)")
    return make(**args)


def build_sampler(spec: Mapping[str, Any], seed_offset: int = 0) -> Any:
    """The Optuna sampler of a validated ``sampler`` spec, its seed moved by ``seed_offset``."""
    from optuna import samplers  # the search extra

    args = {k: v for k, v in spec.items() if k != "kind"}
    if seed_offset:
        args["seed"] = (args.get("seed") or 0) + seed_offset
    make = {"tpe": samplers.TPESampler, "random": samplers.RandomSampler}[spec["kind"]]
    return make(**args)


# --------------------------------------------------------------------------------------
# Trial bookkeeping: liveness, requeue, the study's target
# --------------------------------------------------------------------------------------


def host_id() -> str:
    """This machine: host name and boot id (pids mean nothing after a reboot)."""
    boot = ""
    with contextlib.suppress(OSError):
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    return f"{socket.gethostname()}/{boot}" if boot else socket.gethostname()


def pid_running(pid: Any) -> bool:
    """True when process ``pid`` exists here and is not a zombie."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError, IndexError):
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    return True


ALIVE, BUSY, DEAD = "alive", "busy", "dead"


def liveness(trial: Any, now: float, stale_after: float, here: str) -> str:
    """ALIVE: its worker runs it; BUSY: its worker is gone but its trainer still runs here
    (it is stopping); DEAD: nothing runs it any more."""
    attrs = trial.system_attrs
    beat = attrs.get(HEARTBEAT)
    if not isinstance(beat, int | float):
        start = trial.datetime_start
        beat = start.timestamp() if start is not None else 0.0
    fresh = now - beat <= stale_after
    if attrs.get(HOST) != here:
        return ALIVE if fresh else DEAD
    if pid_running(attrs.get(WORKER_PID)) and fresh:
        return ALIVE
    if pid_running(attrs.get(TRAINER_PID)):
        return BUSY
    return DEAD


def budget_trials(trials: Sequence[Any]) -> list[Any]:
    """The trials that count toward ``--trials``: all but requeued and surplus ones."""
    from optuna.trial import TrialState  # the search extra

    retried = {t.user_attrs.get(RETRY_OF) for t in trials}
    return [
        t
        for t in trials
        if not (t.state == TrialState.FAIL and (t.number in retried or t.user_attrs.get(SURPLUS)))
    ]


def best_value(values: Sequence[float], direction: str) -> float | None:
    finite = [v for v in values if isinstance(v, int | float) and math.isfinite(v)]
    if not finite:
        return None
    return max(finite) if direction == "maximize" else min(finite)
