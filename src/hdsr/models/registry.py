"""Build hdsr's own networks from configs read out of files (checkpoints, run folders).

A network config that comes from a file a user was handed (a checkpoint's ``net_config``,
a sweep job's ``.hydra/config.yaml``) is data, not code: it may only name one of the
networks listed in :data:`NETWORKS`, with plain arguments (numbers, strings, booleans,
lists of them). Anything else (another ``_target_``, Hydra's ``_partial_``/``_args_``
keys, nested configs) is refused with an error that names the file and the key, and
nothing is imported or called for it. Configs the user composes on the command line keep
going through ``hydra.utils.instantiate``.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from torch import nn

from hdsr.errors import UntrustedConfigError

#: ``_target_`` strings a file may name -> (module, class name) of the network they build
NETWORKS: dict[str, tuple[str, str]] = {
    "hdsr.models.HDSRNet": ("hdsr.models.hdsrnet", "HDSRNet"),
    "hdsr.models.hdsrnet.HDSRNet": ("hdsr.models.hdsrnet", "HDSRNet"),
    "hdsr.models.bicubic.BicubicUpsampler": ("hdsr.models.bicubic", "BicubicUpsampler"),
}

_SCALARS = (bool, int, float, str, type(None))


def _plain(value: Any) -> bool:
    if isinstance(value, _SCALARS):
        return True
    if isinstance(value, list | tuple):
        return all(isinstance(v, _SCALARS) for v in value)
    return False


def network_class(config: Any, source: str, key: str) -> type[nn.Module]:
    """The hdsr network class that ``config`` (read from ``source`` at ``key``) names.

    Raises :class:`UntrustedConfigError` for anything but a mapping whose ``_target_`` is
    listed in :data:`NETWORKS` and whose other entries are plain arguments.
    """
    if not isinstance(config, Mapping):
        raise UntrustedConfigError(
            f"{source}: {key} must be a mapping with a _target_, got {type(config).__name__}"
        )
    target = config.get("_target_")
    if not isinstance(target, str) or target not in NETWORKS:
        allowed = ", ".join(sorted(NETWORKS))
        raise UntrustedConfigError(
            f"{source}: {key}._target_={target!r} is not one of hdsr's networks "
            f"({allowed}); refusing to build it"
        )
    for name, value in config.items():
        if name == "_target_":
            continue
        if not isinstance(name, str) or name.startswith("_"):
            raise UntrustedConfigError(
                f"{source}: {key}.{name} is not a network argument; refusing to build it"
            )
        if not _plain(value):
            raise UntrustedConfigError(
                f"{source}: {key}.{name} must be a number, string, boolean or a list of them, "
                f"got {type(value).__name__}; refusing to build it"
            )
    import importlib

    module, cls_name = NETWORKS[target]
    return getattr(importlib.import_module(module), cls_name)


def build_network(config: Any, source: str, key: str = "net_config") -> nn.Module:
    """Build the network ``config`` describes (see :func:`network_class`).

    ``config`` is a plain mapping (or an OmegaConf node, converted with its interpolations
    resolved). Arguments the class does not take are refused by name.
    """
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(config, DictConfig):
            config = OmegaConf.to_container(config, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    cls = network_class(config, source, key)
    kwargs = {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}
    del kwargs["_target_"]
    params = inspect.signature(cls).parameters
    unknown = [k for k in kwargs if k not in params]
    if unknown:
        raise UntrustedConfigError(
            f"{source}: {key}.{unknown[0]} is not an argument of {cls.__name__} "
            f"(it takes {', '.join(params)})"
        )
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        msg = f"{source}: {key} does not build a {cls.__name__}: {err}"
        raise UntrustedConfigError(msg) from None
