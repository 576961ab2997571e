"""Run folders and failed jobs: a job that fails before it wrote anything leaves no
folder behind, and one that fails on a value the user gave says so in one line.

Hydra makes a job's folder (its ``.hydra/`` configs and the job log) before the task runs,
so a command rejected for a bad value would leave an empty run folder beside the real
ones, and ``hdsr-report`` or a later ``ls runs/`` would meet it. :class:`DiscardEmptyRunDir`
(a Hydra callback, ``hydra.callbacks`` in ``train.yaml`` and ``eval.yaml``) removes the
folder of a failed job when it holds nothing but what Hydra itself put there;
:class:`ExitOnConfigError`, after it, turns a bad or missing value into one line on stderr
and exit status 2, as a bad command-line argument is (Hydra would print a traceback).
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from hdsr.errors import (
    ConfigError,
    NonFiniteOutput,
    NonFiniteWeights,
    OutputWriteError,
    StartupInterrupted,
    UnreadableCheckpoint,
    UntrustedConfigError,
    UsageError,
    command_name,
)

#: what to type for a mandatory value a config leaves open (``???``)
EXAMPLES = {
    "data.root": "data.root=/data/DIV2K (DIV2K_train_HR/ and the rest inside)",
    "data.benchmark_root": "data.benchmark_root=/data/benchmark (Set5/, Set14/, B100/, "
    "Urban100/ inside)",
}


def holds_only_hydra_files(run_dir: Path, subdir: str) -> bool:
    """True when ``run_dir`` holds ``subdir`` (Hydra's ``.hydra``) and at most log files."""
    if not (run_dir / subdir).is_dir():
        return False
    for entry in run_dir.iterdir():
        if entry.name == subdir:
            continue
        if not (entry.is_file() and entry.suffix == ".log"):
            return False
    return True


def discard_if_empty(run_dir: Path, subdir: str) -> bool:
    """Remove ``run_dir`` (and ``runs/`` above it, if now empty) when it holds only Hydra's
    files; True when it was removed. The working directory itself is never removed."""
    if run_dir.resolve() == Path.cwd().resolve() or not holds_only_hydra_files(run_dir, subdir):
        return False
    shutil.rmtree(run_dir, ignore_errors=True)
    cwd = Path.cwd().resolve()
    for parent in run_dir.resolve().parents:  # runs/ (or runs/eval/) if now empty
        if parent == cwd or cwd not in parent.parents:
            break
        try:
            parent.rmdir()
        except OSError:
            break
    return True


class DiscardEmptyRunDir(Callback):
    """After a failed job, remove its run folder if only Hydra's files are in it."""

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if job_return.status != JobStatus.FAILED or job_return.hydra_cfg is None:
            return
        hydra = job_return.hydra_cfg.hydra
        subdir = OmegaConf.select(hydra, "output_subdir")
        out = OmegaConf.select(hydra, "runtime.output_dir")
        if not subdir or not out:
            return
        run_dir = Path(str(out))
        if discard_if_empty(run_dir, str(subdir)):
            print(
                f"removed the run folder {run_dir}: the job failed before writing anything",
                file=sys.stderr,
            )


#: errors that say what is wrong with a value or a file the user gave, in their first line
ONE_LINE_ERRORS = (
    ConfigError,
    UntrustedConfigError,
    UnreadableCheckpoint,
    NonFiniteWeights,
    NonFiniteOutput,
)


def config_error_line(err: BaseException) -> str | None:
    """The one line a bad or missing config value, or an unusable file or output,
    deserves; None for other errors."""
    if isinstance(err, MissingMandatoryValue):
        key = str(err.full_key or "").strip() or "a mandatory value"
        example = EXAMPLES.get(key, f"{key}=<value>")
        return f"{key} is not set: add {example} to the command"
    if isinstance(
        err,
        ConfigError
        | UntrustedConfigError
        | UnreadableCheckpoint
        | NonFiniteWeights
        | NonFiniteOutput,
    ):
        return (str(err).strip().splitlines() or [type(err).__name__])[0]
    return None


class ExitOnConfigError(Callback):
    """After a job failed on a bad or missing value (``ConfigError``, a mandatory ``???``
    left open): ``<command>: error: <what, naming the key>`` on stderr and exit status 2,
    instead of Hydra's traceback and status 1; after a file of the run could not be
    written (``OutputWriteError``: a full disk), that one line and status 1. Other
    failures are Hydra's to report."""

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if job_return.status != JobStatus.FAILED:
            return
        err = job_return._return_value
        if isinstance(err, StartupInterrupted):
            exit_interrupted()
        if isinstance(err, OutputWriteError):  # not a usage error: exit status 1
            print(f"{command_name()}: error: {err}", file=sys.stderr)
            raise SystemExit(1)
        line = config_error_line(err)
        if line is not None:
            raise UsageError(line)


def exit_interrupted() -> None:
    """End the command after a Ctrl-C as a shell reports one: one line, status 130."""
    print(f"{command_name()}: interrupted (Ctrl-C)", file=sys.stderr)
    raise SystemExit(128 + int(signal.SIGINT))


#: a Ctrl-C that arrived while Hydra worked outside the task (see :func:`_defer_interrupt`)
_interrupted = {"pending": False}


def _defer_interrupt(signum: int, frame: Any) -> None:
    """SIGINT handler while Hydra itself works (composing the config, making the run folder,
    writing ``.hydra/``): remember the Ctrl-C, so that it lands where hdsr handles it (the
    task's start, or the end of the command), not half-way through a file Hydra writes.
    A second Ctrl-C interrupts at once."""
    if _interrupted["pending"]:
        raise KeyboardInterrupt
    _interrupted["pending"] = True


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def interrupts_outside_the_task() -> Iterator[None]:
    """Around a Hydra app (``hdsr-train``, ``hdsr-prepare``, ``hdsr-eval``): a Ctrl-C while
    Hydra itself works is held back until the task starts (:func:`startup_interrupts`
    turns it into ``StartupInterrupted``: the run folder removed, one line, status 130);
    one that never reached a task (or a second Ctrl-C) ends the command with that one line
    and status 130 here, never a traceback."""
    main = _in_main_thread()
    previous = signal.getsignal(signal.SIGINT) if main else None
    if main:
        signal.signal(signal.SIGINT, _defer_interrupt)
    interrupted = False
    try:
        yield
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if main:
            signal.signal(signal.SIGINT, previous)
        interrupted = interrupted or _interrupted["pending"]
        _interrupted["pending"] = False
    if interrupted:
        exit_interrupted()


@contextlib.contextmanager
def startup_interrupts() -> Iterator[None]:
    """Around a Hydra task: a Ctrl-C that reaches it as ``KeyboardInterrupt`` (before the
    run's own handler takes over: imports, config, data), or one held back while Hydra
    wrote the run folder (:func:`interrupts_outside_the_task`), becomes
    ``StartupInterrupted``, so the run folder Hydra made is removed if nothing else is in
    it, and the command ends with one line and status 130 (:class:`ExitOnConfigError`)."""
    deferring = _in_main_thread() and signal.getsignal(signal.SIGINT) is _defer_interrupt
    if deferring:  # inside the task, Ctrl-C interrupts (the run installs its own handler)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        if _interrupted["pending"]:
            _interrupted["pending"] = False
            raise KeyboardInterrupt
        yield
    except KeyboardInterrupt:
        raise StartupInterrupted("interrupted (Ctrl-C)") from None
    finally:
        if deferring:  # back to holding Ctrl-C while Hydra works (the next job of a sweep)
            signal.signal(signal.SIGINT, _defer_interrupt)
