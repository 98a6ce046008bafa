"""Children forked from an interpreter that has imported the Spark Connect client's heavy
dependencies: a run then starts without importing pandas, pyarrow and gRPC again (0.6 s of CPU
each time from compiled bytecode, 2 s without: most of what a scenario's child costs before its
first query).

:class:`Preloaded` starts that interpreter (``python``, its environment) once;
:meth:`Preloaded.spawn` forks a child of it that runs a module as ``python -m`` would, and
returns a :class:`ForkedChild`, which :func:`~pyspark_safestop.testing.runner.run_events`
reads like the process it would otherwise start (``run_events(..., preloaded=)``).

What a child has that a fresh interpreter would not: the modules of :data:`HEAVY` imported,
and the interpreter's start-up state (options, ``sys.path``, warning filters) taken from the
environment the :class:`Preloaded` was started with. Never this package, and pyspark only when
asked (``client=True``, for upstream's runs): the order in which a program imports those is
what the scenarios exercise, so the preloading interpreter refuses to serve if the heavy
dependencies loaded either. Its environment, arguments, working folder, standard
streams and process group (a session of its own) are the child's own, and it leaves through
the interpreter's usual exit (threads joined, exit hooks, final garbage collection), which is
what the exit scenarios look at. A child is killed with its process group by the preloading
interpreter, which knows whether it is still unreaped; when that interpreter dies its children
are killed by the kernel (Linux), and when its owner dies it kills them itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

__all__ = ["CLIENT", "HEAVY", "ForkedChild", "Preloaded"]

#: The client's dependencies that take most of its import time (pyspark's own modules are not
#: among them: see the module's docstring).
HEAVY = ("numpy", "pandas", "pyarrow", "grpc", "google.protobuf", "wrapt", "psutil")
#: With ``client=True``: pyspark's Spark Connect client too (never this package).
CLIENT = ("pyspark.sql.connect.session",)

_SERVE = r"""
import ctypes, io, json, os, runpy, select, signal, socket, sys

for heavy in json.loads(sys.argv[2]):
    try:
        __import__(heavy)
    except ImportError:
        pass
loaded = sorted(m for m in ("pyspark", "pyspark_safestop") if m in sys.modules)
if loaded:
    sys.exit(f"preloading imported {loaded}: children would not start as fresh interpreters")
import threading
for client in json.loads(sys.argv[3]):
    __import__(client)
if "pyspark_safestop" in sys.modules or threading.active_count() != 1:
    sys.exit("importing the client imported the package or started a thread: children would "
             "not start as fresh interpreters that imported it")

control = socket.socket(fileno=int(sys.argv[1]))
try:
    prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):
    prctl = None
wake_read, wake_write = os.pipe()
os.set_blocking(wake_read, False)
os.set_blocking(wake_write, False)
signal.set_wakeup_fd(wake_write)
signal.signal(signal.SIGCHLD, lambda *_: None)
unreaped = set()


def send(message):
    control.send(json.dumps(message).encode())


def become_child(request, fds):
    control.close()
    os.close(wake_read)
    os.close(wake_write)
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    os.setsid()
    if prctl is not None:
        prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG: gone with the preloader
    for target, fd in enumerate(fds):
        os.dup2(fd, target)
    for fd in fds:
        if fd > 2:
            os.close(fd)
    os.environ.clear()
    os.environ.update(request["env"])
    if request.get("cwd"):
        os.chdir(request["cwd"])
    # As the interpreter makes them, unbuffered as PYTHONUNBUFFERED asks.
    encoding = {"encoding": "utf-8", "errors": "backslashreplace"}
    sys.stdin = sys.__stdin__ = open(0, "r", closefd=False)
    for fd, name in ((1, "stdout"), (2, "stderr")):
        stream = io.TextIOWrapper(
            open(fd, "wb", 0, closefd=False), write_through=True, line_buffering=True,
            **encoding,
        )
        setattr(sys, name, stream)
        setattr(sys, f"__{name}__", stream)
    sys.argv = [request["module"], *request["args"]]
    sys.path[0] = os.getcwd()  # where `python -m` puts it
    runpy.run_module(request["module"], run_name="__main__", alter_sys=True)


