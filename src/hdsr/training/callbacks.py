"""Callbacks: stop on a signal with a checkpoint, log validation image crops to W&B."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelSummary as LightningModelSummary
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.utilities.model_summary import get_human_readable_count

from hdsr.runtime import STOP_SIGNALS

log = logging.getLogger(__name__)

#: SLURM's pre-timeout signals among the stop signals (``hdsr.runtime.STOP_SIGNALS``)
REQUEUE_SIGNALS = (signal.SIGUSR1, signal.SIGUSR2)


def under_submitit() -> bool:
    """True in a job that submitit started (hydra-submitit-launcher: ``launcher=slurm``)."""
    return os.environ.get("SUBMITIT_EXECUTOR") == "slurm"


def slurm_restarts() -> int:
    """How many times SLURM has requeued and restarted this job (0 for its first start)."""
    try:
        return int(os.environ.get("SLURM_RESTART_COUNT", "0"))
    except ValueError:
        return 0


def slurm_requeueing() -> bool:
    """True while SLURM is requeueing this job (``scontrol requeue``, preemption with
    requeue): its ``Restarts`` count has already grown past this start's
    SLURM_RESTART_COUNT, and the job will run again. False otherwise (``scancel``, a
    time limit, a signal sent with ``scancel --signal``), or outside SLURM."""
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return False
    _, shown, _ = scontrol("show", "job", job, timeout=30)
    found = re.search(r"\bRestarts=(\d+)", shown)
    return bool(found) and int(found[1]) > slurm_restarts()


def scontrol(*args: str, timeout: float = 60) -> tuple[int, str, str]:
    """``scontrol ARGS`` run from inside a job, with SIGTERM ignored (``sigterm_ignored``):
    (exit status, output, error text); one that cannot start or does not answer within
    ``timeout`` seconds is (-1, "", why)."""
    try:
        with sigterm_ignored():
            done = subprocess.run(
                ["scontrol", *args], capture_output=True, text=True, timeout=timeout
            )
    except (OSError, subprocess.TimeoutExpired) as err:
        return -1, "", str(err)
    return done.returncode, done.stdout, done.stderr.strip()


@contextlib.contextmanager
def sigterm_ignored() -> Iterator[None]:
    """SIGTERM ignored in this process and in the commands it starts meanwhile.

    An scontrol run from inside a job is one of that job's processes, and SLURM sends
    SIGTERM to all of them as it requeues (or preempts) the job: when that signal came
    before ``scontrol requeue`` had exited (a loaded controller or node), scontrol died of
    it although the requeue was done, and submitit's handler raised ``CalledProcessError``
    as the job's result, so the sweep failed. An ignored signal stays ignored across
    exec (scontrol installs no SIGTERM handler), so scontrol finishes with its own exit
    status. Only the main thread can change a handler; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def slurm_job_id() -> str | None:
    """The id ``scontrol requeue`` needs (array jobs: <array job>_<task>), or None."""
    array_job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array_job and task:
        return f"{array_job}_{task}"
    return os.environ.get("SLURM_JOB_ID")


