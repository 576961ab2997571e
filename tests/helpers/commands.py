"""Running the commands as a user types them, and reading back what they wrote."""

from __future__ import annotations

import contextlib
import csv
import importlib
import io
import json
import logging
import os
import shlex
import subprocess
import sys
import traceback
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path

from helpers import prefork

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]


#: the environment this test process started with (conftest's thread settings included):
#: what in-process tests set since (PL_GLOBAL_SEED from a seed_everything, Lightning's
#: and torch's import-time variables) does not leak into the commands
_SESSION_ENV = dict(os.environ)


def user_env(**env: str) -> dict[str, str]:
    """A user's environment for the commands: the test process's at its start, this
    venv's scripts first on PATH, no W&B key or setting (so W&B runs offline), 120
    columns; ``env`` on top."""
    environ = {
        k: v for k, v in _SESSION_ENV.items() if not k.startswith("WANDB_") and k != prefork.SHARED
    }
    environ.update(PATH=f"{BIN}{os.pathsep}{environ['PATH']}", COLUMNS="120")
    environ.update(env)
    return environ


def run(cmd: str, cwd: Path, timeout: int = 600, **env) -> subprocess.CompletedProcess:
    """Run ``cmd`` through bash, as typed at a prompt, offline and without a W&B key. An
    hdsr command is forked from an interpreter that has imported it already (``prefork``):
    the same process, output and exit status without ~5 CPU-seconds of imports."""
    environ = user_env(**env)
    proc = prefork.try_start(cmd, cwd, environ)
    if proc is None:
        return subprocess.run(
            ["bash", "-c", cmd],
            cwd=cwd,
            env=environ,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    with proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise
    return subprocess.CompletedProcess(["bash", "-c", cmd], proc.returncode, out, err)


def start(
    cmd: str, cwd: Path, output: Path | None = None, **env
) -> subprocess.Popen | prefork.Forked:
    """Start ``cmd`` as ``run`` would (its own process, so signals reach it), output piped
    or, both streams, written to the file ``output``."""
    Path(cwd).mkdir(parents=True, exist_ok=True)
    environ = user_env(**env)
    with open(output, "w") if output is not None else contextlib.nullcontext() as log:
        proc = prefork.try_start(cmd, cwd, environ, None if log is None else log.fileno())
        if proc is not None:
            return proc
        return subprocess.Popen(
            ["bash", "-c", f"exec {cmd}"],
            cwd=cwd,
            env=environ,
            text=True,
            stdout=subprocess.PIPE if log is None else log,
            stderr=subprocess.PIPE if log is None else subprocess.STDOUT,
        )


def _loggers() -> list[logging.Logger]:
    return [logging.root] + [
        lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]


@contextlib.contextmanager
def _logging_kept() -> Iterator[None]:
    """Whatever logging setup a Hydra command makes in this process (its console handler,
    its job log in a run folder that may since be removed) is undone afterwards, so the
    next test in this worker logs as before."""
    saved = {lg: (lg.handlers[:], lg.level, lg.propagate, lg.disabled) for lg in _loggers()}
    try:
        yield
    finally:
        for lg in _loggers():
            handlers, level, propagate, disabled = saved.get(lg, ([], logging.NOTSET, True, False))
            for handler in lg.handlers:
                if handler not in handlers:
                    handler.close()
            lg.handlers[:] = handlers
            lg.setLevel(level)
            lg.propagate, lg.disabled = propagate, disabled


def run_here(cmd: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run an hdsr command that stops before any training (a refused value, ``--cfg job``,
    ``--help``) in this process, through the function its console script calls, as ``run``
    would (offline, no W&B key, 120 columns): the same output and exit status without a new
    interpreter's ~6 s of imports. Not for commands that train: a run changes
    process-wide state (seeds, signal handlers, logging) that a test process should not
    inherit."""
    argv = shlex.split(cmd)
    (script,) = entry_points(group="console_scripts", name=argv[0])
    module, _, attr = script.value.partition(":")
    main = getattr(importlib.import_module(module), attr)
    saved_env = dict(os.environ)
    saved_argv, saved_cwd = sys.argv, os.getcwd()
    out, err = io.StringIO(), io.StringIO()
    code: int = 0
    try:
        environ = user_env()
        os.environ.clear()
        os.environ.update(environ)
        os.chdir(cwd)
        sys.argv = argv
        with (
            _logging_kept(),
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
        ):
            try:
                main()
            except SystemExit as stop:  # what the console script's sys.exit() would give
                if stop.code is None or isinstance(stop.code, int):
                    code = stop.code or 0
                else:
                    print(stop.code, file=sys.stderr)
                    code = 1
            except Exception:  # what the interpreter prints for an uncaught error
                traceback.print_exc()
                code = 1
    finally:
        sys.argv = saved_argv
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def wandb_records(wandb_dir: Path) -> dict:
    """What an offline W&B run recorded, read back through `wandb leet inspect --json`.

    ``wandb_dir``: a run's ``wandb`` folder holding one offline run, or an ``offline-run-*``
    folder. ``metrics``: the define_metric records; ``artifacts``: the logged artifacts.
    """
    if wandb_dir.name.startswith("offline-run-"):
        run_dir = wandb_dir
    else:
        (run_dir,) = wandb_dir.glob("offline-run-*")
    out = subprocess.run(
        [str(BIN / "wandb"), "leet", "inspect", "--json", str(run_dir)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    rec: dict = {
        "history": [],
        "summary": {},
        "exit_code": None,
        "run": None,
        "metrics": [],
        "artifacts": [],
    }
    for line in out.splitlines():
        r = json.loads(line)
        if r["type"] == "run":
            rec["run"] = r["run"]
        elif r["type"] == "history":
            rec["history"].append(r["history"]["item"])
        elif r["type"] == "summary":
            rec["summary"].update(r["summary"].get("update", {}))
        elif r["type"] == "metric":
            rec["metrics"].append(r["metric"])
        elif r["type"] == "artifact":
            rec["artifacts"].append(r["artifact"])
        elif r["type"] == "exit":
            rec["exit_code"] = r["exit"].get("exit_code", 0)
    return rec