def reap():
    while unreaped:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        unreaped.discard(pid)
        send({"exited": pid, "code": os.waitstatus_to_exitcode(status)})


def kill(pid):
    # Only while unreaped: until then its ID, and its group's, cannot be anyone else's.
    if pid in unreaped:
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def serve():
    while True:
        ready, _, _ = select.select([control, wake_read], [], [])
        if wake_read in ready:
            while True:
                try:
                    if not os.read(wake_read, 512):
                        break
                except BlockingIOError:
                    break
            reap()
        if control not in ready:
            continue
        data, fds, _, _ = socket.recv_fds(control, 1 << 20, 3)
        if not data:  # the owner is gone: so are its runs
            for pid in list(unreaped):
                kill(pid)
            return False
        request = json.loads(data)
        if "kill" in request:
            kill(request["kill"])
            continue
        pid = os.fork()
        if pid == 0:
            become_child(request, fds)
            return True
        unreaped.add(pid)
        for fd in fds:
            os.close(fd)
        send({"spawned": request["id"], "pid": pid})
        reap()


if not serve():
    sys.exit(0)
"""


class ForkedChild:
    """A child of a :class:`Preloaded`, with the parts of :class:`subprocess.Popen` that a
    runner reads: ``pid``, ``stdin``, ``stdout``, ``returncode``, :meth:`poll`,
    :meth:`wait`; :meth:`kill_group` kills it with its process group."""

    def __init__(self, owner: Preloaded, args: list[str], pid: int, stdin: TextIO, stdout: TextIO):
        self.args = args
        self.pid = pid
        self.stdin: TextIO | None = stdin
        self.stdout: TextIO | None = stdout
        self.returncode: int | None = None
        self._owner = owner
        self._exited = threading.Event()

    def _exit(self, code: int) -> None:
        self.returncode = code
        self._exited.set()

    def poll(self) -> int | None:
        """The exit status (negative: the signal that ended it), or ``None`` while it runs."""
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Wait until it exits; ``subprocess.TimeoutExpired`` after ``timeout`` seconds."""
        if not self._exited.wait(timeout):
            raise subprocess.TimeoutExpired(self.args, timeout or 0.0)
        assert self.returncode is not None
        return self.returncode

    def kill_group(self) -> None:
        """SIGKILL it and its process group (if not yet reaped), then wait for its exit."""
        if self.returncode is None:
            self._owner._send({"kill": self.pid})
        self.wait()


