"""Bayesian hyperparameter search with pruning over hdsr-train runs, on Optuna's journal
storage: the library behind ``hdsr-search`` (:mod:`hdsr.cli.search`).

The search space file (YAML, read with ``yaml.safe_load`` and treated as untrusted data)
names the study, the metric, the pruner and sampler, the parameters (``float``, ``int``,
``categorical``; a config group such as ``optimizer`` takes its option names as choices)
and fixed ``overrides`` for every trial. Everything is checked before a trial starts: an
unknown key, kind or field, ``low >= high``, empty choices, a parameter key the
``hdsr-train`` config does not have (the config is composed with Hydra's compose API), or a
value ``hdsr-train`` would refuse exits with status 2 and names the key.

How it works
------------
* **Trials are subprocesses.** Each trial is an ordinary ``hdsr-train`` command, run as a
  child process: the fixed overrides, the command-line overrides after ``--``, the
  trial's parameters, and ``paths.root=<root>/search/<study> run_name=trial_<n>`` (its run
  directory ``runs/search/<study>/trial_<n>``) with ``logger.wandb.group=<study>`` (one W&B
  run per trial, grouped by study). A child process rather than a call of
  ``hdsr.cli.train.train`` in this process, because it is the more robust of the two: the
  trial gets exactly what ``hdsr-train`` sets up (Hydra's run directory, ``.hydra/``,
  ``train.log``, job logging, signal handling, DDP relaunch of ``sys.argv``), no state leaks
  from one trial into the next (Hydra's and W&B's globals, signal handlers, CUDA memory), a
  crash fails one trial instead of the worker, and a trial's run is resumable by hand with
  the same command, like any run. The cost, a few seconds of imports per trial, is small
  beside a real trial. The trainer's output goes to ``<run dir>/hdsr-train.out``
  (``-v``: to the console).
* **Pruning.** The child gets one more callback, ``+callbacks.search_trial`` =
  :class:`TrialCallback`, and the trial's identity in the ``HDSR_SEARCH_TRIAL`` environment
  variable. After every validation it reports the metric to the Optuna trial
  (``trial.report(value, step=trainer.global_step)``) straight into the journal and asks
  ``trial.should_prune()`` (the space file's pruner); when told to prune it sets
  ``trainer.should_stop`` (training ends cleanly, checkpoints written) and marks the
  trial; the worker then tells Optuna the trial was pruned. The objective of a finished
  trial is the best value it reported (by default the PSNR on the first validation set,
  the value ``best.ckpt`` is chosen on). Without the environment variable (the command
  rerun by hand) the callback does nothing.
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
import difflib
import json
import logging
import math
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hdsr.runtime import STOP_SIGNALS

PROG = "hdsr-search"
_log = logging.getLogger(__name__)
MISSING_OPTUNA = "hdsr-search needs the search extra: pip install 'hdsr[search]'"
#: the trial a child ``hdsr-train`` reports to (JSON; set by the worker for its child)
TRIAL_ENV = "HDSR_SEARCH_TRIAL"
CALLBACK_TARGET = "hdsr.search.TrialCallback"
DEFAULT_TRIALS = 20
DEFAULT_STALE_AFTER = 600.0
#: a worker stops after this many failed trials in a row (a broken setup, not bad luck)
MAX_CONSECUTIVE_FAILURES = 3

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

TOP_KEYS = ("study", "direction", "metric", "pruner", "sampler", "params", "overrides", "trials")
PARAM_FIELDS = {
    "float": ("type", "low", "high", "log", "step"),
    "int": ("type", "low", "high", "log", "step"),
    "categorical": ("type", "choices"),
}
#: pruner and sampler kinds and their arguments: int (>= 0), float, bool, or int/"auto"
PRUNERS: dict[str, dict[str, str]] = {
    "median": {
        "n_startup_trials": "int",
        "n_warmup_steps": "int",
        "interval_steps": "int",
        "n_min_trials": "int",
    },
    "percentile": {
        "percentile": "float",
        "n_startup_trials": "int",
        "n_warmup_steps": "int",
        "interval_steps": "int",
        "n_min_trials": "int",
    },
    "hyperband": {"min_resource": "int", "max_resource": "int_or_auto", "reduction_factor": "int"},
    "successive_halving": {
        "min_resource": "int_or_auto",
        "reduction_factor": "int",
        "min_early_stopping_rate": "int",
    },
    "nop": {},
}
SAMPLERS: dict[str, dict[str, str]] = {
    "tpe": {
        "seed": "int",
        "n_startup_trials": "int",
        "multivariate": "bool",
        "constant_liar": "bool",
    },
    "random": {"seed": "int"},
}
#: keys the search sets for each trial (or that would break its run directory or resume)
MANAGED_KEYS = ("run_name", "sweep_name", "paths.run_dir", "resume", "ckpt_path")
STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
DOTTED_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z][A-Za-z0-9_]*)*")
#: categorical strings: plain words, numbers, paths (no interpolation, quotes or commas)
SAFE_STRING = re.compile(r"[A-Za-z0-9_.:/+-]{1,200}")


class SpaceError(ValueError):
    """A bad search space; the message names the key (exit status 2)."""


class CommandLineError(SpaceError):
    """A bad argument or override on the command line (exit status 2)."""


def _error(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)
    return 2


def _say(message: str) -> None:
    print(f"[search] {message}", flush=True)


def _import_optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise SystemExit(f"{PROG}: error: {MISSING_OPTUNA}") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


# --------------------------------------------------------------------------------------
# The search space file
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    """One searched key: ``float``/``int`` between ``low`` and ``high`` or ``categorical``."""

    key: str
    type: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] = ()

    def distribution(self) -> Any:
        from optuna.distributions import (
            CategoricalDistribution,
            FloatDistribution,
            IntDistribution,
        )

        if self.type == "categorical":
            return CategoricalDistribution(list(self.choices))
        if self.type == "int":
            return IntDistribution(
                int(self.low), int(self.high), log=self.log, step=int(self.step or 1)
            )
        return FloatDistribution(float(self.low), float(self.high), log=self.log, step=self.step)


@dataclass
class Space:
    """A validated search space file."""

    path: Path
    study: str
    params: dict[str, Param]
    direction: str = "maximize"
    metric: str | None = None  # None: val/psnr_y/<first validation set>
    pruner: dict[str, Any] = field(default_factory=lambda: {"kind": "median"})
    sampler: dict[str, Any] = field(default_factory=lambda: {"kind": "tpe"})
    overrides: list[str] = field(default_factory=list)
    trials: int | None = None


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _number(where: str, value: Any, integer: bool = False) -> float | int:
    if integer and not (isinstance(value, int) and not isinstance(value, bool)):
        raise SpaceError(f"{where} must be an integer, got {value!r}")
    if not _is_number(value):
        hint = ""
        if isinstance(value, str) and re.fullmatch(r"[+-]?\d+[eE][+-]?\d+", value.strip()):
            hint = f" (YAML reads {value} as a string: write it with a dot, e.g. 1.0e-5)"
        raise SpaceError(f"{where} must be a number, got {value!r}{hint}")
    if not math.isfinite(value):
        raise SpaceError(f"{where} must be finite, got {value!r}")
    return value


def _check_key(where: str, key: Any) -> str:
    if not isinstance(key, str) or not DOTTED_KEY.fullmatch(key):
        raise SpaceError(
            f"{where}: {key!r} is not a config key (dotted names of letters, digits and _; "
            "no _target_-like keys)"
        )
    if key.split(".", 1)[0] == "hydra" or key in MANAGED_KEYS or key.startswith("paths."):
        raise SpaceError(f"{where}: {key} is set by hdsr-search itself and cannot be searched")
    return key


def _parse_param(key: str, spec: Any) -> Param:
    where = f"params.{key}"
    if not isinstance(spec, Mapping):
        raise SpaceError(f"{where} must be a mapping with a type, got {spec!r}")
    kind = spec.get("type")
    if kind not in PARAM_FIELDS:
        raise SpaceError(
            f"{where}.type: unknown parameter type {kind!r} (use one of: {', '.join(PARAM_FIELDS)})"
        )
    unknown = [k for k in spec if k not in PARAM_FIELDS[kind]]
    if unknown:
        raise SpaceError(
            f"{where}: unknown field {unknown[0]!r} for type {kind} "
            f"(allowed: {', '.join(PARAM_FIELDS[kind])})"
        )
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list) or not choices:
            raise SpaceError(f"{where}.choices must be a non-empty list, got {choices!r}")
        for choice in choices:
            if choice is None or isinstance(choice, bool) or _is_number(choice):
                if _is_number(choice) and not math.isfinite(choice):
                    raise SpaceError(f"{where}.choices: {choice!r} is not finite")
                continue
            if not isinstance(choice, str) or not SAFE_STRING.fullmatch(choice):
                raise SpaceError(
                    f"{where}.choices: {choice!r} is not allowed (numbers, true/false, null, "
                    "or words of letters, digits and _.:/+-)"
                )
        if len({repr(c) for c in choices}) != len(choices):
            raise SpaceError(f"{where}.choices lists a value twice: {choices}")
        return Param(key, kind, choices=tuple(choices))
    integer = kind == "int"
    for name in ("low", "high"):
        if name not in spec:
            raise SpaceError(f"{where}.{name} is missing")
    low = _number(f"{where}.low", spec["low"], integer)
    high = _number(f"{where}.high", spec["high"], integer)
    if low >= high:
        raise SpaceError(f"{where}: low ({low}) must be smaller than high ({high})")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise SpaceError(f"{where}.log must be true or false, got {log!r}")
    if log and low <= 0:
        raise SpaceError(f"{where}: log: true needs low > 0, got {low}")
    step = spec.get("step")
    if step is not None:
        step = _number(f"{where}.step", step, integer)
        if step <= 0:
            raise SpaceError(f"{where}.step must be positive, got {step}")
        if log:
            raise SpaceError(f"{where}: log and step cannot be combined")
        if step > high - low:
            raise SpaceError(f"{where}.step ({step}) is larger than high - low ({high - low})")
    return Param(key, kind, low=low, high=high, log=log, step=step)


def _parse_kind(
    where: str, spec: Any, kinds: dict[str, dict[str, str]], default: str
) -> dict[str, Any]:
    if spec is None:
        return {"kind": default}
    if not isinstance(spec, Mapping):
        raise SpaceError(f"{where} must be a mapping with a kind, got {spec!r}")
    kind = spec.get("kind")
    if kind not in kinds:
        raise SpaceError(f"{where}.kind: unknown {where} {kind!r} (use one of: {', '.join(kinds)})")
    out: dict[str, Any] = {"kind": kind}
    for name, value in spec.items():
        if name == "kind":
            continue
        if name not in kinds[kind]:
            allowed = ", ".join(kinds[kind]) or "none"
            raise SpaceError(f"{where}: unknown argument {name!r} for {kind} (allowed: {allowed})")
        arg = f"{where}.{name}"
        expected = kinds[kind][name]
        if expected == "bool":
            if not isinstance(value, bool):
                raise SpaceError(f"{arg} must be true or false, got {value!r}")
        elif expected == "float":
            _number(arg, value)
        elif not (expected == "int_or_auto" and value == "auto"):
            _number(arg, value, integer=True)
            if value < 0:
                raise SpaceError(f"{arg} must not be negative, got {value}")
        out[name] = value
    return out


def parse_space(data: Any, path: Path) -> Space:
    """Validate the structure of a space file's data (``yaml.safe_load``'s result)."""
    if not isinstance(data, Mapping):
        raise SpaceError("the file must hold a mapping (study, params, ...)")
    unknown = [k for k in data if k not in TOP_KEYS]
    if unknown:
        raise SpaceError(f"unknown key {unknown[0]!r} (allowed: {', '.join(TOP_KEYS)})")
    study = data.get("study", path.stem)
    if not isinstance(study, str) or not STUDY_NAME.fullmatch(study):
        raise SpaceError(f"study: {study!r} is not a study name (letters, digits, _ . -)")
    direction = data.get("direction", "maximize")
    if direction != "maximize":
        raise SpaceError(
            f"direction: {direction!r}: the metrics (val/psnr_y/..., val/ssim_y/...) are "
            "better when higher, so the direction is maximize"
        )
    metric = data.get("metric")
    if metric is not None and (not isinstance(metric, str) or not SAFE_STRING.fullmatch(metric)):
        raise SpaceError(f"metric: {metric!r} is not a metric name")
    params = data.get("params")
    if not isinstance(params, Mapping) or not params:
        raise SpaceError("params must be a non-empty mapping of config keys to parameters")
    parsed = {}
    for key, spec in params.items():
        _check_key("params", key)
        parsed[key] = _parse_param(key, spec)
    overrides = data.get("overrides") or []
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise SpaceError(f"overrides must be a list of key=value strings, got {overrides!r}")
    trials = data.get("trials")
    if trials is not None:
        _number("trials", trials, integer=True)
        if trials < 1:
            raise SpaceError(f"trials must be at least 1, got {trials}")
    return Space(
        path=path,
        study=study,
        params=parsed,
        direction=direction,
        metric=metric,
        pruner=_parse_kind("pruner", data.get("pruner"), PRUNERS, "median"),
        sampler=_parse_kind("sampler", data.get("sampler"), SAMPLERS, "tpe"),
        overrides=list(overrides),
        trials=trials,
    )


def load_space(path: Path) -> Space:
    import yaml

    if not path.is_file():
        raise SpaceError(f"{path}: no such search space file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise SpaceError(f"{path} is not valid YAML: {err}") from None
    return parse_space(data, path)


def build_pruner(spec: Mapping[str, Any]) -> Any:
    """The Optuna pruner of a validated ``pruner`` spec."""
    from optuna import pruners

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
    from optuna import samplers

    args = {k: v for k, v in spec.items() if k != "kind"}
    if seed_offset:
        args["seed"] = (args.get("seed") or 0) + seed_offset
    make = {"tpe": samplers.TPESampler, "random": samplers.RandomSampler}[spec["kind"]]
    return make(**args)


# --------------------------------------------------------------------------------------
# Overrides and the hdsr-train config
# --------------------------------------------------------------------------------------


def _parse_overrides(where: str, overrides: Sequence[str]) -> list[Any]:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        return OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as err:
        raise SpaceError(f"{where}: {err}") from None


def _holds_unsafe(value: Any) -> bool:
    """True for a value an untrusted file must not set: a mapping (it could name a
    ``_target_`` to call) or a string with an interpolation."""
    if isinstance(value, Mapping):
        return True
    if isinstance(value, list | tuple):
        return any(_holds_unsafe(v) for v in value)
    return isinstance(value, str) and "${" in value


def check_file_overrides(overrides: Sequence[str]) -> None:
    """The space file's ``overrides``: plain ``key=value`` or ``group=option`` changes."""
    from hydra.core.override_parser.types import OverrideType

    for text, override in zip(overrides, _parse_overrides("overrides", overrides), strict=True):
        key = override.key_or_group
        if override.package is not None or not DOTTED_KEY.fullmatch(key):
            raise SpaceError(f"overrides: {text!r}: only key=value and group=option are allowed")
        if override.is_sweep_override():
            raise SpaceError(f"overrides: {text!r} sweeps several values; search it in params")
        if override.type != OverrideType.CHANGE:
            raise SpaceError(f"overrides: {text!r}: only changes of existing keys are allowed")
        _check_key("overrides", key)
        if _holds_unsafe(override.value()):
            raise SpaceError(f"overrides: {text!r}: mappings and ${{...}} are not allowed")


