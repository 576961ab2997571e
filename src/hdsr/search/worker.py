"""Bayesian hyperparameter search with pruning over hdsr-train runs, on Optuna's journal
storage: the worker behind ``hdsr-search`` (:mod:`hdsr.cli.search`) and its summary.

How it works
------------
* **Trials are subprocesses.** Each trial is an ordinary ``hdsr-train`` command, run as a
  child process: the fixed overrides, the command-line overrides after ``--``, the
  trial's parameters, and ``paths.root=<root>/search/<study> run_name=trial_<n>`` (its run
  directory ``runs/search/<study>/trial_<n>``) with ``logger.wandb.group=<study>`` (one W&B
  run per trial, grouped by study). A child process rather than a call of
  ``hdsr.training.run.train`` in this process, because it is the more robust of the two: the
  trial gets exactly what ``hdsr-train`` sets up (Hydra's run directory, ``.hydra/``,
  ``train.log``, job logging, signal handling, DDP relaunch of ``sys.argv``), no state leaks
  from one trial into the next (Hydra's and W&B's globals, signal handlers, CUDA memory), a
  crash fails one trial instead of the worker, and a trial's run is resumable by hand with
  the same command, like any run. The cost, a few seconds of imports per trial, is small
  beside a real trial. The trainer's output goes to ``<run dir>/hdsr-train.out``
  (``-v``: to the console).
* **Pruning.** The child gets one more callback, ``+callbacks.search_trial`` =
  :class:`hdsr.search.TrialCallback` (:mod:`hdsr.search.callback`), and the trial's
  identity in the ``HDSR_SEARCH_TRIAL`` environment variable; it reports each validation's
  metric and stops training when the pruner says so, and the worker then tells Optuna the
  trial was pruned. The objective of a finished trial is the best value it reported (by
  default the PSNR on the first validation set, the value ``best.ckpt`` is chosen on).
* **Storage, resume, several workers.** The study lives in Optuna's journal file
  (``JournalStorage(JournalFileBackend(path))``; default
  ``runs/search/<study>/study.journal``) and is loaded if it exists, so rerunning the same
  command continues the study, and several processes or SLURM jobs running the same
  command on one journal work on it together; Optuna hands each ``ask()`` a distinct
  trial. ``--trials N`` is the study's target, not a per-worker count: a worker stops
  when the study holds N trials (finished, running or waiting), so a resumed or added
  worker runs only what is missing.
* **Trials left RUNNING by a dead worker** are resumed, not lost. Each worker records on
  its running trial its host, its pid and the trainer's, and a heartbeat every
  ``min(60, stale_after / 5)`` seconds. Before asking for a new trial, a worker looks at
  the study's RUNNING trials: one whose worker and trainer are both gone (same host: by
  pid; another host: no heartbeat for ``--stale-after`` seconds, 600 by default) is
  marked FAIL and enqueued again with the same parameters and the same run directory
  (``study.enqueue_trial``), so the next ``ask()`` of any worker takes it and the rerun
  ``hdsr-train`` resumes from that run's ``last.ckpt``; its earlier reports are copied
  over. The FAIL write is the claim: the journal accepts it from one worker only, so a
  trial is requeued once. A worker stopped by a signal (SIGTERM, Ctrl-C, SLURM's
  pre-timeout SIGUSR1/SIGUSR2) forwards it to the trainer, which finishes its batch and
  writes ``last.ckpt``; the worker then requeues the trial the same way and exits with
  128 + signal (under SLURM the trainer also requeues the job; the requeued job resumes
  the trial). The trainer asks the kernel to send it SIGTERM when the worker dies
  (Linux), so a killed worker leaves no trainer behind; a worker that finds such a
  trainer still finishing waits for it before resuming its trial.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import secrets
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hdsr.runtime import STOP_SIGNALS
from hdsr.search import PROG
from hdsr.search.overrides import (
    Checked,
    override_keys,
    param_overrides,
    parse_overrides,
    quote_path,
)
from hdsr.search.schema import SpaceError
from hdsr.search.space import Space
from hdsr.search.study import (
    BUSY,
    COMMAND,
    DEAD,
    ERROR,
    HEARTBEAT,
    HOST,
    PRUNED_AT,
    RETRY_OF,
    RUN_DIR,
    SURPLUS,
    TRAINER_PID,
    TRIAL_ENV,
    WORKER_PID,
    StudyError,
    best_value,
    budget_trials,
    build_pruner,
    build_sampler,
    check_journal,
    host_id,
    import_optuna,
    journal_storage,
    liveness,
    pid_running,
)

_log = logging.getLogger(__name__)
#: the trials' callback (``+callbacks.search_trial._target_``): its stable public path,
#: the one journals and trial commands of every version name
CALLBACK_TARGET = "hdsr.search.TrialCallback"
DEFAULT_TRIALS = 20
DEFAULT_STALE_AFTER = 600.0
#: a worker stops after this many failed trials in a row (a broken setup, not bad luck)
MAX_CONSECUTIVE_FAILURES = 3


def _say(message: str) -> None:
    print(f"[search] {message}", flush=True)


def _hdsr_train() -> str:
    found = shutil.which("hdsr-train", path=f"{Path(sys.executable).parent}{os.pathsep}")
    found = found or shutil.which("hdsr-train")
    if not found:
        raise SystemExit(f"{PROG}: error: hdsr-train is not installed beside {sys.executable}")
    return found


def _shown(path: Path) -> str:
    with contextlib.suppress(ValueError):
        return str(path.relative_to(Path.cwd()))
    return str(path)


def _params_text(params: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={_short(v)}" for k, v in params.items())


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _signal_exit(code: int | None) -> int | None:
    """The stop signal a trainer exit status stands for (128 + signal), if any."""
    for sig in STOP_SIGNALS:
        if code in (128 + int(sig), -int(sig)):
            return int(sig)
    return None


#: the study attribute holding :meth:`Worker.settings` (written when the study is created)
SETTINGS = "hdsr:settings"


def settings_changes(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """What differs between two recorded settings, one phrase per difference."""
    changes = []
    before, after = old.get("params") or {}, new.get("params") or {}
    for key in sorted(set(before) | set(after)):
        if key not in after:
            changes.append(f"parameter {key} no longer searched")
        elif key not in before:
            changes.append(f"parameter {key} added")
        elif before[key] != after[key]:
            changes.append(f"parameter {key} has another range or choices")
    for key in ("metric", "pruner"):
        if old.get(key) != new.get(key):
            changes.append(f"{key} {old.get(key)} -> {new.get(key)}")
    was = override_keys(list(old.get("overrides") or []))
    now = override_keys(list(new.get("overrides") or []))
    for key in sorted(set(was) | set(now)):
        if was.get(key) != now.get(key):
            changes.append(f"{was.get(key, '(not set)')} -> {now.get(key, '(not set)')}")
    return changes


class Worker:
    """One ``hdsr-search`` process: asks the study for trials and runs each as
    ``hdsr-train`` until the study holds its target number of trials."""

    def __init__(self, args: argparse.Namespace, space: Space, checked: Checked) -> None:
        self.optuna = import_optuna()
        self.space, self.checked = space, checked
        self.target = args.trials or space.trials or DEFAULT_TRIALS
        self.timeout = args.timeout
        self.stale_after = float(args.stale_after)
        self.verbose = args.verbose
        keys = override_keys(checked.overrides)
        root = "runs"
        if "paths.root" in keys:
            root = str(parse_overrides("overrides", [keys["paths.root"]])[0].value())
        self.study_dir = (Path(root) / "search" / space.study).resolve()
        quote_path(self.study_dir)  # refused now rather than at the first trial
        self.storage_path = Path(args.storage or self.study_dir / "study.journal").resolve()
        self.here = host_id()
        self.distributions = {k: p.distribution() for k, p in space.params.items()}
        # paths.root is the search's own root here (each trial sets paths.root=<study dir>)
        self.train_overrides = [t for k, t in keys.items() if k != "paths.root"]
        self.stop_signal: int | None = None
        self.child: subprocess.Popen | None = None
        self.ran: list[int] = []

    # ---- the study ----

    def open_study(self) -> None:
        repaired = check_journal(self.storage_path)  # before anything is appended
        if repaired:
            _say(repaired)
        storage = journal_storage(self.storage_path)
        pruner = build_pruner(self.space.pruner)
        kwargs = {"study_name": self.space.study, "storage": storage, "pruner": pruner}
        try:  # the worker that creates the study samples with the file's seed
            self.study = self.optuna.create_study(
                direction=self.space.direction,
                sampler=build_sampler(self.space.sampler),
                **kwargs,
            )
            created = True
        except self.optuna.exceptions.DuplicatedStudyError:
            # later workers: another seed, or two workers would propose the same values
            offset = 1 + secrets.randbelow(2**30)
            sampler = build_sampler(self.space.sampler, seed_offset=offset)
            self.study = self.optuna.load_study(sampler=sampler, **kwargs)
            created = False
        directions = [d.name.lower() for d in self.study.directions]
        if directions != [self.space.direction]:
            raise SpaceError(
                f"study {self.space.study} in {self.storage_path} has direction "
                f"{directions}, the space file {self.space.direction}"
            )
        self.storage = self.study._storage
        self.check_settings(created)
        n = len(self.study.get_trials(deepcopy=False))
        _say(
            f"study {self.space.study} in {_shown(self.storage_path)}: "
            + ("created" if created else f"loaded ({n} trials so far)")
            + f"; target {self.target} trials; metric {self.checked.metric}"
        )

    def settings(self) -> dict[str, Any]:
        """What makes the study's trials comparable: the searched parameters and their
        ranges, the metric, the pruner and every trial's fixed hdsr-train overrides."""
        from optuna.distributions import distribution_to_json  # the search extra

        return {
            "params": {k: distribution_to_json(d) for k, d in self.distributions.items()},
            "metric": self.checked.metric,
            "pruner": dict(self.space.pruner),
            "overrides": list(self.checked.overrides),
        }

    def check_settings(self, created: bool) -> None:
        """Record the study's settings when it is new (or was made by a version that did
        not record them); otherwise raise ``StudyError`` saying what differs: trials run
        with other overrides or another space are not comparable, and a resumed study
        would mix them silently."""
        mine, stored = self.settings(), self.study.user_attrs.get(SETTINGS)
        if created or not isinstance(stored, dict):
            self.study.set_user_attr(SETTINGS, mine)
            return
        changes = settings_changes(stored, mine)
        if changes:
            raise StudyError(
                f"study {self.space.study} in {self.storage_path} was run with other settings "
                f"({'; '.join(changes)}): its trials would not be comparable with new ones. "
                "Rerun it as it was, or start another study with --study NAME (or --storage)"
            )

    def trials(self) -> list[Any]:
        return self.study.get_trials(deepcopy=False)

    def requeue(self, frozen: Any, reason: str) -> bool:
        """Mark a RUNNING trial FAIL and enqueue it again (same params and run directory),
        so the next ``ask()`` resumes its run. False if another worker did it first."""
        try:
            self.storage.set_trial_state_values(frozen._trial_id, self.optuna.trial.TrialState.FAIL)
        except RuntimeError:  # UpdateFinishedTrialError (a plain RuntimeError in optuna 4)
            return False
        run_dir = frozen.user_attrs.get(RUN_DIR) or str(self.study_dir / f"trial_{frozen.number}")
        attrs = {RETRY_OF: frozen.number, RUN_DIR: run_dir}
        self.study.enqueue_trial(frozen.params, user_attrs=attrs, skip_if_exists=False)
        shown = _shown(Path(run_dir))
        _say(f"trial {frozen.number} {reason}: requeued; its run resumes from {shown}")
        return True

    def recover_stale(self) -> None:
        """Requeue the RUNNING trials nobody runs any more (waiting for a trainer whose
        worker is gone to finish stopping)."""
        running = (self.optuna.trial.TrialState.RUNNING,)
        for frozen in self.study.get_trials(deepcopy=False, states=running):
            state = liveness(frozen, time.time(), self.stale_after, self.here)
            if state == BUSY:
                pid = frozen.system_attrs.get(TRAINER_PID)
                _say(f"trial {frozen.number}: its worker is gone, its trainer (pid {pid}) stops")
                deadline = time.monotonic() + self.stale_after
                while pid_running(pid) and time.monotonic() < deadline and not self.stop_signal:
                    time.sleep(0.5)
                state = liveness(frozen, time.time(), self.stale_after, self.here)
            if state == DEAD and not self.stop_signal:
                self.requeue(frozen, "was left running by a worker that stopped")

    def is_surplus(self, trial: Any) -> bool:
        """True for a new trial asked for after other workers filled the target."""
        frozen = self.storage.get_trial(trial._trial_id)
        if RETRY_OF in frozen.user_attrs:
            return False
        earlier = [t for t in budget_trials(self.trials()) if t.number < trial.number]
        return len(earlier) >= self.target

    def done(self) -> bool:
        trials = self.trials()
        waiting = any(t.state == self.optuna.trial.TrialState.WAITING for t in trials)
        return len(budget_trials(trials)) >= self.target and not waiting

    # ---- one trial ----

    def trial_command(self, trial: Any, run_dir: Path, fresh: bool) -> tuple[list[str], list[str]]:
        """(the hdsr-train command of the trial, the overrides that reproduce it)."""
        params = param_overrides(self.space, trial.params, self.checked.groups)
        managed = [f"paths.root={quote_path(run_dir.parent)}", f"run_name={run_dir.name}"]
        if "logger.wandb.group" not in override_keys(self.train_overrides):
            managed.append(f"++logger.wandb.group={self.space.study}")
        managed.append(f"+callbacks.search_trial._target_={CALLBACK_TARGET}")
        if fresh:  # never continue another study's checkpoint in a reused folder
            managed.append("resume=false")
        command = [_hdsr_train(), *self.train_overrides, *params, *managed]
        return command, [*self.checked.overrides, *params]

    def _heartbeat(self, trial_id: int, stop: threading.Event) -> None:
        interval = max(1.0, min(60.0, self.stale_after / 5))
        while not stop.wait(interval):
            try:
                self.storage.set_trial_system_attr(trial_id, HEARTBEAT, time.time())
            except (RuntimeError, KeyError):  # finished or taken over: nothing to beat for
                return
            except OSError as err:  # the journal's file system: try again next time
                _log.warning("search: heartbeat of trial id %d not written: %s", trial_id, err)

    def run_trial(self, trial: Any) -> str:
        """Run one trial to its end; its outcome: complete, pruned, failed or interrupted."""
        TrialState = self.optuna.trial.TrialState
        frozen = self.storage.get_trial(trial._trial_id)
        retry_of = frozen.user_attrs.get(RETRY_OF)
        run_dir = Path(frozen.user_attrs.get(RUN_DIR) or self.study_dir / f"trial_{trial.number}")
        for key, value in ((HOST, self.here), (WORKER_PID, os.getpid()), (HEARTBEAT, time.time())):
            self.storage.set_trial_system_attr(trial._trial_id, key, value)
        if retry_of is not None:  # the earlier reports count for pruning and the objective
            earlier = next(t for t in self.trials() if t.number == retry_of)
            for step, value in sorted(earlier.intermediate_values.items()):
                trial.report(value, step=step)
        command, reproduce = self.trial_command(trial, run_dir, fresh=retry_of is None)
        trial.set_user_attr(RUN_DIR, str(run_dir))
        trial.set_user_attr(COMMAND, reproduce)
        what = f"resumes trial {retry_of}" if retry_of is not None else "starts"
        _say(f"trial {trial.number} {what}: {_params_text(trial.params)} -> {_shown(run_dir)}")
        run_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env[TRIAL_ENV] = json.dumps(
            {
                "storage": str(self.storage_path),
                "study": self.space.study,
                "trial_id": trial._trial_id,
                "metric": self.checked.metric,
                "pruner": self.space.pruner,
                "worker_pid": os.getpid(),
            }
        )
        started = time.monotonic()
        stop_beat = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(trial._trial_id, stop_beat))
        beat.daemon = True
        out_path = run_dir / "hdsr-train.out"
        with contextlib.ExitStack() as stack:
            if self.verbose:
                out, err = None, None
            else:
                out, err = stack.enter_context(open(out_path, "a")), subprocess.STDOUT
            self.child = subprocess.Popen(command, env=env, stdout=out, stderr=err)
            if self.stop_signal is not None:  # it came before there was a trainer to stop
                self.child.send_signal(signal.SIGTERM)
            self.storage.set_trial_system_attr(trial._trial_id, TRAINER_PID, self.child.pid)
            beat.start()
            code = self.child.wait()
            self.child = None
        stop_beat.set()
        beat.join()
        took = f"[{time.monotonic() - started:.0f} s]"
        frozen = self.storage.get_trial(trial._trial_id)
        if frozen.state.is_finished():  # another worker took it over (a wrong stale call)
            _say(f"trial {trial.number}: already finished as {frozen.state.name} elsewhere")
            return "failed"
        if self.stop_signal is not None or _signal_exit(code) is not None:
            self.stop_signal = self.stop_signal or _signal_exit(code)
            self.requeue(frozen, f"was interrupted (exit status {code}) {took}")
            return "interrupted"
        metric = self.checked.metric
        value = best_value(list(frozen.intermediate_values.values()), self.space.direction)
        if code != 0 or value is None:
            why = f"hdsr-train exited with status {code}" if code else f"no finite {metric}"
            trial.set_user_attr(ERROR, why)
            self.study.tell(trial, state=TrialState.FAIL)
            tail = "" if self.verbose else f"; see {_shown(out_path)}"
            _say(f"trial {trial.number} failed: {why}{tail} {took}")
            if not self.verbose and out_path.is_file():
                lines = out_path.read_text(errors="replace").splitlines()[-15:]
                print("\n".join(f"    {line}" for line in lines), flush=True)
            return "failed"
        if PRUNED_AT in frozen.user_attrs:
            self.study.tell(trial, state=TrialState.PRUNED)
            step = frozen.user_attrs[PRUNED_AT]
            _say(f"trial {trial.number} pruned at step {step}: best {metric} = {value:.4f} {took}")
            return "pruned"
        self.study.tell(trial, value)
        best = self.study.best_trial
        _say(
            f"trial {trial.number} complete: {metric} = {value:.4f} "
            f"(best so far: trial {best.number}, {best.value:.4f}) {took}"
        )
        return "complete"

    # ---- the loop ----

    def _on_signal(self, signum: int, frame: Any) -> None:
        self.stop_signal = self.stop_signal or signum
        child = self.child
        if child is not None and child.poll() is None:
            # Ctrl-C reached the trainer too (same process group): a second SIGINT from us
            # would interrupt it without a checkpoint, so SIGINT is forwarded as SIGTERM
            forward = signal.SIGTERM if signum == signal.SIGINT else signum
            with contextlib.suppress(ProcessLookupError):
                child.send_signal(forward)
        # no print() here: it may interrupt a print of the main thread
        name = signal.Signals(signum).name
        os.write(2, f"[search] {name}: stopping after the trainer's current batch\n".encode())

    def none_succeeded(self) -> bool:
        """True when the study has trials and every one of them failed (none completed
        or was pruned): a search that found nothing."""
        states = [t.state for t in budget_trials(self.trials())]
        return bool(states) and all(s == self.optuna.trial.TrialState.FAIL for s in states)

    def run(self) -> int:
        previous = {sig: signal.signal(sig, self._on_signal) for sig in STOP_SIGNALS}
        started, failures = time.monotonic(), 0
        try:
            while self.stop_signal is None:
                if self.timeout is not None and time.monotonic() - started > self.timeout:
                    _say(f"--timeout {self.timeout:g} s reached: no new trial")
                    break
                self.recover_stale()
                if self.stop_signal is not None or self.done():
                    break
                trial = self.study.ask(self.distributions)
                if self.is_surplus(trial):  # other workers filled the target meanwhile
                    trial.set_user_attr(SURPLUS, True)
                    self.study.tell(trial, state=self.optuna.trial.TrialState.FAIL)
                    break
                outcome = self.run_trial(trial)
                self.ran.append(trial.number)
                failures = failures + 1 if outcome == "failed" else 0
                if failures >= MAX_CONSECUTIVE_FAILURES:
                    _say(f"{failures} trials in a row failed: this worker stops")
                    return 1
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 128 + self.stop_signal if self.stop_signal is not None else 0


