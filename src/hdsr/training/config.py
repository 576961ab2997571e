"""The ``hdsr-train`` config: where it lives, the checks a run's config must pass before
anything starts (each error names the key), the keys that were renamed, what a run
resumes from, and the W&B group of a sweep's job."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, ListConfig, OmegaConf

from hdsr.data.datasets import lr_patch_size
from hdsr.errors import ConfigError, UnreadableCheckpoint
from hdsr.imaging import SCALES

#: the package holding the config tree (``conf/`` in the source tree, mapped into the wheel)
CONFIG_MODULE = "hdsr.conf"


#: ``_target_`` paths of configs written by earlier versions (a run folder's
#: ``.hydra/config.yaml``, an experiment file kept from hdsr 0.1) -> where the class lives
#: now. :func:`upgrade_targets` maps them; nothing else is rewritten or imported.
LEGACY_TARGETS = {
    "hdsr.module.SRModule": "hdsr.training.module.SRModule",
    "hdsr.callbacks.GracefulStop": "hdsr.training.callbacks.GracefulStop",
    "hdsr.callbacks.StepProgressBar": "hdsr.training.callbacks.StepProgressBar",
    "hdsr.ema.EMA": "hdsr.training.ema.EMA",
    "hdsr.wandb_logger.WandbLogger": "hdsr.training.loggers.WandbLogger",
}


def upgrade_targets(cfg: DictConfig) -> list[tuple[str, str, str]]:
    """Point every ``_target_`` of ``cfg`` that names one of :data:`LEGACY_TARGETS` at
    the class's module today (in place); return ``(key, old, new)`` of each change."""
    changed: list[tuple[str, str, str]] = []

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, DictConfig):
            for key in list(node.keys()):
                child = node._get_node(key)
                path = f"{prefix}{key}"
                if key == "_target_" and not isinstance(child, DictConfig):
                    old = node.get(key)
                    if isinstance(old, str) and old in LEGACY_TARGETS:
                        node[key] = LEGACY_TARGETS[old]
                        changed.append((path, old, LEGACY_TARGETS[old]))
                elif isinstance(child, DictConfig | ListConfig):
                    walk(child, f"{path}.")
        elif isinstance(node, ListConfig):
            for i, item in enumerate(node):
                walk(item, f"{prefix}{i}.")

    walk(cfg, "")
    return changed


def first_set(sets: Any) -> str:
    """The first validation set's name (``data.val_sets``: a mapping of sources, a list
    of benchmark names or one name): the set ``best.ckpt`` is chosen on."""
    if isinstance(sets, Mapping):
        sets = list(sets)
    elif isinstance(sets, str):
        sets = [sets]
    return str(next(iter(sets), ""))


def job_dir(run_name: str, overrides: str) -> str:
    """A multirun job's directory: run_name, then the swept keys not already in it."""
    return f"{run_name},{overrides}" if overrides else run_name


# the resolvers the config tree uses, registered wherever it is composed
if not OmegaConf.has_resolver("hdsr_first_set"):
    OmegaConf.register_new_resolver("hdsr_first_set", first_set)
if not OmegaConf.has_resolver("hdsr_job_dir"):
    OmegaConf.register_new_resolver("hdsr_job_dir", job_dir)

#: the keys of the old ``optim`` block, and the keys of the optimizer and scheduler config
#: groups that replaced them (with their defaults, optimizer=adam and scheduler=step)
RENAMED_KEYS = {
    "optim.lr": "optimizer.lr",
    "optim.betas": "optimizer.betas",
    "optim.eps": "optimizer.eps",
    "optim.lr_step": "scheduler.step_size",
    "optim.lr_gamma": "scheduler.gamma",
}


