"""The trials' ``hdsr-train`` overrides: the space file's and the command line's checked and
merged, a trial's values written as overrides, and the whole checked against the
``hdsr-train`` config composed as the trials will compose it (Hydra's compose API)."""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import OverrideType
from hydra.errors import HydraException
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from hdsr.errors import ConfigError
from hdsr.search.schema import SpaceError
from hdsr.search.space import DOTTED_KEY, MANAGED_KEYS, Space, check_key
from hdsr.training.config import CONFIG_MODULE, check_config, first_set, renamed_override


class CommandLineError(SpaceError):
    """A bad argument or override on the command line (exit status 2)."""


def parse_overrides(where: str, overrides: Sequence[str]) -> list[Any]:
    """Hydra's parsed overrides; SpaceError naming ``where`` for one it cannot parse."""
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
    for text, override in zip(overrides, parse_overrides("overrides", overrides), strict=True):
        key = override.key_or_group
        if override.package is not None or not DOTTED_KEY.fullmatch(key):
            raise SpaceError(f"overrides: {text!r}: only key=value and group=option are allowed")
        if override.is_sweep_override():
            raise SpaceError(f"overrides: {text!r} sweeps several values; search it in params")
        if override.type != OverrideType.CHANGE:
            raise SpaceError(f"overrides: {text!r}: only changes of existing keys are allowed")
        check_key("overrides", key)
        if _holds_unsafe(override.value()):
            raise SpaceError(f"overrides: {text!r}: mappings and ${{...}} are not allowed")


def override_keys(overrides: Sequence[str]) -> dict[str, str]:
    """{key: override} of Hydra overrides (the key of ``+a.b=1`` is ``a.b``)."""
    parsed = parse_overrides("overrides", overrides)
    return {o.key_or_group: text for text, o in zip(overrides, parsed, strict=True)}


def check_passthrough(overrides: Sequence[str]) -> None:
    """The ``hdsr-train`` overrides after ``--``: any override, but no run-folder keys."""
    for arg in overrides:
        if arg.startswith("-"):
            raise CommandLineError(
                f"{arg}: hdsr-search runs single hdsr-train jobs; give key=value only after --"
            )
    renamed = renamed_override(overrides)
    if renamed:
        raise CommandLineError(renamed)
    for text, override in zip(overrides, parse_overrides("overrides", overrides), strict=True):
        key = override.key_or_group
        if override.is_sweep_override():
            raise CommandLineError(f"{text!r} sweeps several values; search the key in params")
        if key in MANAGED_KEYS or key == "hydra.run.dir" or key.startswith("hydra.sweep"):
            raise CommandLineError(f"{text}: {key} is set by hdsr-search for each trial")


def merge_overrides(file_overrides: Sequence[str], passthrough: Sequence[str]) -> list[str]:
    """The file's overrides, then the command line's; a key on the command line wins."""
    cli_keys = override_keys(passthrough)
    kept = [t for k, t in override_keys(file_overrides).items() if k not in cli_keys]
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


# --------------------------------------------------------------------------------------
# The hdsr-train config
# --------------------------------------------------------------------------------------


@contextlib.contextmanager
def _hydra_context() -> Iterator[None]:
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
        yield


def _compose(overrides: Sequence[str], where: str) -> Any:
    try:
        return compose(config_name="train", overrides=list(overrides), return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as err:
        raise SpaceError(f"{where}: {err}") from None


def _check_train_config(cfg: Any, where: str) -> None:
    try:
        check_config(cfg)
    except ConfigError as err:
        raise SpaceError(f"{where}: {err}") from None


_ABSENT = object()


def _leaf_keys(node: Any, prefix: str = "") -> Iterator[str]:
    for key in node.keys() if isinstance(node, DictConfig) else ():
        path = f"{prefix}{key}"
        child = node._get_node(key)
        if isinstance(child, DictConfig):
            yield from _leaf_keys(child, path + ".")
        else:
            yield path


def _check_value_keys(space: Space, cfg: Any, groups: set[str], where: str) -> None:
    """Every non-group parameter names a value (not a section) in ``cfg``."""
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
    check_file_overrides(space.overrides)
    check_passthrough(passthrough)
    fixed = merge_overrides(space.overrides, passthrough)
    fixed_keys = override_keys(fixed)
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
        # the fixed overrides alone; each choice and bound in turn on them; then a trial's
        # config (the first choice or the low bound of every parameter), as hdsr-train
        # would check them
        first = {
            k: p.choices[0] if p.type == "categorical" else p.low for k, p in space.params.items()
        }

        def trial_config(chosen: dict[str, Any], where: str, rep: Any = None) -> Any:
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

        base = trial_config({}, "overrides")
        for key, param in space.params.items():
            probes = param.choices if param.type == "categorical" else (param.low, param.high)
            for value in probes:
                where = f"params.{key}={value!r}"
                trial_config({key: value}, where, None if key in groups else base)
        if first:
            shown = " ".join(f"{k}={v!r}" for k, v in first.items())
            base = trial_config(first, f"a trial with {shown}")
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
