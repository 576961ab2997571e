"""The study in Optuna's journal: the storage, the space file's pruner and sampler, what
the worker records on a trial, whether a RUNNING trial still has a worker, and which
trials count toward the study's target.

Optuna is the ``search`` extra: it is imported inside the functions that use it, so that
``hdsr-search`` without it says which extra to install.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import socket
import time
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


class StudyError(Exception):
    """A journal or study that hdsr-search cannot use as it is; the message names the file."""


class JournalWriteError(OSError):
    """A write to the study journal failed (a full disk, a file system gone read-only)."""


def journal_storage(path: str | Path) -> Any:
    """Optuna's storage on the journal file ``path``; a failed append raises
    ``JournalWriteError`` naming the file."""
    from optuna.storages import JournalStorage  # the search extra
    from optuna.storages.journal import JournalFileBackend

    class Backend(JournalFileBackend):
        def append_logs(self, logs: list[dict[str, Any]]) -> None:
            try:
                super().append_logs(logs)
            except JournalWriteError:
                raise
            except OSError as err:
                raise JournalWriteError(
                    err.errno, f"writing the study journal {path}: {err.strerror or err}"
                ) from None

    return JournalStorage(Backend(str(path)))


def check_journal(path: Path) -> str | None:
    """Make sure Optuna can read and append to the journal ``path`` before anything is
    appended; return a message when it was repaired.

    Optuna ignores a last record cut short (no newline: a write stopped by a full disk
    or a kill), but its next append would continue that line, and from then on every
    reader fails with a ``JSONDecodeError``: the study would be lost. A torn last record
    is therefore removed (it never took effect: no reader saw it) after a copy of the file
    is kept beside it (``<name>.torn-<time>``). A damaged record before the last, or a
    file that is not a journal (a directory, a checkpoint, a text file), raises
    ``StudyError`` naming the file and the byte offset. Runs under the journal's own lock,
    so no worker appends meanwhile.
    """
    from optuna.storages.journal import JournalFileSymlinkLock  # the search extra

    if path.is_dir():
        raise StudyError(f"--storage {path} is a directory: give the journal file, e.g. "
                         f"{path / 'study.journal'}")  # fmt: skip
    if path.exists() and not path.is_file():
        raise StudyError(f"--storage {path} is not a regular file")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "ab"):  # creates it, as Optuna would; fails where it cannot write
            pass
    except OSError as err:
        raise StudyError(f"cannot write the study journal {path}: {err.strerror or err}") from None
    if path.stat().st_size == 0:
        return None
    lock = JournalFileSymlinkLock(str(path))
    lock.acquire()
    try:
        data = path.read_bytes()
        lines = data.split(b"\n")  # the last item: b"" when the file ends with a newline
        offset = 0
        for number, line in enumerate(lines[:-1], start=1):
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if not isinstance(record, dict) or "op_code" not in record:
                what = "a record that is not valid JSON" if record is None else "not a record"
                if number == 1:
                    what = "not an Optuna journal (its first line is not a journal record)"
                raise StudyError(
                    f"{path}: {what} at byte {offset} (line {number}): Optuna cannot read "
                    "this study; restore a copy of the file, or start another study "
                    "(--study NAME or --storage PATH)"
                )
            offset += len(line) + 1
        if not lines[-1]:
            return None
        if offset == 0 and not lines[-1].lstrip().startswith(b"{"):
            raise StudyError(
                f"{path}: not an Optuna journal (no journal record in it); give another "
                "--storage path"
            )
        copy = path.with_name(f"{path.name}.torn-{time.strftime('%Y%m%dT%H%M%S')}")
        shutil.copy2(path, copy)
        with open(path, "r+b") as f:
            f.truncate(offset)
            f.flush()
            os.fsync(f.fileno())
        return (
            f"{path}: its last record (bytes {offset}-{len(data)}) was cut short, by a full "
            f"disk or a killed write, and never took effect: removed (the file as it was: "
            f"{copy})"
        )
    finally:
        lock.release()


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
    (it is stopping); DEAD: nothing runs it any more.

    A worker records its trial's host, pid and heartbeat one append at a time, so a trial
    of this host whose worker pid is not recorded yet is judged like a remote one, by its
    start or heartbeat: it has just been taken, not left."""
    attrs = trial.system_attrs
    beat = attrs.get(HEARTBEAT)
    if not isinstance(beat, int | float):
        start = trial.datetime_start
        beat = start.timestamp() if start is not None else 0.0
    fresh = now - beat <= stale_after
    worker = attrs.get(WORKER_PID)
    if attrs.get(HOST) != here or not isinstance(worker, int):
        return ALIVE if fresh else DEAD
    if pid_running(worker) and fresh:
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
