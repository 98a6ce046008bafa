"""Real processes for the port tests: listeners, possibly as another user, ended at teardown.

Also a pytest plugin (registered in ``tests/conftest.py``): the fixtures ``procs`` and
``private_port_leases``.

Every process is started in its own session, so its PID is also its process group. A tracked
process is ended by its process group only while it is still unreaped (a PID, and so the group,
cannot be reused before then), which also ends anything it forked.
"""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from pyspark_safestop.testing import runner
from tests.foreign_user import ForeignUser

HELPERS = Path(__file__).resolve().parent
REPO_ROOT = HELPERS.parents[2]
LISTENER = HELPERS / "listener.py"
ALLOCATOR = HELPERS / "allocator.py"
CLEANUP_TARGET = HELPERS / "cleanup_target.py"
FORKER = HELPERS / "forker.py"

#: Every kill in the tests names the listener's script: if anything else ever listened on a
#: test's port, the call would refuse instead of ending it.
OURS = str(LISTENER)
#: For calls on ports where nothing should listen at all.
NO_SUCH_COMMAND = "no process has this in its command line 7f3c9e"

#: Seconds allowed for a helper to print its first line (generous: CI machines can be slow).
STARTUP_TIMEOUT = 60.0
#: Seconds allowed for a process that was signalled to finish.
EXIT_TIMEOUT = 60.0


def child_env(**extra: str) -> dict[str, str]:
    """The environment for helpers: the repository importable, the shim left inactive.

    The lease directory setting is kept: helpers and tests must see the same leases.
    """
    kept = {k: v for k, v in os.environ.items() if k == "PYSPARK_SAFESTOP_PORT_LEASE_DIR"}
    return runner.child_env(shim=False, extra={**kept, **extra}, inherit_settings=False)


class Child(subprocess.Popen[str]):
    """A helper process whose stdout and stderr are read by threads, so no read can block.

    A reader thread, not ``select()`` on the pipe: the text stream reads ahead, so a line can
    sit in its buffer while the pipe looks empty; and a pipe that a grandchild keeps open
    would block a plain ``read()`` forever.
    """

    def __init__(self, args: list[str], **kwargs: Any) -> None:
        super().__init__(args, **kwargs)
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._stderr: list[str] = []
        self._readers = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read_stdout(self) -> None:
        assert self.stdout is not None
        for line in self.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _read_stderr(self) -> None:
        assert self.stderr is not None
        for line in self.stderr:
            self._stderr.append(line)

    def stderr_text(self, timeout: float = 5.0) -> str:
        """What the process wrote to stderr (waiting up to ``timeout`` s for the pipe to end)."""
        self._readers[1].join(timeout)
        return "".join(self._stderr)

    def read_line(self, timeout: float = STARTUP_TIMEOUT) -> str:
        """The next line printed, failing the test (with stderr) on EOF or timeout.

        On failure the process group is killed at once (its leader still unreaped, so the
        group is certainly ours), and reaped later by :meth:`Processes.close`.
        """
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            line = None
            problem = f"printed nothing within {timeout:.0f}s"
        else:
            problem = "exited without printing it"
        if line is not None:
            return line.strip()
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
        raise AssertionError(f"{self.args!r} {problem}; stderr: {self.stderr_text(timeout=1.0)}")

    def finish(self) -> None:
        """Wait for the readers (the pipes end once every holder exits) and close the pipes."""
        for reader in self._readers:
            reader.join(EXIT_TIMEOUT)
        for stream in (self.stdin, self.stdout, self.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


def read_line(proc: subprocess.Popen[str], timeout: float = STARTUP_TIMEOUT) -> str:
    """The next line ``proc`` (a :class:`Child`) prints; see :meth:`Child.read_line`."""
    assert isinstance(proc, Child)
    return proc.read_line(timeout)


def skip_without_ipv6_loopback() -> None:
    """Skip the test, with the reason, where ``::1`` cannot be bound."""
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError as error:
        pytest.skip(f"no IPv6 loopback: {error}")


def is_gone(pid: int, create_time: float) -> bool:
    """Whether the process identified by ``pid`` and ``create_time`` has ended (zombies count)."""
    try:
        proc = psutil.Process(pid)
        return proc.create_time() != create_time or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_gone(pid: int, create_time: float, timeout: float = EXIT_TIMEOUT) -> bool:
    """Wait until the identified process has ended; return whether it did within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if is_gone(pid, create_time):
            return True
        time.sleep(0.05)
    return is_gone(pid, create_time)


def kill_identified(pid: int, create_time: float) -> None:
    """SIGKILL ``pid`` only if it is still the process that had ``create_time``."""
    with contextlib.suppress(psutil.NoSuchProcess):
        proc = psutil.Process(pid)
        if proc.create_time() == create_time:
            proc.kill()


@dataclass
class Listener:
    """A listener process started by a test."""

    proc: Child
    port: int
    pid: int
    create_time: float

    def alive(self) -> bool:
        return not is_gone(self.pid, self.create_time)

    def wait(self, timeout: float = EXIT_TIMEOUT) -> int:
        """Reap the process and return its exit status (negative: the signal that ended it)."""
        return self.proc.wait(timeout=timeout)


class Processes:
    """Starts helper processes and ends all of them, and only them, at teardown."""

    def __init__(self) -> None:
        self._procs: list[Child] = []

    def start(self, args: Sequence[str], *, env: dict[str, str] | None = None) -> Child:
        proc = Child(
            list(args),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env if env is not None else child_env(),
            cwd=REPO_ROOT,
            start_new_session=True,
        )
        self._procs.append(proc)
        return proc

    def listener(
        self,
        *options: str,
        host: str = "127.0.0.1",
        port: int = 0,
        user: ForeignUser | None = None,
    ) -> Listener:
        """Start ``listener.py`` (port 0: the OS picks) and wait until it listens.

        With ``user``, the listener runs as that user from a readable copy of the script:
        the checkout itself may sit in a folder only its owner can enter.
        """
        arguments = ["--host", host, "--port", str(port), *options]
        if user is None:
            proc = self.start([sys.executable, "-I", "-S", str(LISTENER), *arguments])
        else:
            script = user.stage / LISTENER.name
            if not script.exists():
                user.copy(LISTENER)
            # -I -S: standard library only, nothing of this user's environment needed.
            argv = [user.python, "-I", "-S", str(script), *arguments]
            proc = self.start(user.command(argv), env=user.env())
        line = read_line(proc)
        word, port_text, pid_text = line.split()
        assert word == "PORT", line
        pid = int(pid_text)
        return Listener(proc, int(port_text), pid, psutil.Process(pid).create_time())

    def close(self) -> None:
        for proc in self._procs:
            # returncode None: not reaped yet, so its PID (= its process group) is still ours.
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=EXIT_TIMEOUT)
            proc.finish()


@pytest.fixture(scope="module")
def private_port_leases(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Point the lease directory (here and in helpers) at a fresh one for a test module.

    Another test run on the same machine shares the user's default directory: it could lease
    a port a test has just released and expects to find free.
    """
    path = tmp_path_factory.mktemp("port-leases") / "ports"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYSPARK_SAFESTOP_PORT_LEASE_DIR", str(path))
        yield path


@pytest.fixture
def procs() -> Iterator[Processes]:
    """A :class:`Processes` whose processes are all ended at teardown."""
    tracked = Processes()
    try:
        yield tracked
    finally:
        tracked.close()
