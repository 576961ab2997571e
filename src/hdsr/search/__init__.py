"""Hyperparameter search over ``hdsr-train`` runs: the library behind ``hdsr-search``
(:mod:`hdsr.cli.search`).

- :mod:`~hdsr.search.schema`: the schema language of the space file and its validator;
- :mod:`~hdsr.search.space`: the space file's schema, :class:`Space`, :func:`load_space`;
- :mod:`~hdsr.search.overrides`: the trials' ``hdsr-train`` overrides, checked against
  the composed ``hdsr-train`` config;
- :mod:`~hdsr.search.study`: the journal, pruners and samplers, trial liveness, the
  study's target;
- :mod:`~hdsr.search.callback`: :class:`TrialCallback`, run inside each trial's
  ``hdsr-train``;
- :mod:`~hdsr.search.worker`: the :class:`Worker` that runs the trials, the summary.

``hdsr.search.TrialCallback`` is the callback's stable path: every trial's command and
``.hydra/overrides.yaml`` name it (``+callbacks.search_trial._target_``), from this
version and earlier ones. It and the library's other public names are importable from
here; each is looked up in its module on first use (:func:`__getattr__`), so importing
``hdsr.search`` loads none of them (nor Lightning, Hydra or Optuna).
"""

from __future__ import annotations

import importlib
from typing import Any

PROG = "hdsr-search"

#: public name -> the module (of this package) that defines it
_EXPORTS = {
    **dict.fromkeys(["SpaceError", "Check", "Schema", "check_schema", "key"], "schema"),
    **dict.fromkeys(
        [
            "TOP_KEYS", "MANAGED_KEYS", "STUDY_NAME", "DOTTED_KEY", "SAFE_STRING",
            "check_key", "SpaceFile", "Param", "Space", "parse_space", "load_space",
        ],
        "space",
    ),
    **dict.fromkeys(
        [
            "CommandLineError", "check_file_overrides", "check_passthrough",
            "merge_overrides", "format_value", "quote_path", "param_overrides", "Checked",
            "check_against_config",
        ],
        "overrides",
    ),
    **dict.fromkeys(
        [
            "MISSING_OPTUNA", "TRIAL_ENV", "RUN_DIR", "COMMAND", "RETRY_OF", "PRUNED_AT",
            "SURPLUS", "ERROR", "HOST", "WORKER_PID", "TRAINER_PID", "HEARTBEAT",
            "import_optuna", "journal_storage", "build_pruner", "build_sampler", "host_id",
            "pid_running", "ALIVE", "BUSY", "DEAD", "liveness", "budget_trials", "best_value",
        ],
        "study",
    ),
    **dict.fromkeys(["TrialReporter", "TrialCallback"], "callback"),
    **dict.fromkeys(
        [
            "CALLBACK_TARGET", "DEFAULT_TRIALS", "DEFAULT_STALE_AFTER",
            "MAX_CONSECUTIVE_FAILURES", "Worker", "summary",
        ],
        "worker",
    ),
}  # fmt: skip


def __getattr__(name: str) -> Any:
    """A public name of the library (``TrialCallback``, ``Worker``, ...), from its module."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # found directly from now on
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
