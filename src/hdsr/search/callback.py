"""The callback each trial's ``hdsr-train`` runs: report, prune.

The worker gives its child one more callback, ``+callbacks.search_trial._target_=``
``hdsr.search.TrialCallback`` (the stable path: journals and trial commands name it), and
the trial's identity in the ``HDSR_SEARCH_TRIAL`` environment variable. After every
validation the callback reports the metric to the Optuna trial, straight into the
journal, and asks the space file's pruner whether to stop; when told to, it sets
``trainer.should_stop`` (training ends cleanly, checkpoints written) and marks the trial.
Without the variable (the command rerun by hand) it does nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import signal
import sys
from typing import Any

from lightning.pytorch.callbacks import Callback

from hdsr.search.study import PRUNED_AT, TRIAL_ENV, build_pruner, import_optuna, journal_storage

_log = logging.getLogger(__name__)


class TrialReporter:
    """What :class:`TrialCallback` does, Lightning's hooks aside.

    ``trial``: an Optuna trial to report to; None: the one in ``HDSR_SEARCH_TRIAL``, when
    this process is the worker's own child (a DDP rank > 0 or a run started by hand
    reports nothing).
    """

    def __init__(self, trial: Any = None, metric: str | None = None) -> None:
        super().__init__()
        self._trial = trial
        self.metric = metric or ""
        self.spec: dict[str, Any] = {}
        self.worker_pid: int | None = None
        self.active = trial is not None
        self._reported: set[int] | None = None
        self._orphaned = False
        if trial is None:
            self._from_environment()

    def _from_environment(self) -> None:
        raw = os.environ.get(TRIAL_ENV)
        if not raw:
            _log.info("search: not started by hdsr-search, nothing to report")
            return
        self.spec = json.loads(raw)
        self.metric = self.metric or self.spec["metric"]
        self.worker_pid = int(self.spec["worker_pid"])
        if os.getppid() == self.worker_pid:
            self.active = True
            _die_with_parent()
            if os.getppid() != self.worker_pid:  # it died before the kernel was told
                os.kill(os.getpid(), signal.SIGTERM)
        elif os.environ.get("LOCAL_RANK", "0") in ("", "0"):  # the worker died already
            _log.error("search: the hdsr-search worker is gone; stopping")
            os.kill(os.getpid(), signal.SIGTERM)

    @property
    def trial(self) -> Any:
        if self._trial is None:
            optuna = import_optuna()
            study = optuna.load_study(
                study_name=self.spec["study"],
                storage=journal_storage(self.spec["storage"]),
                sampler=optuna.samplers.RandomSampler(),
                pruner=build_pruner(self.spec["pruner"]),
            )
            self._trial = optuna.trial.Trial(study, int(self.spec["trial_id"]))
        return self._trial

    def _report(self, trainer: Any) -> bool:
        """Report the metric of this validation; True when the trial is to stop."""
        value = trainer.callback_metrics.get(self.metric)
        if value is None:
            _log.warning("search: %s was not logged; nothing reported", self.metric)
            return False
        value, step = float(value), int(trainer.global_step)
        trial = self.trial
        if self._reported is None:
            frozen = trial.study._storage.get_trial(trial._trial_id)
            self._reported = set(frozen.intermediate_values)
        if step not in self._reported:  # a resumed run may validate a step again
            trial.report(value, step=step)
            self._reported.add(step)
        fitting = trainer.state.fn == "fit"
        finished = trainer.max_steps is not None and 0 < trainer.max_steps <= step
        if not fitting or finished or not trial.should_prune():
            return False
        trial.set_user_attr(PRUNED_AT, step)
        message = f"trial {trial.number} pruned at step {step} ({self.metric} = {value:.4f})"
        _log.warning("search: %s: stopping", message)
        return True

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.sanity_checking:
            return
        stop = False
        if self.active:
            try:
                stop = self._report(trainer)
            except Exception as err:  # noqa: BLE001 - e.g. another worker took the trial over
                _log.error("search: cannot report to the study (%s); stopping", err)
                self.active, stop = False, True
        if trainer.world_size > 1:
            stop = bool(trainer.strategy.broadcast(stop, src=0))
        if stop:
            trainer.should_stop = True

    def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
        # where the kernel cannot stop us with the worker (not Linux): stop as on SIGTERM
        if self.active and not self._orphaned and os.getppid() != self.worker_pid:
            if self.worker_pid is not None:
                self._orphaned = True
                _log.error("search: the hdsr-search worker is gone; stopping")
                os.kill(os.getpid(), signal.SIGTERM)


class TrialCallback(TrialReporter, Callback):
    """Report each validation's metric to the search's Optuna trial and stop training
    (``trainer.should_stop``) when the pruner says so."""


def _die_with_parent() -> None:
    """Linux: get SIGTERM when the worker dies (the trainer then stops with last.ckpt)."""
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