def renamed_key_message(key: str, value: str | None = None) -> str | None:
    """What to write instead of an ``optim.*`` key (None for any other key)."""
    if key != "optim" and not key.startswith("optim."):
        return None
    new = RENAMED_KEYS.get(key)
    if new is None:
        instead = "optimizer.<key> or scheduler.<key>"
    else:
        instead = f"{new}={value}" if value is not None else new
    return (
        f"'{key}' is no longer a key: the optim block became the optimizer and scheduler "
        f"config groups; write {instead} (optimizer=adam|adamw, scheduler=step|released; "
        "optim.lr_step and optim.lr_gamma are scheduler.step_size and scheduler.gamma)"
    )


def check_ema(decay: Any, start_step: Any) -> None:
    """Raise ``ValueError`` naming the key unless ``decay`` is None or in (0, 1) and
    ``start_step`` a non-negative integer."""
    if decay is not None and (
        isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0 < decay < 1
    ):
        raise ValueError(
            f"ema.decay must be null (off) or a number in (0, 1), e.g. 0.999; got {decay!r}"
        )
    if isinstance(start_step, bool) or not isinstance(start_step, int) or start_step < 0:
        raise ValueError(f"ema.start_step must be an integer >= 0, got {start_step!r}")


def renamed_override(overrides: Sequence[str]) -> str | None:
    """The message for the first ``optim.*`` override of ``overrides`` (``key=value``
    texts), None when there is none."""
    for text in overrides:
        if "=" not in text:
            continue
        key, value = text.split("=", 1)
        message = renamed_key_message(key.lstrip("+~"), value)
        if message:
            return message
    return None


def _positive_number(value: Any, allow_zero: bool = False) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return math.isfinite(value) and (value >= 0 if allow_zero else value > 0)


def check_numbers(cfg: DictConfig) -> None:
    """The optimizer's, the scheduler's and the network's numbers that PyTorch or the
    network would refuse only once training starts (a traceback after the start-up), or
    that would train nothing: refused up front, naming the key (``hdsr-search`` checks
    the bounds of a search space with this too)."""
    rules = (
        ("optimizer.lr", False, "a positive number, e.g. 1e-4"),
        ("optimizer.eps", False, "a positive number, e.g. 1e-8"),
        ("optimizer.weight_decay", True, "a number >= 0"),
        ("scheduler.gamma", False, "a positive number, e.g. 0.5"),
        ("model.net.temperature", False, "a positive number, e.g. 40"),
    )
    for key, zero_ok, want in rules:
        value = OmegaConf.select(cfg, key, default=None)
        if value is not None and not _positive_number(value, zero_ok):
            raise ConfigError(f"{key} must be {want}; got {value!r}")
    betas = OmegaConf.select(cfg, "optimizer.betas", default=None)
    if betas is not None:
        values = list(betas) if isinstance(betas, ListConfig | list | tuple) else [betas]
        if len(values) != 2 or not all(_positive_number(b, True) and b < 1 for b in values):
            raise ConfigError(f"optimizer.betas must be two numbers in [0, 1); got {betas!r}")
    step = OmegaConf.select(cfg, "scheduler.step_size", default=None)
    if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 1):
        raise ConfigError(f"scheduler.step_size must be a positive integer; got {step!r}")


