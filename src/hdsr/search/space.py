"""The search space file: its schema, and the space it describes once checked
(:class:`Space`, :class:`Param`).

The file is YAML read with ``yaml.safe_load`` and treated as untrusted data. Its schema
(:mod:`hdsr.search.schema`) is the dataclasses below: :class:`SpaceFile`, the top level;
one class per parameter type, chosen by ``type`` (:class:`FloatParam`, :class:`IntParam`,
:class:`CategoricalParam`); one per pruner and sampler, chosen by ``kind``, whose fields
are the Optuna arguments the file may give. A mistake exits with status 2 and names the
key; the checks that need the ``hdsr-train`` config are :mod:`hdsr.search.overrides`'.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from hdsr.search.schema import Schema, SpaceError, check_schema, is_number, key

#: the top-level keys, in the order the messages (and the README) list them
TOP_KEYS = ("study", "direction", "metric", "pruner", "sampler", "params", "overrides", "trials")
#: keys the search sets for each trial (or that would break its run directory or resume)
MANAGED_KEYS = ("run_name", "sweep_name", "paths.run_dir", "resume", "ckpt_path")
STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
DOTTED_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_]*(\.[A-Za-z][A-Za-z0-9_]*)*")
#: categorical strings: plain words, numbers, paths (no interpolation, quotes or commas)
SAFE_STRING = re.compile(r"[A-Za-z0-9_.:/+-]{1,200}")


def check_key(where: str, key: Any) -> str:
    """A config key the file may search or override: dotted, not one the search sets."""
    if not isinstance(key, str) or not DOTTED_KEY.fullmatch(key):
        raise SpaceError(
            f"{where}: {key!r} is not a config key (dotted names of letters, digits and _; "
            "no _target_-like keys)"
        )
    if key.split(".", 1)[0] == "hydra" or key in MANAGED_KEYS or key.startswith("paths."):
        raise SpaceError(f"{where}: {key} is set by hdsr-search itself and cannot be searched")
    return key


# --------------------------------------------------------------------------------------
# The schema
# --------------------------------------------------------------------------------------


def _low_below_high(where: str, v: dict[str, Any]) -> None:
    if v["low"] >= v["high"]:
        raise SpaceError(f"{where}: low ({v['low']}) must be smaller than high ({v['high']})")


def _log_needs_positive_low(where: str, v: dict[str, Any]) -> None:
    if v["log"] and v["low"] <= 0:
        raise SpaceError(f"{where}: log: true needs low > 0, got {v['low']}")


def _step_fits(where: str, v: dict[str, Any]) -> None:
    if v["log"]:
        raise SpaceError(f"{where}: log and step cannot be combined")
    if v["step"] > v["high"] - v["low"]:
        span = v["high"] - v["low"]
        raise SpaceError(f"{where}.step ({v['step']}) is larger than high - low ({span})")


def _choices_allowed(where: str, v: dict[str, Any]) -> None:
    choices = v["choices"]
    for choice in choices:
        if choice is None or isinstance(choice, bool) or is_number(choice):
            if is_number(choice) and not math.isfinite(choice):
                raise SpaceError(f"{where}.choices: {choice!r} is not finite")
            continue
        if not isinstance(choice, str) or not SAFE_STRING.fullmatch(choice):
            raise SpaceError(
                f"{where}.choices: {choice!r} is not allowed (numbers, true/false, null, "
                "or words of letters, digits and _.:/+-)"
            )
    if len({repr(c) for c in choices}) != len(choices):
        raise SpaceError(f"{where}.choices lists a value twice: {choices}")


class ParamSchema(Schema):
    """``params.<key>``: one searched config key."""

    TAG = "type"
    NOUN = "parameter type"
    UNKNOWN = "{where}: unknown field {key!r} for type {tag} (allowed: type, {allowed})"


@dataclass(frozen=True)
class FloatParam(ParamSchema):
    NAME = "float"
    low: float = key()
    high: float = key(after=_low_below_high)
    log: bool = key(False, after=_log_needs_positive_low)
    step: float | None = key(None, minimum=0, exclusive=True, after=_step_fits)


@dataclass(frozen=True)
class IntParam(ParamSchema):
    NAME = "int"
    low: int = key()
    high: int = key(after=_low_below_high)
    log: bool = key(False, after=_log_needs_positive_low)
    step: int | None = key(None, minimum=0, exclusive=True, after=_step_fits)


@dataclass(frozen=True)
class CategoricalParam(ParamSchema):
    NAME = "categorical"
    choices: list[Any] = key(
        None,
        message="{where} must be a non-empty list, got {value!r}",
        nonempty=True,
        after=_choices_allowed,
    )


AnyParam = FloatParam | IntParam | CategoricalParam


def _count() -> Any:
    """An integer argument of Optuna's that is at least 0."""
    return key(minimum=0)