def _override_keys(overrides: Sequence[str]) -> dict[str, str]:
    """{key: override} of Hydra overrides (the key of ``+a.b=1`` is ``a.b``)."""
    parsed = _parse_overrides("overrides", overrides)
    return {o.key_or_group: text for text, o in zip(overrides, parsed, strict=True)}


def check_passthrough(overrides: Sequence[str]) -> None:
    """The ``hdsr-train`` overrides after ``--``: any override, but no run-folder keys."""
    for arg in overrides:
        if arg.startswith("-"):
            raise CommandLineError(
                f"{arg}: hdsr-search runs single hdsr-train jobs; give key=value only after --"
            )
    from hdsr.cli.overrides import check_renamed_keys

    check_renamed_keys(overrides)
    for text, override in zip(overrides, _parse_overrides("overrides", overrides), strict=True):
        key = override.key_or_group
        if override.is_sweep_override():
            raise CommandLineError(f"{text!r} sweeps several values; search the key in params")
        if key in MANAGED_KEYS or key == "hydra.run.dir" or key.startswith("hydra.sweep"):
            raise CommandLineError(f"{text}: {key} is set by hdsr-search for each trial")


def merge_overrides(file_overrides: Sequence[str], passthrough: Sequence[str]) -> list[str]:
    """The file's overrides, then the command line's; a key on the command line wins."""
    cli_keys = _override_keys(passthrough)
    kept = [t for k, t in _override_keys(file_overrides).items() if k not in cli_keys]
    return kept + list(passthrough)


