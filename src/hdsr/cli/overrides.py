"""Command-line overrides of the Hydra commands, prepared before Hydra reads them.

Hydra cannot sweep a nested config group as users type it (``-m model=ablation/*``): it
looks for an option literally named ``ablation/*``. Before Hydra sees the command line,
``key=sub/pattern`` arguments whose value holds a glob are expanded into Hydra's explicit
list (``model=ablation/a,ablation/b,...``) using Hydra's own config loader, so the same
search path that composes the config also lists the options.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

from hdsr.errors import UsageError
from hdsr.training.config import renamed_override

GLOB_CHARS = "*?["


#: config groups of the primary config (the left side of group overrides)
_HYDRA_FLAGS_WITH_VALUE = {
    "-cp",
    "--config-path",
    "-cn",
    "--config-name",
    "-cd",
    "--config-dir",
    "--info",
    "-i",
    "--package",
    "-p",
    "--experimental-rerun",
}


def _overrides(argv: Sequence[str]) -> list[tuple[int, str]]:
    """(position, text) of the ``key=value`` overrides in ``argv`` (flags skipped)."""
    out = []
    skip = False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        if arg in _HYDRA_FLAGS_WITH_VALUE:
            skip = True
            continue
        if arg.startswith("-") or "=" not in arg:
            continue
        out.append((i, arg))
    return out


def _key(override: str) -> str:
    key = override.split("=", 1)[0]
    return key.lstrip("+~")


def group_options(group: str, config_module: str) -> list[str]:
    """Options of config group ``group`` (e.g. ``model/ablation``), through Hydra's loader."""
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    with initialize_config_module(config_module=config_module, version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        return sorted(loader.get_group_options(group))


def expand_group_patterns(argv: Sequence[str], config_module: str) -> list[str]:
    """Expand ``group=sub/pattern`` overrides into explicit comma lists; reject repeats.

    Raises ``UsageError`` when a pattern matches no option, when a pattern expands to
    several options without ``-m``/``--multirun``, or when a key is given twice (which
    Hydra would silently resolve to the last one, e.g. after the shell expanded a glob).
    """
    argv = list(argv)
    overrides = _overrides(argv)
    seen: dict[str, str] = {}
    for _, text in overrides:
        key = _key(text)
        if key in seen:
            raise UsageError(
                f"'{key}' is given twice ({seen[key]!r} and {text!r}); Hydra would keep only "
                f"the last. To sweep several values use -m {key}=a,b (if a shell glob "
                f"expanded your pattern, quote it)."
            )
        seen[key] = text
    multirun = any(a in ("-m", "--multirun") for a in argv)
    for pos, text in overrides:
        key, value = text.split("=", 1)
        if not any(c in value for c in GLOB_CHARS) or "(" in value or value[:1] in "[{'\"":
            continue
        group_key = key.lstrip("+~")
        if "." in group_key or not group_options(group_key, config_module):
            continue  # a value override (or an unknown key: Hydra reports it)
        expanded: list[str] = []
        for part in value.split(","):
            if not any(c in part for c in GLOB_CHARS):
                expanded.append(part)
                continue
            sub, _, pattern = part.rpartition("/")
            group = f"{group_key}/{sub}" if sub else group_key
            options = group_options(group, config_module)
            matched = [o for o in options if fnmatch.fnmatchcase(o, pattern)]
            if not matched:
                available = ", ".join(f"{sub + '/' if sub else ''}{o}" for o in options) or "none"
                raise UsageError(
                    f"'{text}' matches no option of config group '{group}' (available: {available})"
                )
            expanded += [f"{sub}/{o}" if sub else o for o in matched]
        if len(expanded) > 1 and not multirun:
            raise UsageError(
                f"'{text}' expands to {len(expanded)} options; add -m to sweep over them"
            )
        argv[pos] = f"{key}={','.join(expanded)}"
    return argv


SWEEP_FUNCTIONS = ("range(", "choice(", "glob(", "interval(", "tag(")


#: keys that run_name (and so each job's directory name) already carries
RUN_NAME_KEYS = ("model", "data.scale", "seed", "run_name")


def is_sweep(value: str) -> bool:
    """True when a Hydra override value lists several values (top-level comma or range())."""
    if value.startswith(SWEEP_FUNCTIONS):
        return True
    depth, quote = 0, ""
    for ch in value:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[({":
            depth += 1
        elif ch in "])}":
            depth -= 1
        elif ch == "," and depth == 0:
            return True
    return False


def job_dir_overrides(argv: Sequence[str]) -> list[str]:
    """For a multirun, name each job's directory by run_name plus the swept keys only.

    Hydra's ``override_dirname`` lists every override; keys that are the same for all jobs
    (or already in run_name) are excluded so job directories stay short and predictable.
    """
    if not any(a in ("-m", "--multirun") for a in argv):
        return []
    exclude = set(RUN_NAME_KEYS)
    for _, text in _overrides(argv):
        key, value = text.split("=", 1)
        key = key.lstrip("+~")
        if key.startswith("hydra."):
            continue
        if not is_sweep(value):
            exclude.add(key)
    return [
        f"hydra.job.config.override_dirname.exclude_keys=[{','.join(sorted(exclude))}]",
        # a job's run.dir is its sweep directory: DDP ranks > 0 are started there
        "hydra.run.dir=${hydra.sweep.dir}/${hydra.sweep.subdir}",
    ]




def check_renamed_keys(argv: Sequence[str]) -> None:
    """Reject ``optim.*`` overrides with the key that replaced each (exit status 2)."""
    message = renamed_override([text for _, text in _overrides(argv)])
    if message:
        raise UsageError(message)


def check_mode_flags(argv: Sequence[str]) -> None:
    """Hydra runs one of -m, --cfg, --info at a time; say so in the user's terms."""
    multirun = any(a in ("-m", "--multirun") for a in argv)
    shown = next((a for a in argv if a in ("-c", "--cfg", "-i", "--info")), None)
    if multirun and shown:
        raise UsageError(
            f"-m and {shown} cannot be combined; to see the config of one job of the sweep, "
            f"drop -m and give one value per swept key (e.g. seed=1 instead of seed=1,2)"
        )


def with_overrides(argv: Sequence[str], extra: Sequence[str]) -> list[str]:
    """``argv`` with ``extra`` overrides placed right after the user's last override.

    Hydra's parser reads overrides as one run of positional arguments: overrides appended
    after a flag (``-m a=1,2 --cfg job``) would be rejected as unrecognised arguments the
    user never typed.
    """
    argv = list(argv)
    positions = [pos for pos, _ in _overrides(argv)]
    at = positions[-1] + 1 if positions else len(argv)
    if not positions:  # no override typed: put them before the first flag
        at = next((i for i, a in enumerate(argv) if a.startswith("-")), len(argv))
    return argv[:at] + list(extra) + argv[at:]