def check_config(cfg: DictConfig) -> None:
    """Reject values that would fail late or silently, naming the offending key."""
    check_numbers(cfg)
    if cfg.get("optim") is not None:  # e.g. an experiment file written for hdsr 0.1
        keys = [f"optim.{k}" for k in cfg.optim] if isinstance(cfg.optim, DictConfig) else []
        raise ConfigError(renamed_key_message(keys[0] if keys else "optim"))
    scale = cfg.data.get("scale")
    if isinstance(scale, bool) or scale not in SCALES:
        raise ConfigError(f"data.scale must be one of {list(SCALES)}, got {scale!r}")
    target = str(cfg.model.net.get("_target_", ""))
    if target.endswith("BicubicUpsampler"):
        raise ConfigError(
            "model=bicubic has no parameters to train; evaluate it with hdsr-eval model=bicubic"
        )
    for key in ("patch_size", "batch_size", "patches_per_epoch"):
        value = cfg.data.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"data.{key} must be a positive integer, got {value!r}")
    try:
        check_ema(
            OmegaConf.select(cfg, "ema.decay"), OmegaConf.select(cfg, "ema.start_step", default=0)
        )
    except ValueError as err:
        raise ConfigError(str(err)) from None
    start, max_steps = (
        OmegaConf.select(cfg, "ema.start_step", default=0),
        OmegaConf.select(cfg, "trainer.max_steps", default=-1),
    )
    if (
        OmegaConf.select(cfg, "ema.decay") is not None
        and isinstance(max_steps, int)
        and max_steps >= 0
        and start >= max_steps
    ):
        raise ConfigError(
            f"ema.start_step={start} is not before trainer.max_steps={max_steps}: the average "
            "would never be updated and every score would be the initial weights'; set "
            f"ema.start_step below {max_steps} or ema.decay=null"
        )
    every = OmegaConf.select(cfg, "stop.check_every_n_steps", default=10)
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ConfigError(f"stop.check_every_n_steps must be a positive integer, got {every!r}")
    if cfg.data.get("patch_size"):
        try:
            lr_patch_size(cfg.data.patch_size, scale)
        except ValueError:
            least = min(p for p in range(1, scale + 1) if round(p / scale) >= 1)
            raise ConfigError(
                f"data.patch_size={cfg.data.patch_size} (the HR patch) is too small for "
                f"data.scale={scale}: it must be at least {least} so that the LR patch "
                "has a pixel"
            ) from None
    if cfg.data.get("batch_size") and cfg.data.get("patches_per_epoch"):
        if cfg.data.patches_per_epoch < cfg.data.batch_size:
            raise ConfigError(
                f"data.patches_per_epoch={cfg.data.patches_per_epoch} is smaller than "
                f"data.batch_size={cfg.data.batch_size}: an epoch would have no step"
            )


def resolve_resume(cfg: DictConfig, run_dir: Path, announce: bool = True) -> str | None:
    """Checkpoint to resume from: ``ckpt_path`` if given, else the run's ``last.ckpt``
    when ``resume`` is true and it exists, else None (a fresh start).

    An unreadable ``last.ckpt`` (torn, truncated, not a checkpoint) is named in a warning
    and the newest readable checkpoint of the run's folder is used instead, if any (see
    ``hdsr.training.checkpoint_files.resume_checkpoint``; ``announce``: log those
    warnings). The chosen file is read weights-only and must hold the config's model,
    scale and network; otherwise ConfigError names the file and what it holds.
    """
    # Lightning (the checkpoint files' CheckpointIO) loads when a run starts, not when
    # the config is composed: --help and config errors stay quick
    from hdsr.training.checkpoint_files import check_matches, read_checkpoint, resume_checkpoint

    if cfg.get("ckpt_path"):
        path = Path(str(cfg.ckpt_path)).expanduser()
        if path.is_dir():
            raise ConfigError(f"ckpt_path={cfg.ckpt_path} is a directory, not a checkpoint file")
        if not path.is_file():
            raise ConfigError(f"ckpt_path={cfg.ckpt_path}: no such checkpoint file")
        try:
            found = (path, read_checkpoint(path))
        except UnreadableCheckpoint as err:
            raise ConfigError(f"ckpt_path={cfg.ckpt_path}: {err}") from None
    elif cfg.get("resume", True):
        found = resume_checkpoint(run_dir / "checkpoints", announce=announce)
    else:
        found = None
    if found is None:
        return None
    path, ckpt = found
    net = OmegaConf.to_container(cfg.model.net, resolve=True)
    check_matches(ckpt, path, cfg.data.scale, str(cfg.model.name), net)
    return str(path.resolve()) if cfg.get("ckpt_path") else str(path)


def sweep_group(cfg: DictConfig) -> str | None:
    """The W&B group of a multirun job: its sweep's name (None for a single run)."""
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        return str(cfg.sweep_name)
    return None