def format_value(value: Any) -> str:
    """A parameter value as Hydra reads it back exactly."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    return f"'{value}'"  # SAFE_STRING: no quote, backslash or interpolation inside


def quote_path(path: Path) -> str:
    """A folder as a quoted Hydra value (refused if Hydra could not read it back)."""
    text = str(path)
    if any(c in text for c in "'\\$"):
        raise SpaceError(f"{text}: a run folder path with ', \\ or $ cannot be passed to Hydra")
    return f"'{text}'"


def param_overrides(space: Space, params: Mapping[str, Any], groups: set[str]) -> list[str]:
    """The trial's ``key=value`` overrides (``group=option`` for a config group)."""
    out = []
    for key in space.params:
        value = params[key]
        out.append(f"{key}={value}" if key in groups else f"{key}={format_value(value)}")
    return out


@contextlib.contextmanager
def _hydra_context() -> Iterator[None]:
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    from hdsr.cli.train import CONFIG_MODULE

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        yield


def _compose(overrides: Sequence[str], where: str) -> Any:
    from hydra import compose
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        return compose(config_name="train", overrides=list(overrides), return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as err:
        raise SpaceError(f"{where}: {err}") from None


def _check_train_config(cfg: Any, where: str) -> None:
    from hdsr.cli.train import check_config
    from hdsr.loggers import ConfigError

    try:
        check_config(cfg)
    except ConfigError as err:
        raise SpaceError(f"{where}: {err}") from None


_ABSENT = object()


def _leaf_keys(node: Any, prefix: str = "") -> Iterator[str]:
    from omegaconf import DictConfig

    for key in node.keys() if isinstance(node, DictConfig) else ():
        path = f"{prefix}{key}"
        child = node._get_node(key)
        if isinstance(child, DictConfig):
            yield from _leaf_keys(child, path + ".")
        else:
            yield path


def _check_value_keys(space: Space, cfg: Any, groups: set[str], where: str) -> None:
    """Every non-group parameter names a value (not a section) in ``cfg``."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    for key in space.params:
        if key in groups:
            continue
        node = OmegaConf.select(cfg, key, default=_ABSENT, throw_on_resolution_failure=False)
        if node is _ABSENT:
            close = difflib.get_close_matches(key, list(_leaf_keys(cfg)), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise SpaceError(f"params.{key}: no such key in the hdsr-train config{where}{hint}")
        if isinstance(node, DictConfig | ListConfig):
            raise SpaceError(
                f"params.{key} is a section of the hdsr-train config, not a value; search one "
                "of its keys"
            )


@dataclass
class Checked:
    """What composing the hdsr-train config told about a space."""

    metric: str
    groups: set[str]
    overrides: list[str]  # the fixed overrides of every trial (file, then command line)


def check_against_config(space: Space, passthrough: Sequence[str]) -> Checked:
    """Compose the hdsr-train config as the trials will and check every key and value.

    Raises SpaceError naming the key: a parameter the config does not have (with the
    closest key), a section searched as a value, a group option that does not exist, a
    bound or choice ``hdsr-train`` refuses, a metric that is not logged.
    """
    from omegaconf import OmegaConf

    from hdsr.training import first_set

    check_file_overrides(space.overrides)
    check_passthrough(passthrough)
    fixed = merge_overrides(space.overrides, passthrough)
    fixed_keys = _override_keys(fixed)
    clash = next((k for k in space.params if k in fixed_keys), None)
    if clash:
        raise SpaceError(f"params.{clash} is also set by the override {fixed_keys[clash]!r}")
    with _hydra_context():
        base = _compose(fixed, "overrides")
        choices = dict(base.hydra.runtime.choices)
        groups = {k for k in space.params if k in choices}
        for key in groups:
            param = space.params[key]
            if param.type != "categorical":
                raise SpaceError(f"params.{key} is a config group: give its options as choices")
            bad = next((c for c in param.choices if not isinstance(c, str)), None)
            if bad is not None:
                raise SpaceError(f"params.{key}: choice {bad!r} is not an option of group {key}")
        _check_value_keys(space, base, groups, "")
        # a trial's config: the first choice or the low bound of every parameter, then
        # each choice and bound in turn, as hdsr-train would check them
        first = {
            k: p.choices[0] if p.type == "categorical" else p.low for k, p in space.params.items()
        }

        def trial_config(key: str | None, value: Any, rep: Any = None) -> Any:
            chosen = {**first, key: value} if key else first
            where = f"params.{key}={value!r}" if key else "overrides"
            if rep is None:  # a group changes: compose again
                selected = [f"{k}={v}" for k, v in chosen.items() if k in groups]
                cfg = _compose([*fixed, *selected], where)
                _check_value_keys(space, cfg, groups, f" with {' '.join(selected)}")
            else:
                cfg = rep.copy()
            for k, v in chosen.items():
                if k not in groups:
                    OmegaConf.update(cfg, k, v, merge=False)
            _check_train_config(cfg, where)
            return cfg

        base = trial_config(None, None)
        for key, param in space.params.items():
            probes = param.choices if param.type == "categorical" else (param.low, param.high)
            for value in probes:
                trial_config(key, value, None if key in groups else base)
        sets = base.data.get("val_sets") or {}
        names = list(sets) if not isinstance(sets, str) else [sets]
        first_name = first_set(sets)
    if not first_name:
        raise SpaceError("the hdsr-train config has no validation set (data.val_sets) to score")
    metrics = [f"val/{m}/{s}" for s in names for m in ("psnr_y", "ssim_y")]
    metric = space.metric or f"val/psnr_y/{first_name}"
    if metric not in metrics:
        raise SpaceError(f"metric: {metric!r} is not logged (choose one of: {', '.join(metrics)})")
    return Checked(metric=metric, groups=groups, overrides=fixed)


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
    from optuna.trial import TrialState

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


# --------------------------------------------------------------------------------------
# The callback in the trainer: report, prune
# --------------------------------------------------------------------------------------


class TrialReporter:
    """What :class:`TrialCallback` does, without Lightning (so this module imports quickly).

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
            optuna = _import_optuna()
            from optuna.storages import JournalStorage
            from optuna.storages.journal import JournalFileBackend

            storage = JournalStorage(JournalFileBackend(self.spec["storage"]))
            study = optuna.load_study(
                study_name=self.spec["study"],
                storage=storage,
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


def _die_with_parent() -> None:
    """Linux: get SIGTERM when the worker dies (the trainer then stops with last.ckpt)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)


_TRIAL_CALLBACK: type | None = None


def __getattr__(name: str) -> Any:
    """``TrialCallback``, the Lightning callback, made on first use (imports Lightning)."""
    global _TRIAL_CALLBACK
    if name != "TrialCallback":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if _TRIAL_CALLBACK is None:
        from lightning.pytorch.callbacks import Callback

        _TRIAL_CALLBACK = type(
            "TrialCallback",
            (TrialReporter, Callback),
            {
                "__module__": __name__,
                "__doc__": "Report each validation's metric to the search's Optuna trial "
                "and stop training (``trainer.should_stop``) when the pruner says so.",
            },
        )
    return _TRIAL_CALLBACK


# --------------------------------------------------------------------------------------
# The worker
# --------------------------------------------------------------------------------------


def _hdsr_train() -> str:
    import shutil

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


class Worker:
    """One ``hdsr-search`` process: asks the study for trials and runs each as
    ``hdsr-train`` until the study holds its target number of trials."""

    def __init__(self, args: argparse.Namespace, space: Space, checked: Checked) -> None:
        self.optuna = _import_optuna()
        self.space, self.checked = space, checked
        self.target = args.trials or space.trials or DEFAULT_TRIALS
        self.timeout = args.timeout
        self.stale_after = float(args.stale_after)
        self.verbose = args.verbose
        keys = _override_keys(checked.overrides)
        root = "runs"
        if "paths.root" in keys:
            root = str(_parse_overrides("overrides", [keys["paths.root"]])[0].value())
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
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        self.storage_path.parent.mkdir(parents=True, exist_ok=True)
        storage = JournalStorage(JournalFileBackend(str(self.storage_path)))
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
            import secrets

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
        n = len(self.study.get_trials(deepcopy=False))
        _say(
            f"study {self.space.study} in {_shown(self.storage_path)}: "
            + ("created" if created else f"loaded ({n} trials so far)")
            + f"; target {self.target} trials; metric {self.checked.metric}"
        )

    def trials(self) -> list[Any]:
        return self.study.get_trials(deepcopy=False)

    def requeue(self, frozen: Any, reason: str) -> bool:
        """Mark a RUNNING trial FAIL and enqueue it again (same params and run directory),
        so the next ``ask()`` resumes its run. False if another worker did it first."""
        from optuna.trial import TrialState

        try:
            self.storage.set_trial_state_values(frozen._trial_id, TrialState.FAIL)
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
        from optuna.trial import TrialState

        for frozen in self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
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
        from optuna.trial import TrialState

        trials = self.trials()
        waiting = any(t.state == TrialState.WAITING for t in trials)
        return len(budget_trials(trials)) >= self.target and not waiting

    # ---- one trial ----

    def trial_command(self, trial: Any, run_dir: Path, fresh: bool) -> tuple[list[str], list[str]]:
        """(the hdsr-train command of the trial, the overrides that reproduce it)."""
        params = param_overrides(self.space, trial.params, self.checked.groups)
        managed = [f"paths.root={quote_path(run_dir.parent)}", f"run_name={run_dir.name}"]
        if "logger.wandb.group" not in _override_keys(self.train_overrides):
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
        from optuna.trial import TrialState

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
    from optuna.trial import TrialState

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
    lines += [f"  {k:<{width}} = {best.params[k]!r}" for k in worker.space.params]
    lines += [
        f"  run: {_shown(run_dir)} (checkpoints/best.ckpt)",
        "reproduce it with hdsr-train:",
        "  hdsr-train " + shlex.join(reproduce),
    ]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------
