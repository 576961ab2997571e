"""hdsr commands started the way a shell starts them, minus ~5 CPU-seconds of imports each.

A test process starts one *server* (this file run as a script) that imports torch,
Lightning, Hydra and hdsr's command modules once and then forks a child per command. The
child is set up as the shell would have started the console script (its argv, environment,
working folder, standard streams, ``__main__``, ``sys.path``), calls the function the
script calls and exits as the interpreter would (non-daemon threads joined, atexit
handlers run, streams flushed, the exit status of ``sys.exit``, an uncaught error or an
uncaught Ctrl-C). Everything a command imports lazily (W&B, Optuna, ONNX) it still imports
itself, and processes a command starts (DDP ranks, search trials, SLURM jobs) are fresh
interpreters as ever.

What a fresh interpreter reads before its first line the child cannot be given: a command
is forked from a server started with the same variables (torch's, OpenMP's, Lightning's
rank variables..., all but ``LATE_VARIABLES``), one server per such environment, and
commands with shell syntax or a sitecustomize on PYTHONPATH go to bash (``eligible``), as
do all with ``HDSR_TEST_FRESH_PROCESSES=1``.

In a parallel run (``make test``) the workers share their servers: the session's controller
(conftest) names a folder in ``HDSR_TEST_PREFORK_DIR``, the first worker that needs a server
for a start-up environment starts it there (the others wait for it and use it), and the
servers stop with the controller, not with the worker that started them.

The test side (``start``) returns a ``Forked``, which behaves like the ``subprocess.Popen``
of ``bash -c 'exec cmd'``: ``pid`` is the command's own process (signals reach it),
``returncode`` is its exit status (negative: the signal that ended it).
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import functools
import glob
import hashlib
import json
import locale
import os
import re
import selectors
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

#: imported once by the server: what every hdsr command imports before doing anything
PRELOAD = (
    "torch",
    "lightning.pytorch",
    "hydra",
    "torchmetrics",
    "hdsr.cli",
    "hdsr.cli.report",
    "hdsr.cli.upscale",
    "hdsr.cli.profiling",
    "hdsr.cli.export",
    "hdsr.cli.search",
    "hdsr.training.run",
)
#: variables that nothing reads before a command's first line: the child sets them (the
#: rest, OMP_*, RANK, SLURM_*..., may be read at import: the server is started with
#: them); PYTHONPATH's folders the child puts on sys.path where the interpreter would
LATE_VARIABLES = re.compile(r"(HDSR_|WANDB_|PYTEST_)\w*|COLUMNS|PATH|PWD|PYTHONPATH")
#: shell syntax (pipes, redirections, substitutions, braces, globs' home) that only bash
#: can run as typed
SHELL_SYNTAX = re.compile(r"[|&;<>()$`\\{}~\n]")
FRESH = "HDSR_TEST_FRESH_PROCESSES"
#: the folder of the servers a parallel run's workers share (set by the controller)
SHARED = "HDSR_TEST_PREFORK_DIR"
_MAX_REQUEST = 1 << 20
#: in the server: the variables its imports set
_SET_BY_IMPORTS: dict[str, str] = {}


# -- the server ---------------------------------------------------------------------------


def _serve(path: str, watched: int, folder: str) -> None:
    """Serve at ``path`` until the process ``watched`` ends, then remove ``folder``."""
    started_with = dict(os.environ)
    for name in PRELOAD:
        __import__(name)
    # what the imports set (TORCHINDUCTOR_CACHE_DIR...), a fresh command's imports would too
    global _SET_BY_IMPORTS
    _SET_BY_IMPORTS = {k: v for k, v in os.environ.items() if k not in started_with}
    assert "wandb" not in sys.modules  # its import makes a per-process media folder
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path)
    listener.listen(64)
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    # nothing more to say: the process that read "ready" may end before this server does
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)
    selector = selectors.DefaultSelector()
    selector.register(listener, selectors.EVENT_READ, ("accept", None))
    try:  # the test process (or a parallel run's controller): this server ends with it
        selector.register(os.pidfd_open(watched), selectors.EVENT_READ, ("watched", None))
    except ProcessLookupError:
        return
    while True:
        for key, _ in selector.select():
            kind, conn = key.data
            if kind == "watched":  # gone without stopping this server: its folder goes too
                listener.close()
                shutil.rmtree(folder, ignore_errors=True)
                return
            if kind == "accept":
                client, _ = listener.accept()
                selector.register(client, selectors.EVENT_READ, ("request", client))
            elif kind == "request":
                selector.unregister(conn)
                pid = _fork_command(conn, listener, selector)
                if pid is None:
                    conn.close()
                    continue
                pidfd = os.pidfd_open(pid)
                selector.register(pidfd, selectors.EVENT_READ, ("exit", (conn, pid)))
            else:  # a command ended: its status goes to the test waiting for it
                client, pid = conn
                selector.unregister(key.fileobj)
                os.close(key.fd)
                _, status = os.waitpid(pid, 0)
                with contextlib.suppress(OSError):
                    client.send(json.dumps({"status": os.waitstatus_to_exitcode(status)}).encode())
                client.close()


def _fork_command(conn: socket.socket, listener: socket.socket, selector: Any) -> int | None:
    try:
        data, fds, _, _ = socket.recv_fds(conn, _MAX_REQUEST, 3)
    except OSError:
        return None
    if len(fds) != 3 or not data:
        for fd in fds:
            os.close(fd)
        return None
    request = json.loads(data)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the command's process: nothing of the server's stays open in it
        for key in list(selector.get_map().values()):
            if isinstance(key.fileobj, socket.socket):
                key.fileobj.close()
            else:
                os.close(key.fd)
            if key.data[0] == "exit":  # another command's waiting test
                key.data[1][0].close()
        selector.close()
        listener.close()
        conn.close()
        _run_command(request, fds)  # never returns
    for fd in fds:
        os.close(fd)
    with contextlib.suppress(OSError):
        conn.send(json.dumps({"pid": pid}).encode())
    return pid


def _run_command(request: dict, fds: list[int]) -> None:
    """In the forked child: become the command's process and exit as it would."""
    status, interrupted = 1, False
    try:
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update({**_SET_BY_IMPORTS, **request["env"]})
        script = request["argv"][0]
        sys.argv = list(request["argv"])
        # a script's own folder comes first, then PYTHONPATH's (the server has none)
        sys.path[0:1] = [os.path.dirname(script), *_pythonpath(request["env"])]
        main_module = type(sys)("__main__")
        main_module.__file__ = script
        main_module.__spec__ = None
        main_module.__builtins__ = __builtins__
        sys.modules["__main__"] = main_module
        module, _, attr = request["entry"].partition(":")
        main = getattr(__import__(module, fromlist=[attr]), attr)
    except BaseException:
        import traceback

        traceback.print_exc()
        os._exit(1)
    try:
        status = _exit_status(main())  # the console script: sys.exit(main())
    except SystemExit as stop:
        status = _exit_status(stop.code)
    except KeyboardInterrupt:
        import traceback

        traceback.print_exc()
        interrupted = True
    except BaseException:
        sys.excepthook(*sys.exc_info())
        status = 1
    with contextlib.suppress(BaseException):
        threading._shutdown()  # type: ignore[attr-defined]  # what the interpreter does
    with contextlib.suppress(BaseException):
        atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(BaseException):
            stream.flush()
    if interrupted:  # an uncaught Ctrl-C ends the interpreter by SIGINT
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    os._exit(status)


def _pythonpath(env: dict[str, str]) -> list[str]:
    return [os.path.abspath(p) for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]


def _exit_status(code: Any) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


# -- the test side ------------------------------------------------------------------------


class _Server:
    """A server whose interpreter was started with ``env``, started at its first command:
    this process's own, or, in a parallel run, the one its workers share."""

    def __init__(self, env: dict[str, str]) -> None:
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._dir: tempfile.TemporaryDirectory | None = None
        self.env = dict(env)
        self.asked = 0
        shared = os.environ.get(SHARED)
        key = hashlib.sha256(json.dumps(sorted(self.env.items())).encode()).hexdigest()[:16]
        self._shared = Path(shared, key) if shared else None

    @property
    def started(self) -> bool:
        if self._shared is not None:
            return _alive(self._shared / "pid")
        return self._proc is not None

    def address(self) -> str:
        with self._lock:
            if self._shared is not None:
                return self._shared_address()
            if self._proc is None or self._proc.poll() is not None:
                self._dir = tempfile.TemporaryDirectory(prefix="hdsr-prefork-")
                address = os.path.join(self._dir.name, "s")
                self._proc = self._start(address, os.getpid(), self._dir.name)
                atexit.register(self.stop)
            assert self._dir is not None
            return os.path.join(self._dir.name, "s")

    def _shared_address(self) -> str:
        """The shared server's address, started here if no worker has started it yet."""
        assert self._shared is not None
        self._shared.mkdir(parents=True, exist_ok=True)
        address = self._shared / "s"
        with open(self._shared / "lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # another worker starting it: wait for it
            if not _alive(self._shared / "pid"):
                address.unlink(missing_ok=True)
                session = self._shared.parent  # removed by whichever server sees the end
                controller = int(Path(session, "controller").read_text())
                self._proc = self._start(str(address), controller, str(session))
                (self._shared / "pid").write_text(str(self._proc.pid))
        return str(address)

    def _start(self, address: str, watched: int, folder: str) -> subprocess.Popen:
        proc = subprocess.Popen(
            [sys.executable, __file__, address, str(watched), folder],
            cwd=os.path.dirname(address),
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        line = proc.stdout.readline()
        proc.stdout.close()
        if line != "ready\n":
            proc.wait()
            raise RuntimeError(f"the prefork server did not start (exit {proc.returncode})")
        return proc

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()
        if self._dir is not None:
            self._dir.cleanup()


def _alive(pid_file: Path) -> bool:
    try:
        os.kill(int(pid_file.read_text()), 0)
    except (OSError, ValueError):
        return False
    return True


def share_servers() -> None:
    """In a parallel run's controller: the workers (started after this, with this
    environment) share their servers in a folder that ``stop_shared_servers`` removes."""
    folder = tempfile.mkdtemp(prefix="hdsr-prefork-")
    Path(folder, "controller").write_text(str(os.getpid()))
    os.environ[SHARED] = folder


def stop_shared_servers() -> None:
    """In the controller, at the end of the run: stop the servers its workers started."""
    folder = os.environ.pop(SHARED, None)
    if folder is None:
        return
    for pid_file in Path(folder).glob("*/pid"):
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)
    shutil.rmtree(folder, ignore_errors=True)


#: this test process's servers, by the variables their interpreters read at start-up
_SERVERS: dict[frozenset[tuple[str, str]], _Server] = {}
#: servers started in one test process at most: commands of other start-up environments
#: go to bash
MAX_SERVERS = 3


def startup_env(env: dict[str, str]) -> dict[str, str]:
    """What of ``env`` an interpreter may read before a command's first line: all but
    ``LATE_VARIABLES`` (which the child sets itself)."""
    return {k: v for k, v in env.items() if not LATE_VARIABLES.fullmatch(k)}


def server_for(env: dict[str, str]) -> _Server | None:
    """The server for a command run with ``env`` (one started with the same start-up
    variables), or None where bash should run it: a second server starts at the second
    command that needs it (a server costs more than one fresh command), and no more than
    ``MAX_SERVERS`` start."""
    wanted = startup_env(env)
    key = frozenset(wanted.items())
    if key not in _SERVERS:
        _SERVERS[key] = _Server(wanted)
    server = _SERVERS[key]
    server.asked += 1
    if not server.started:
        started = sum(s.started for s in _SERVERS.values())
        if started >= MAX_SERVERS or (started and server.asked < 2):
            return None
    return server


@functools.cache
def _hdsr_scripts() -> dict[str, str]:
    """hdsr's console scripts: name -> 'module:function'."""
    return {
        ep.name: ep.value
        for ep in entry_points(group="console_scripts")
        if ep.value.startswith("hdsr.")
    }


def try_start(cmd: str, cwd: Path, env: dict[str, str], output: int | None = None) -> Forked | None:
    """``cmd`` forked (``start``) where a fork reproduces it (``eligible``) and a server
    is to be had; None where bash should run it."""
    argv = eligible(cmd, cwd, env)
    return None if argv is None else start(argv, cwd, env, output)


def eligible(cmd: str, cwd: Path, env: dict[str, str]) -> list[str] | None:
    """The argv to fork for ``cmd`` run with ``env`` (its script's full path first), or
    None when bash must run it: shell syntax, not this venv's hdsr command, a glob that
    matches a file, a sitecustomize on PYTHONPATH."""
    if env.get(FRESH) == "1" or SHELL_SYNTAX.search(cmd):
        return None
    try:
        argv = shlex.split(cmd)
    except ValueError:
        return None
    if not argv or argv[0] not in _hdsr_scripts():
        return None
    if any(glob.has_magic(a) and glob.glob(a, root_dir=cwd) for a in argv[1:]):
        return None
    for folder in _pythonpath(env):
        if any(Path(folder, f"{m}.py").exists() for m in ("sitecustomize", "usercustomize")):
            return None  # imported by a fresh interpreter before anything else
    script = None
    for folder in env.get("PATH", "").split(os.pathsep):
        candidate = os.path.join(folder, argv[0])
        if os.access(candidate, os.X_OK):
            script = candidate
            break
    if script is None or not Path(script).resolve().is_relative_to(Path(sys.executable).parent):
        return None  # not this venv's script: let bash find what it finds
    return [script, *argv[1:]]


def start(
    argv: list[str], cwd: Path, env: dict[str, str], output: int | None = None
) -> Forked | None:
    """Fork ``argv`` (from ``eligible``) with ``env`` from a server, output piped as text
    or both outputs written to the open file ``output``; None when this process has no
    server to spare for that start-up environment."""
    server = server_for(env)
    if server is None:
        return None
    entry = _hdsr_scripts()[Path(argv[0]).name]
    env = {**env, "PWD": str(Path(cwd).absolute())}  # as bash exports it
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    conn.connect(server.address())
    if output is None:
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
    else:
        out_r = err_r = None
        out_w = err_w = os.dup(output)
    request = json.dumps({"argv": argv, "env": env, "cwd": str(cwd), "entry": entry}).encode()
    try:
        socket.send_fds(conn, [request], [0, out_w, err_w])
    finally:
        for fd in {out_w, err_w}:
            os.close(fd)
    reply = json.loads(conn.recv(_MAX_REQUEST) or b"{}")
    if "pid" not in reply:
        for fd in {out_r, err_r} - {None}:
            os.close(fd)
        conn.close()
        raise RuntimeError(f"the prefork server did not start {argv}")
    return Forked(argv, reply["pid"], conn, out_r, err_r)


class Forked:
    """A forked command, used as the ``subprocess.Popen`` of ``bash -c 'exec cmd'`` with
    ``text=True`` and both outputs piped (``out``/``err``: the pipes' read ends) or sent to
    a file (None: ``stdout``/``stderr`` are None, ``communicate`` gives None for them)."""

    def __init__(
        self, args: list[str], pid: int, conn: socket.socket, out: int | None, err: int | None
    ):
        encoding = locale.getpreferredencoding(False)
        self.args, self.pid, self.returncode = args, pid, None
        self.stdin = None
        # closed by communicate or __exit__
        self.stdout = None if out is None else open(out, encoding=encoding)  # noqa: SIM115
        self.stderr = None if err is None else open(err, encoding=encoding)  # noqa: SIM115
        self._conn = conn
        self._readers: list[threading.Thread] = []
        self._read: dict[str, list[str]] = {"stdout": [], "stderr": []}

    # -- status
    def _status(self, timeout: float | None) -> int | None:
        if self.returncode is None:
            self._conn.settimeout(timeout)
            try:
                data = self._conn.recv(1024)
            except (TimeoutError, BlockingIOError):
                return None
            finally:
                self._conn.settimeout(None)
            if not data:
                raise RuntimeError(f"the prefork server stopped before {self.args[0]} ended")
            self.returncode = json.loads(data)["status"]
            self._conn.close()
        return self.returncode

    def poll(self) -> int | None:
        return self._status(0.0)

    def wait(self, timeout: float | None = None) -> int:
        code = self._status(timeout)
        if code is None:
            raise subprocess.TimeoutExpired(self.args, timeout)
        return code

    # -- output
    def communicate(
        self, input: str | None = None, timeout: float | None = None
    ) -> tuple[str | None, str | None]:
        assert input is None, "the commands get no input"
        if self.stdout is None:  # written to a file
            self.wait(timeout)
            return None, None
        if not self._readers:
            for name in ("stdout", "stderr"):
                thread = threading.Thread(target=self._drain, args=(name,), daemon=True)
                thread.start()
                self._readers.append(thread)
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._readers:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if thread.is_alive():
                raise subprocess.TimeoutExpired(self.args, timeout)
        self.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return "".join(self._read["stdout"]), "".join(self._read["stderr"])

    def _drain(self, name: str) -> None:
        stream = getattr(self, name)
        while chunk := stream.read(65536):
            self._read[name].append(chunk)
        stream.close()

    # -- signals
    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def __enter__(self) -> Forked:
        return self

    def __exit__(self, *exc: Any) -> None:
        for stream in (self.stdout, self.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        self.wait()


if __name__ == "__main__":
    _serve(sys.argv[1], int(sys.argv[2]), sys.argv[3])