class GracefulStop(L.Callback):
    """On SIGTERM, SIGINT, SIGUSR1 or SIGUSR2: finish the batch, save ``ckpt_path``, stop.

    The checkpoint is written at a batch boundary, so a resumed run continues exactly
    where this one stopped. Every rank stops together (any rank's signal counts); with
    several ranks they agree every ``check_every_n_steps`` batches (one all-reduce), so a
    signal stops the run within that many batches plus one. After
    ``fit`` returns, ``exit_code`` (128 + signal) tells the caller to exit non-zero. A
    second Ctrl-C interrupts at once: Lightning turns the KeyboardInterrupt into
    ``sys.exit(1)``; ``interrupted`` tells the caller to exit 130.

    Requeueing, after a pre-timeout signal (USR1/USR2) with ``requeue`` on: exactly one
    mechanism requeues a job, so a job never comes back twice for one signal.

    * In a job submitit started (``launcher=slurm``, ``launcher=slurm_node``), submitit
      does: once ``last.ckpt`` is written, the signal is handed to submitit's own handler,
      which requeues the job while ``hydra.launcher.max_num_timeout`` allows and ends it
      otherwise. hdsr never calls ``scontrol`` there.
    * In a plain ``sbatch`` script (``--signal=USR1@120``), rank 0 runs ``scontrol
      requeue`` itself, at most ``max_requeues`` times (SLURM_RESTART_COUNT).

    The requeued job resumes from ``ckpt_path``. SIGTERM (``scancel``, or the end of a
    time limit without a pre-timeout signal) never requeues: the run stops with
    ``ckpt_path`` written and the next run started by hand resumes it.
    """

    def __init__(
        self,
        ckpt_path: str | Path,
        requeue: bool = True,
        check_every_n_steps: int = 10,
        max_requeues: int = 50,
    ) -> None:
        if int(check_every_n_steps) < 1:
            raise ValueError(f"check_every_n_steps must be >= 1, got {check_every_n_steps}")
        if int(max_requeues) < 0:
            raise ValueError(f"max_requeues must be >= 0, got {max_requeues}")
        self.ckpt_path = str(ckpt_path)
        self.requeue = requeue
        self.max_requeues = int(max_requeues)
        self.check_every_n_steps = int(check_every_n_steps)
        self._batches = 0
        self.received: int | None = None
        self.saved = False
        self.interrupted = False
        self._previous: dict[int, Any] = {}

    # handlers are installed when training starts, after Lightning registered its own
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        import threading

        if threading.current_thread() is not threading.main_thread():
            return
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handle)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.restore_handlers()

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if isinstance(exception, KeyboardInterrupt):
            self.interrupted = True

    def restore_handlers(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signum
        log.warning(
            "received %s: stopping after this batch and saving %s",
            signal.Signals(signum).name,
            self.ckpt_path,
        )

    def _maybe_stop(self, trainer: L.Trainer) -> None:
        if self.saved:
            return
        stop = trainer.strategy.reduce_boolean_decision(self.received is not None, all=False)
        if not stop:
            return
        # the whole training state (weights_only=False names what is written; left unset,
        # Lightning logs a "defaulting to False" line that reads like an unsafe load)
        trainer.save_checkpoint(self.ckpt_path, weights_only=False)
        self.saved = True
        trainer.should_stop = True
        if self.received is None:  # another rank got the signal
            self.received = int(signal.SIGTERM)

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        # One process decides alone, for free. Several ranks must agree, which is a
        # collective (and a host-device sync): only every check_every_n_steps batches, at
        # the same batches on every rank (they all count the same batches).
        self._batches += 1
        if trainer.world_size > 1 and self._batches % self.check_every_n_steps:
            return
        self._maybe_stop(trainer)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking and trainer.state.fn == "fit":
            self._maybe_stop(trainer)

    @property
    def exit_code(self) -> int | None:
        return None if self.received is None else 128 + int(self.received)

    @property
    def asks_requeue(self) -> bool:
        """A pre-timeout signal stopped the run and ``requeue`` is on."""
        return bool(self.requeue) and self.received in REQUEUE_SIGNALS

    def requeue_if_slurm(self, is_global_zero: bool) -> bool:
        """After a pre-timeout signal, have the job requeued (see the class docstring):
        under submitit, hand the signal to submitit's handler (which requeues and exits,
        or ends the job when its timeouts are used up); in a plain SLURM job, rank 0 runs
        ``scontrol requeue``. Call after ``restore_handlers``. True if hdsr requeued."""
        job = slurm_job_id()
        if not (self.asks_requeue and job and self.saved):
            return False
        if under_submitit():
            handler = signal.getsignal(self.received)
            if callable(handler) and handler is not signal.default_int_handler:
                log.warning(
                    "%s written; submitit requeues job %s (hydra.launcher.max_num_timeout)",
                    self.ckpt_path,
                    job,
                )
                with sigterm_ignored():  # submitit's: requeues and exits on rank 0
                    handler(self.received, None)
            return False
        if not is_global_zero:
            return False
        restarts = slurm_restarts()
        if restarts >= self.max_requeues:
            log.error(
                "SLURM job %s not requeued: it has restarted %d times (slurm.max_requeues=%d);"
                " rerun the same command to resume from %s",
                job,
                restarts,
                self.max_requeues,
                self.ckpt_path,
            )
            return False
        code, _, why = scontrol("requeue", job)
        if code != 0:
            log.error("scontrol requeue %s failed: %s", job, why)
            return False
        log.warning("requeued SLURM job %s; it will resume from %s", job, self.ckpt_path)
        return True


class ModelSummary(LightningModelSummary):
    """The model summary in one log line, without FLOPs.

    Lightning's summary counts FLOPs only on a forward of the module's
    ``example_input_array``, which a super-resolution network (any image size) does not
    have, so it showed a FLOPs column of zeros and "Total FLOPs: 0" (Lightning 2.6). MACs at
    a given size are ``hdsr-profile``'s. One line, so the console and ``train.log`` keep
    the same lines.
    """

    @staticmethod
    def summarize(
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        total_flops: int,
        **summarize_kwargs: Any,
    ) -> None:
        columns = dict(summary_data)
        layers = ", ".join(
            f"{name} ({kind}) {params}"
            for name, kind, params in zip(
                columns["Name"], columns["Type"], columns["Params"], strict=True
            )
        )
        frozen = total_parameters - trainable_parameters
        log.info(
            "model: %s; %s parameters (%s), %.3f MB; %d modules in train mode, %d in eval mode",
            layers,
            f"{total_parameters:,}",
            f"{get_human_readable_count(frozen)} frozen" if frozen else "all trainable",
            model_size,
            total_training_modes["train"],
            total_training_modes["eval"],
        )


class StepProgressBar(RichProgressBar):
    """Rich progress bar of the run's optimizer steps and of each validation set's images.

    * Training: one bar for the whole run, ``step`` and ``<global step>/<max_steps>``
      (e.g. ``step 120/300000``), continuing across epochs and from a resumed step. With
      no step budget (``trainer.max_steps=-1``) it counts each epoch's batches, as
      Lightning's bar does.
    * Validation and test: a bar per set, ``val <set>`` / ``test <set>``, counting its
      images (one per batch; under DDP, this rank's share).
    * The logged values (the loss) are read only on logging steps: Lightning's bar turns
      every progress-bar metric into a Python number after every batch (``.item()``),
      which makes the host wait for the device once per step. This one reads them every
      ``log_every_n_steps`` optimizer steps (the steps the loggers read them anyway) and
      at the end of an epoch. The logger's version (``v_num``) is not shown.
    """

    def _max_steps(self) -> int | None:
        steps = self.trainer.max_steps
        return int(steps) if steps is not None and steps > 0 else None

    def _get_train_description(self, current_epoch: int) -> str:
        if self._max_steps() is not None:
            return "step"
        epochs = self.trainer.max_epochs  # -1: no limit (Lightning's bar said "Epoch 0/-2")
        return f"epoch {current_epoch}" + (f"/{epochs - 1}" if epochs and epochs > 0 else "")

    def _initialize_train_progress_bar_id(self) -> None:
        total = self._max_steps()
        if total is None:
            super()._initialize_train_progress_bar_id()
            return
        self.train_progress_bar_id = self._add_task(total, self._get_train_description(0))
        self._update(self.train_progress_bar_id, self.trainer.global_step)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._max_steps() is None:
            super().on_train_epoch_start(trainer, pl_module)
            return
        if self.is_disabled or self.progress is None:
            return
        if self.train_progress_bar_id is None:  # one bar for the run, not one per epoch
            self._initialize_train_progress_bar_id()
        self.refresh()

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        if not self.is_disabled and self.train_progress_bar_id is None:
            self._initialize_train_progress_bar_id()  # resumed mid-epoch
        done = trainer.global_step if self._max_steps() is not None else batch_idx + 1
        self._update(self.train_progress_bar_id, done)
        every = max(1, int(trainer.log_every_n_steps or 1))
        if trainer.global_step % every == 0:
            self._update_metrics(trainer, pl_module)
        self.refresh()

    def _set_name(self, attribute: str) -> str:
        names = getattr(self.trainer.lightning_module, attribute, None) or []
        index = self._current_eval_dataloader_idx or 0
        return str(names[index]) if index < len(names) else str(index)

    @property
    def validation_description(self) -> str:
        return f"val {self._set_name('val_set_names')}"

    @property
    def test_description(self) -> str:
        return f"test {self._set_name('test_set_names')}"

    def get_metrics(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics
