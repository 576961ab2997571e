"""The tests' way of running commands (tests/helpers/prefork.py): a forked hdsr command is
what bash would have started, and only what can be forked is."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

from helpers import prefork
from helpers.commands import run, start, user_env


def _same(text: str) -> str:
    return re.sub(r"\d{4}-\d\d-\d\d[ _T][\d:,.\-]+", "<time>", text)


def test_a_forked_command_prints_and_exits_as_a_fresh_one(tmp_path):
    for cmd in ("hdsr-train optimizer.lr=-1", "hdsr-train --cfg job data.scale=3"):
        assert prefork.eligible(cmd, tmp_path, user_env()) is not None
        forked = run(cmd, tmp_path)
        fresh = run(cmd, tmp_path, HDSR_TEST_FRESH_PROCESSES="1")
        assert forked.returncode == fresh.returncode, cmd
        assert _same(forked.stdout) == _same(fresh.stdout), cmd
        assert _same(forked.stderr) == _same(fresh.stderr), cmd
    assert run("hdsr-train optimizer.lr=-1", tmp_path).returncode == 2


def test_a_forked_command_is_its_own_process_for_signals(tmp_path):
    proc = start("hdsr-train --cfg job", tmp_path)
    assert isinstance(proc, prefork.Forked)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "model:" in out
    proc = start("hdsr-train trainer.max_steps=100000 logger=csv", tmp_path)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL  # as Popen says of a killed process


def test_only_what_a_fork_can_reproduce_is_forked(tmp_path):
    env = user_env()
    assert prefork.eligible("hdsr-eval --help", tmp_path, env)[0].endswith("/hdsr-eval")
    # shell syntax, another program: bash runs them
    for cmd in ("hdsr-train --help | head", "hdsr-train $X", "env A=1 hdsr-train", "ls"):
        assert prefork.eligible(cmd, tmp_path, env) is None, cmd
    # a glob bash would expand to a file is not forked; one matching nothing is passed on
    assert prefork.eligible("hdsr-train -m 'model=ablation/*'", tmp_path, env)
    (tmp_path / "model=ablation").mkdir()
    (tmp_path / "model=ablation" / "x").touch()
    assert prefork.eligible("hdsr-train -m model=ablation/*", tmp_path, env) is None
    # PYTHONPATH's folders go on sys.path, unless one holds what an interpreter imports first
    with_path = {**env, "PYTHONPATH": str(tmp_path)}
    assert prefork.eligible("hdsr-train", tmp_path, with_path) is not None
    (tmp_path / "sitecustomize.py").touch()
    assert prefork.eligible("hdsr-train", tmp_path, with_path) is None
    # HDSR_TEST_FRESH_PROCESSES=1 (make test's environment): bash runs every command
    assert prefork.eligible("hdsr-train", tmp_path, user_env(**{prefork.FRESH: "1"})) is None


def test_a_variable_read_at_start_up_gets_a_server_started_with_it():
    env = user_env()
    server = prefork.server_for(env)
    # variables nothing reads before the command runs: the same server, the child sets them
    for name in ("HDSR_X", "WANDB_MODE", "COLUMNS", "PATH", "PYTHONPATH"):
        assert prefork.server_for({**env, name: "7"}) is server, name
    # variables torch, OpenMP or Lightning may read at import: a server started with them,
    # from the second command that needs it on (the first one bash runs)
    server.address()  # started
    for name in ("OMP_NUM_THREADS", "SLURM_PROCID", "RANK"):
        assert prefork.server_for({**env, name: "7"}) is None, name
        other = prefork.server_for({**env, name: "7"})
        assert other is not server and other.env[name] == "7", name


def test_the_workers_of_a_parallel_run_share_one_server(monkeypatch):
    """Two workers' servers for one start-up environment (two ``_Server`` objects, as two
    worker processes make them) are one process, which stops with the run."""
    monkeypatch.delenv(prefork.SHARED, raising=False)  # restored afterwards
    prefork.share_servers()  # what the controller does before starting its workers
    folder = Path(os.environ[prefork.SHARED])
    assert prefork.SHARED not in user_env()  # nothing the commands see
    env = prefork.startup_env(user_env())
    first, second = prefork._Server(env), prefork._Server(env)
    try:
        assert not first.started
        assert first.address() == second.address()  # the second worker uses the first's
        assert first.started and second.started and second._proc is None
        (pid_file,) = folder.glob("*/pid")
        assert int(pid_file.read_text()) == first._proc.pid
    finally:
        prefork.stop_shared_servers()
    assert first._proc.wait(timeout=30) == -signal.SIGKILL
    assert not folder.exists() and prefork.SHARED not in os.environ