# --------------------------------------------------------------------------------------
# The summary
# --------------------------------------------------------------------------------------


def summary(worker: Worker) -> str:
    """The study's trials, the best one and the hdsr-train command that reproduces it."""
    TrialState = worker.optuna.trial.TrialState
    study, metric = worker.study, worker.checked.metric
    all_trials = worker.trials()
    counted = budget_trials(all_trials)
    count = {s: sum(t.state == s for t in counted) for s in TrialState}
    requeued = (
        len(all_trials) - len(counted) - sum(bool(t.user_attrs.get(SURPLUS)) for t in all_trials)
    )
    lines = [
        f"study {study.study_name}: {len(counted)} of {worker.target} trials: "
        f"{count[TrialState.COMPLETE]} complete, {count[TrialState.PRUNED]} pruned, "
        f"{count[TrialState.FAIL]} failed"
        + (f", {count[TrialState.RUNNING]} running" if count[TrialState.RUNNING] else "")
        + (f", {count[TrialState.WAITING]} waiting" if count[TrialState.WAITING] else "")
        + (f" ({requeued} interrupted and requeued)" if requeued else ""),
        f"this worker ran trial(s) {', '.join(map(str, worker.ran)) or 'none'}",
        f"journal: {_shown(worker.storage_path)}",
    ]
    width = max(len(k) for k in worker.space.params)
    table = [f"  {'trial':>5}  {'state':<8}  {metric:>18}  params"]
    for t in counted:
        value = best_value(list(t.intermediate_values.values()), worker.space.direction)
        shown = "-" if value is None else f"{value:.4f}"
        params = _params_text(t.params)
        if not params and RETRY_OF in t.user_attrs:
            params = f"(resumes trial {t.user_attrs[RETRY_OF]})"
        table.append(f"  {t.number:>5}  {t.state.name:<8}  {shown:>18}  {params}")
    lines += ["", *table]
    complete = [t for t in counted if t.state == TrialState.COMPLETE]
    if not complete:
        lines.append("no complete trial yet")
        return "\n".join(lines)
    best = study.best_trial
    run_dir = Path(best.user_attrs.get(RUN_DIR, ""))
    reproduce = best.user_attrs.get(COMMAND) or []
    lines += ["", f"best trial: {best.number}, {metric} = {best.value:.4f}"]
    lines += [f"  {k:<{width}} = {v!r}" for k, v in best.params.items()]
    lines += [
        f"  run: {_shown(run_dir)} (checkpoints/best.ckpt)",
        "reproduce it with hdsr-train:",
        "  hdsr-train " + shlex.join(reproduce),
    ]
    return "\n".join(lines)
