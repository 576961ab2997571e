"""The optimizer and LR scheduler of ``SRModule``: partials from the ``optimizer`` and
``scheduler`` config groups, the paper's defaults, and what a checkpoint records of them.

A partial here is what Hydra's ``_partial_: true`` gives (a ``functools.partial``): the
optimizer's class with its settings, called with the parameters (the scheduler's, with
the optimizer) when Lightning asks ``SRModule.configure_optimizers``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

#: builds the optimizer from the parameters (and keyword arguments such as ``fused``)
OptimizerFactory = Callable[..., torch.optim.Optimizer]
#: builds the LR scheduler from the optimizer
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]

#: the paper's optimizer (SPEC section 3): Adam, lr 1e-4, betas (0.9, 0.999), eps 1e-8
#: (conf/optimizer/adam.yaml)
PAPER_ADAM: OptimizerFactory = functools.partial(
    torch.optim.Adam, lr=1e-4, betas=(0.9, 0.999), eps=1e-8
)
#: the paper's schedule: halve the learning rate every 300,000 optimizer steps
#: (conf/scheduler/step.yaml)
PAPER_STEP_LR: SchedulerFactory = functools.partial(
    torch.optim.lr_scheduler.StepLR, step_size=300_000, gamma=0.5
)

#: the update kernels torch's optimizers take as keyword arguments
KERNEL_KEYWORDS = ("fused", "foreach")


def _target(func: Any) -> str:
    return f"{getattr(func, '__module__', '?')}.{getattr(func, '__qualname__', repr(func))}"


def _plain(value: Any) -> Any:
    """``value`` as plain data (numbers, strings, lists, dicts) for a weights-only load."""
    from omegaconf import OmegaConf

    if OmegaConf.is_config(value):
        value = OmegaConf.to_container(value, resolve=True)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def describe(factory: Callable[..., Any] | None) -> dict[str, Any] | None:
    """What ``factory`` builds, as plain data: ``{"_target_": <class>, <keyword>: <value>}``.

    Kept in a checkpoint's ``hyper_parameters`` (``optimizer``, ``scheduler``), which
    hdsr reads weights-only, so no Python object is stored; it is a record, never
    instantiated from the checkpoint.
    """
    if factory is None:
        return None
    func = getattr(factory, "func", factory)
    keywords = getattr(factory, "keywords", None) or {}
    return {"_target_": _target(func), **{k: _plain(v) for k, v in keywords.items()}}


def kernel_keywords(factory: Callable[..., Any], wanted: Mapping[str, bool]) -> dict[str, bool]:
    """The ``wanted`` update-kernel keywords (``fused``/``foreach``) the optimizer takes.

    Nothing when the partial sets either keyword itself (the config chose), or for an
    optimizer that takes neither (it then runs its own default kernel).
    """
    keywords = getattr(factory, "keywords", None) or {}
    if any(k in keywords for k in KERNEL_KEYWORDS):
        return {}
    try:
        params = inspect.signature(getattr(factory, "func", factory)).parameters
    except (TypeError, ValueError):
        return {}
    return {k: v for k, v in wanted.items() if k in params}


def build_optimizer(
    factory: OptimizerFactory, params: Iterable[torch.nn.Parameter], mixed: bool, clipping: bool
) -> torch.optim.Optimizer:
    """``factory(params)`` with the update kernel hdsr-train uses.

    The fused kernel (CPU and CUDA) does the same update in one pass over the weights.
    Lightning's mixed-precision plugins refuse to clip the gradients of an optimizer that
    unscales internally (fused), so with clipping (the recipes') under *-mixed precision
    the multi-tensor (foreach) kernel does the update instead.
    """
    wanted = {"foreach": True} if mixed and clipping else {"fused": True}
    return factory(params, **kernel_keywords(factory, wanted))