class Preloaded:
    """An interpreter ``python`` started with ``env`` that imports :data:`HEAVY`, then forks a
    child per :meth:`spawn`. Use it as a context manager, or :meth:`close` it: its children
    still running are killed then.

    With ``client=True`` it imports pyspark's Spark Connect client (:data:`CLIENT`) too, for
    programs that do not depend on the order in which pyspark and this package are imported:
    upstream's runs, where ``PYSPARK_SAFESTOP=0`` makes importing the package a no-op. It
    refuses to serve if that import loaded this package or started a thread (a forked child
    would not have it).
    """

    def __init__(
        self,
        python: str = sys.executable,
        env: Mapping[str, str] | None = None,
        *,
        client: bool = False,
    ):
        self.python = python
        self._folder = tempfile.TemporaryDirectory(prefix="safestop-preloaded-")
        script = Path(self._folder.name) / "preloaded.py"
        script.write_text(_SERVE)
        self._log = Path(self._folder.name) / "stderr"
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._socket = mine
        self._lock = threading.Lock()
        self._next_id = 0
        self._waiting: dict[int, tuple[threading.Event, list[int]]] = {}
        self._children: dict[int, ForkedChild] = {}
        self._early_exits: dict[int, int] = {}
        self._gone = threading.Event()
        with self._log.open("w") as log, theirs:
            self._process = subprocess.Popen(
                [
                    python,
                    str(script),
                    str(theirs.fileno()),
                    json.dumps(HEAVY),
                    json.dumps(CLIENT if client else ()),
                ],
                pass_fds=[theirs.fileno()],
                env=dict(env if env is not None else os.environ),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                start_new_session=True,
            )
        threading.Thread(target=self._read, name="safestop-preloaded", daemon=True).start()

    def _send(self, message: Mapping[str, Any], fds: Sequence[int] = ()) -> None:
        with contextlib.suppress(OSError):
            socket.send_fds(self._socket, [json.dumps(message).encode()], list(fds))

    def _read(self) -> None:
        while True:
            try:
                data = self._socket.recv(1 << 16)
            except OSError:
                data = b""
            if not data:
                break
            message = json.loads(data)
            with self._lock:
                if "spawned" in message:
                    done, box = self._waiting.pop(message["spawned"])
                    box.append(message["pid"])
                    done.set()
                elif "exited" in message:
                    child = self._children.pop(message["exited"], None)
                    if child is None:  # it ended before spawn() had registered it
                        self._early_exits[message["exited"]] = message["code"]
                    else:
                        child._exit(message["code"])
        with self._lock:
            self._gone.set()
            for done, _ in self._waiting.values():
                done.set()

    def spawn(
        self,
        module: str,
        args: Sequence[str],
        *,
        env: Mapping[str, str],
        stderr: int,
        cwd: str | None = None,
        timeout: float = 120.0,
    ) -> ForkedChild:
        """Fork a child running ``python -m module *args`` with ``env``, its standard error on
        the file descriptor ``stderr``, its standard input and output pipes to this process.

        Raises ``RuntimeError`` (with the preloading interpreter's own error output) when
        that interpreter is gone or does not answer within ``timeout`` seconds.
        """
        stdin_read, stdin_write = os.pipe()
        stdout_read, stdout_write = os.pipe()
        done = threading.Event()
        box: list[int] = []
        with self._lock:
            if self._gone.is_set():  # nothing would ever answer this request
                os.close(stdin_read)
                os.close(stdin_write)
                os.close(stdout_read)
                os.close(stdout_write)
                raise RuntimeError(f"the preloaded interpreter is gone:\n{self._tail()}")
            self._next_id += 1
            request_id = self._next_id
            self._waiting[request_id] = (done, box)
        request = {"id": request_id, "module": module, "args": list(args), "env": dict(env)}
        if cwd is not None:
            request["cwd"] = cwd
        try:
            self._send(request, (stdin_read, stdout_write, stderr))
        finally:
            os.close(stdin_read)
            os.close(stdout_write)
        if not done.wait(timeout) or not box:
            os.close(stdin_write)
            os.close(stdout_read)
            with self._lock:
                self._waiting.pop(request_id, None)
            raise RuntimeError(f"the preloaded interpreter did not start a child:\n{self._tail()}")
        command = [self.python, "-m", module, *args]
        # Owned by the child object from here on, closed by its runner, as Popen's are.
        stdin = open(stdin_write, "w")  # noqa: SIM115
        stdout = open(stdout_read, encoding="utf-8")  # noqa: SIM115
        child = ForkedChild(self, command, box[0], stdin, stdout)
        with self._lock:
            if box[0] in self._early_exits:
                child._exit(self._early_exits.pop(box[0]))
            else:
                self._children[box[0]] = child
        return child

    def _tail(self) -> str:
        with contextlib.suppress(OSError):
            return self._log.read_text(errors="replace")[-3000:]
        return ""

    def close(self) -> None:
        """End the preloading interpreter; its children still running are killed."""
        with contextlib.suppress(OSError):
            self._socket.shutdown(socket.SHUT_RDWR)
        try:
            self._process.wait(30)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._socket.close()
        self._folder.cleanup()

    def __enter__(self) -> Preloaded:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
