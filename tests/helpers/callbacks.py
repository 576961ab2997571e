"""Adding a test's own Lightning callback to a run the way a user adds one: a config
override (``+callbacks.<name>={_target_: ..., ...}``), built by the callbacks group."""

from __future__ import annotations

from typing import Any

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
