"""Adding a test's own Lightning callback to a run the way a user adds one: a config
override (``+callbacks.<name>={_target_: ..., ...}``), built by the callbacks group."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback

#: the callbacks the overrides below name, by key
REGISTERED: dict[str, Any] = {}


def registered(key: str) -> Any:
    """The callback registered under ``key`` (the overrides' ``_target_``)."""
    return REGISTERED[key]


def callback_overrides(name: str, callback: Any) -> list[str]:
    """Overrides that add ``callback`` (an object) to ``cfg.callbacks`` as ``name``."""
    key = f"{name}-{id(callback)}"
    REGISTERED[key] = callback
    return [
        f"+callbacks.{name}._target_=helpers.callbacks.registered",
        f"+callbacks.{name}.key={key}",
    ]


#: the tests folder: on a command's PYTHONPATH, ``helpers`` (``Pace``) is importable
TESTS = Path(__file__).resolve().parents[1]
#: the environment a paced command needs
PACE_ENV = {"PYTHONPATH": str(TESTS)}


def pace_overrides(seconds: float) -> str:
    """Overrides that make a run sleep ``seconds`` after every training step (``Pace``)."""
    return f"+callbacks.pace._target_=helpers.callbacks.Pace +callbacks.pace.seconds={seconds}"


class Pace(Callback):
    """Sleeps after every training step: a run that takes wall time without taking CPU
    time, for a scheduler's limit or a kill that must fall mid-training. Sleeping changes
    no number the run computes. The run's processes must be able to import ``helpers``
    (``PYTHONPATH`` holding the tests folder)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = float(seconds)

    def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
        time.sleep(self.seconds)