class Arguments(Schema):
    """A pruner or sampler: its ``kind`` and Optuna's arguments for it."""

    TAG = "kind"
    UNKNOWN = "{where}: unknown argument {key!r} for {tag} (allowed: {allowed})"
    ARGUMENTS = True


class PrunerArguments(Arguments):
    NOUN = "pruner"


@dataclass(frozen=True)
class MedianPruner(PrunerArguments):
    NAME = "median"
    n_startup_trials: int = _count()
    n_warmup_steps: int = _count()
    interval_steps: int = _count()
    n_min_trials: int = _count()


@dataclass(frozen=True)
class PercentilePruner(PrunerArguments):
    NAME = "percentile"
    percentile: float = key()  # needed: build_pruner says so when it is missing
    n_startup_trials: int = _count()
    n_warmup_steps: int = _count()
    interval_steps: int = _count()
    n_min_trials: int = _count()


@dataclass(frozen=True)
class HyperbandPruner(PrunerArguments):
    NAME = "hyperband"
    min_resource: int = _count()
    max_resource: int | Literal["auto"] = _count()
    reduction_factor: int = _count()


@dataclass(frozen=True)
class SuccessiveHalvingPruner(PrunerArguments):
    NAME = "successive_halving"
    min_resource: int | Literal["auto"] = _count()
    reduction_factor: int = _count()
    min_early_stopping_rate: int = _count()


@dataclass(frozen=True)
class NopPruner(PrunerArguments):
    NAME = "nop"


Pruner = MedianPruner | PercentilePruner | HyperbandPruner | SuccessiveHalvingPruner | NopPruner


class SamplerArguments(Arguments):
    NOUN = "sampler"


@dataclass(frozen=True)
class TPESampler(SamplerArguments):
    NAME = "tpe"
    seed: int = _count()
    n_startup_trials: int = _count()
    multivariate: bool = key()
    constant_liar: bool = key()


@dataclass(frozen=True)
class RandomSampler(SamplerArguments):
    NAME = "random"
    seed: int = _count()


Sampler = TPESampler | RandomSampler


@dataclass(frozen=True)
class SpaceFile(Schema):
    """The file's top level, in the order it is checked (``study``: the file's name when
    absent; ``pruner``, ``sampler``: median and TPE when absent)."""

    NOT_A_MAPPING = "the file must hold a mapping (study, params, ...)"
    UNKNOWN = "unknown key {key!r} (allowed: " + ", ".join(TOP_KEYS) + ")"

    study: str = key(
        message="{where}: {value!r} is not a study name (letters, digits, _ . -)",
        pattern=STUDY_NAME,
    )
    direction: Literal["maximize"] = key(
        "maximize",
        message="{where}: {value!r}: the metrics (val/psnr_y/..., val/ssim_y/...) are better "
        "when higher, so the direction is maximize",
    )
    metric: str | None = key(
        None, message="{where}: {value!r} is not a metric name", pattern=SAFE_STRING
    )
    params: dict[str, AnyParam] = key(
        None,
        message="{where} must be a non-empty mapping of config keys to parameters",
        nonempty=True,
        keys=check_key,
    )
    overrides: list[str] | None = key(
        None,
        message="{where} must be a list of key=value strings, got {value!r}",
        empty_is_default=True,
    )
    trials: int | None = key(None, minimum=1)
    pruner: Pruner | None = key(None)
    sampler: Sampler | None = key(None)


# --------------------------------------------------------------------------------------
# The checked space
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
        # optuna is the search extra: imported where it is used
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


def _param(key: str, spec: dict[str, Any]) -> Param:
    if spec["type"] == "categorical":
        return Param(key, spec["type"], choices=tuple(spec["choices"]))
    return Param(key, **spec)


def parse_space(data: Any, path: Path) -> Space:
    """Validate the structure of a space file's data (``yaml.safe_load``'s result)."""
    checked = check_schema(SpaceFile, data, defaults={"study": path.stem})
    return Space(
        path=path,
        study=checked["study"],
        params={k: _param(k, spec) for k, spec in checked["params"].items()},
        direction=checked["direction"],
        metric=checked["metric"],
        pruner=checked["pruner"] or {"kind": "median"},
        sampler=checked["sampler"] or {"kind": "tpe"},
        overrides=list(checked["overrides"] or []),
        trials=checked["trials"],
    )


def load_space(path: Path) -> Space:
    if not path.is_file():
        raise SpaceError(f"{path}: no such search space file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise SpaceError(f"{path} is not valid YAML: {err}") from None
    return parse_space(data, path)
