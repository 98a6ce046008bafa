"""What every local server engine shares: one process, run through the launcher, owner's only.

:class:`LocalServer` runs a server command under :mod:`._launcher` and gives it the guarantees
a shared machine needs, whatever the engine (Spark in :mod:`._server`, Sail in :mod:`._sail`):

- **Never outliving its owner.** The launcher stops the server when a pipe from this process
  reaches end of file, which the kernel guarantees when this process dies, SIGKILL included; the
  server dies with the launcher (``PR_SET_PDEATHSIG``). A forked child lets go of its copy.
- **Loopback only.** The engine binds :data:`BIND_HOST`; the port is chosen by the OS and read
  back from the server's log; ``[::1]:PORT``, where ``localhost`` may also lead, is held by this
  process so that no one else can listen there.
- **Private files.** The server works in a fresh 0700 folder, removed at the end; the log is
  created 0600 and never through a symbolic link.

An engine subclass says how to run it (:meth:`LocalServer._command`,
:meth:`LocalServer._environment`), how its log names the port (``_started_re``), and its URL.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import logging
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Protocol, TypeVar

from .._settings import validate_timeout
from ..ports import hold_ipv6_loopback

__all__ = [
    "BIND_HOST",
    "EngineUnavailable",
    "LocalServer",
    "RunningServer",
    "ServerRequest",
    "conf_shown",
    "open_private_log",
]

logger = logging.getLogger("pyspark_safestop")

#: The address every listener binds; ``localhost`` in the URL names it.
BIND_HOST = "127.0.0.1"
_LAUNCHER = Path(__file__).with_name("_launcher.py")

#: How many log lines a start failure quotes in its exception message.
_FAILURE_TAIL_LINES = 60
#: How much of the end of the log :meth:`LocalServer.log_tail` reads, in bytes.
_TAIL_BYTES = 256 * 1024
#: Seconds the launcher may need beyond the stop grace period before it is killed.
_LAUNCHER_SLACK = 10.0

_Self = TypeVar("_Self", bound="LocalServer")


def open_private_log(path: Path) -> int:
    """Open ``path`` for a server's log, truncated, readable by its owner only; return the fd.

    Never follows a symbolic link, and refuses a file that is not a regular file of this user
    (a planted file must not be truncated, nor receive our log): ``ValueError`` naming the path.
    The descriptor is readable too (the log's tail is read through it) and not inherited.
    """
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise ValueError(f"log file {str(path)!r} is a symbolic link: refusing it") from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"log file {str(path)!r} is not a regular file: refusing it")
        if info.st_uid != os.geteuid() or info.st_nlink != 1:
            raise ValueError(
                f"log file {str(path)!r} belongs to another user or has other names: refusing it"
            )
        os.set_blocking(fd, True)
        os.ftruncate(fd, 0)
        os.fchmod(fd, 0o600)
    except BaseException:
        os.close(fd)
        raise
    return fd


def conf_shown(conf: Mapping[str, str], secret: re.Pattern[str]) -> str:
    """``conf`` as one line of sorted ``KEY=VALUE``, the value of a key matching ``secret``
    replaced by a digest of it (enough to tell two apart, nothing to read)."""
    shown = []
    for key in sorted(conf):
        value = conf[key]
        if secret.search(key):
            value = "sha256:" + hashlib.sha256(value.encode()).hexdigest()[:12]
        shown.append(f"{key}={value}")
    return " ".join(shown)


def tail_lines(fd: int, n: int) -> str:
    """The last ``n`` lines of the file open at ``fd`` (its last 256 KiB at most), as text; ''
    when it cannot be read. The one reader of a server's log tail."""
    try:
        size = os.fstat(fd).st_size
        start = max(0, size - _TAIL_BYTES)
        data = os.pread(fd, size - start, start)
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", errors="replace").splitlines()[-n:])


def log_tail_of(path: Path, n: int) -> str:
    """The last ``n`` lines of the log at ``path`` (a symbolic link is not followed); ''
    when it cannot be read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return ""
    try:
        return tail_lines(fd, n)
    finally:
        os.close(fd)


def _accepts(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((BIND_HOST, port), timeout=1.0):
        return True
    return False


def spawn_launcher(
    command: list[str], *, workdir: Path, stderr: int, env: dict[str, str], grace: float
) -> subprocess.Popen[bytes]:
    """Start the launcher of ``command`` (see ``_launcher.py``): its stdin and stdout are pipes
    to this process, ``stderr`` is the log.

    Without fork(): no ``cwd``, no new session (the launcher makes both itself) and no
    closing of descriptors (the launcher closes all but its three) let subprocess use
    posix_spawn. A fork runs gRPC's fork handlers, which in an owner where gRPC is busy can
    abort or hang the child before it execs; Python 3.9's subprocess would fork here.
    """
    launch = [sys.executable, "-I", "-S", str(_LAUNCHER), str(grace), str(workdir)]
    return subprocess.Popen(
        [*launch, "--", *command],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=stderr,
        env=env,
        close_fds=False,
    )


def _forget_in_child(server: weakref.ReferenceType[LocalServer]) -> None:
    alive = server()
    if alive is not None:
        alive._forget()


@dataclass(frozen=True)
class ServerRequest:
    """What a server is asked for, whatever its engine; each engine takes what applies to it
    and refuses what it cannot honour."""

    #: Where its output goes (default: a file in its private folder, removed at stop).
    log_path: Path | None = None
    #: Seconds it may take to accept connections.
    start_timeout: float = 120.0
    #: Spark confs for Spark, ``SAIL_*`` settings for Sail.
    conf: Mapping[str, str] | None = None
    #: The Spark distribution or pyspark folder with the jars (Spark).
    spark_home: str | None = None
    #: The ``sail`` executable (Sail).
    sail_executable: str | None = None
    #: Where a Spark server's executors run (default ``local[2]``; Sail refuses one).
    master: str | None = None


class RunningServer(Protocol):
    """What a user of a running server sees, whoever started it: this process
    (:class:`LocalServer`) or the run's host (the shared server). The fixture
    ``spark_connect_server`` yields one."""

    @property
    def url(self) -> str:
        """The ``sc://`` URL a client connects with (a Spark server's carries its token)."""

    @property
    def engine(self) -> str:
        """The engine's name ("spark", "sail")."""

    @property
    def authenticated(self) -> bool:
        """Whether it refuses clients without its secret."""

    @property
    def pid(self) -> int:
        """The server process."""

    @property
    def port(self) -> int:
        """Where it listens on 127.0.0.1."""

    @property
    def log_path(self) -> Path:
        """Its log, readable by its owner only."""

    def log_tail(self, n: int = 80) -> str:
        """The last ``n`` lines of its log."""


class EngineUnavailable(RuntimeError):
    """The engine cannot run here; the message says what is missing and how to get it."""


class LocalServer:
    """A local Spark Connect server process of some engine; see the module's description.

    Usable as a context manager; stopped by ``stop()``, at the end of the ``with`` block, or,
    when this process ends in any way, by its launcher.
    """

    #: The engine's name, as the options spell it ("spark", "sail").
    engine: ClassVar[str] = ""
    #: Whether the server refuses clients without its secret (the URL carries it).
    authenticated: ClassVar[bool] = False
    #: Who can use a server of this engine, as the report header, ``serve`` and ``doctor`` say.
    access: ClassVar[str] = ""
    #: Whether it takes a Spark master (where its executors run).
    has_master: ClassVar[bool] = False
    #: Matches the log line that names the port the server listens on (group ``port``).
    _started_re: ClassVar[re.Pattern[str]] = re.compile(r"$^")
    #: How messages name the server.
    _what: ClassVar[str] = "server"

    def __init__(
        self,
        *,
        log_path: Path | None = None,
        start_timeout: float = 120.0,
        stop_grace: float = 10.0,
    ) -> None:
        """``log_path`` receives the server's output (default: a file in its private working
        folder, removed at stop). ``start_timeout``: seconds to wait for it to accept
        connections. ``stop_grace``: seconds between SIGTERM and SIGKILL at stop."""
        self._log_path = None if log_path is None else Path(log_path)
        self._temporary_log = log_path is None
        self._start_timeout = validate_timeout(start_timeout, "start_timeout")
        self._stop_grace = validate_timeout(stop_grace, "stop_grace")
        self._launcher: subprocess.Popen[bytes] | None = None
        self._workdir: Path | None = None
        self._log_fd: int | None = None
        self._ipv6_guard: socket.socket | None = None
        self._pid: int | None = None
        self._port: int | None = None
        #: The port to bind again at a restart (None: the OS picks one).
        self._restart_port: int | None = None

    # -- what an engine provides ----------------------------------------------------------------

    @classmethod
    def build(cls, request: ServerRequest) -> LocalServer:
        """A server of this engine for ``request``, not started.

        Raises :class:`EngineUnavailable` when the engine cannot run here (the same check as
        :meth:`start`), ``ValueError`` for a setting it refuses (named).
        """
        raise NotImplementedError

    @classmethod
    def python_workers(cls, request: ServerRequest) -> tuple[str, list[str]]:
        """Which interpreter a server of this engine for ``request`` runs Python UDFs in, and
        what keeps them from running there (sentences)."""
        raise NotImplementedError

    def setup(self) -> dict[str, str]:
        """What makes two servers of this engine the same server to a client (installation,
        settings, worker interpreter), as text; a secret's value is shown as its digest. The
        fingerprint of a warm server (:mod:`._warm`)."""
        return {}

    def installation(self) -> Path | None:
        """The installation it runs from (a warm server stops when it disappears)."""
        return None

    def _check_runnable(self) -> None:
        """Raise :class:`EngineUnavailable` naming what is missing to run this engine."""

    def _new_secret(self) -> None:
        """Draw what a client must present, before each start (engines that check one)."""

    def _command(self, workdir: Path) -> list[str]:
        raise NotImplementedError

    def _environment(self) -> dict[str, str]:
        return dict(os.environ)

    @property
    def url(self) -> str:
        """The ``sc://`` URL a client connects with (once started)."""
        raise NotImplementedError

    # -- what it hands out --------------------------------------------------------------------

    @property
    def port(self) -> int:
        """TCP port of the gRPC endpoint (once started)."""
        if self._port is None:
            raise RuntimeError(f"{self._what} is not started")
        return self._port

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``: where it listens."""
        return f"{BIND_HOST}:{self.port}"

    @property
    def pid(self) -> int:
        """PID of the server process, once started."""
        if self._pid is None:
            raise RuntimeError(f"{self._what} is not started")
        return self._pid

    @property
    def log_path(self) -> Path:
        """The file holding the server's output (in the private folder unless chosen)."""
        if self._log_path is None:
            raise RuntimeError(f"{self._what} is not started and has no log file chosen")
        return self._log_path

    @property
    def log_is_temporary(self) -> bool:
        """Whether the log is removed at stop (no ``log_path`` was chosen)."""
        return self._temporary_log

    @property
    def running(self) -> bool:
        """Whether the server is alive (its launcher exits when it does)."""
        return self._launcher is not None and self._launcher.poll() is None

    def death(self) -> str | None:
        """How a started server ended without being stopped (``"killed by SIGKILL"``,
        ``"exited with status 1"``), or ``None`` while it runs or once stopped."""
        if self._launcher is None:
            return None
        code = self._launcher.poll()
        if code is None:
            return None
        # The launcher exits with the server's status, 128 + N for signal N.
        if code > 128 and code - 128 in signal.valid_signals():
            return f"killed by {signal.Signals(code - 128).name}"
        return f"exited with status {code}"

    def log_tail(self, n: int = 80) -> str:
        """Return the last ``n`` lines of the server's log ('' when there is none)."""
        if self._log_fd is not None:
            return tail_lines(self._log_fd, n)
        if self._log_path is not None and not self._temporary_log:
            return log_tail_of(self._log_path, n)
        return ""

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self: _Self) -> _Self:
        """Launch the server and wait until it accepts connections; return ``self``.

        Raises ``RuntimeError`` (with the tail of the log) when it is already started, the
        engine cannot run here, the server exits or does not start within ``start_timeout``;
        ``ValueError`` for a log file that is refused. Whatever interrupts it, nothing is left
        running.
        """
        if self._launcher is not None:
            raise RuntimeError(f"{self._what} already started")
        self._check_runnable()
        t0 = time.monotonic()
        self._new_secret()
        try:
            self._workdir = Path(tempfile.mkdtemp(prefix="pyspark-safestop-server-"))
            if self._temporary_log:
                self._log_path = self._workdir / "server.log"
            self._log_fd = open_private_log(self.log_path)
            command = self._command(self._workdir)
            logger.info("starting %s: %s", self._what, " ".join(command))
            # A forked child must not keep the pipe open: the server would outlive the owner.
            os.register_at_fork(
                after_in_child=functools.partial(_forget_in_child, weakref.ref(self))
            )
            self._pid = self._launch(command)
            self._port = self._wait_for_port(t0)
            self._ipv6_guard = hold_ipv6_loopback(self._port)
        except BaseException:
            # KeyboardInterrupt included: never leave a half-started server behind.
            self.stop()
            raise
        logger.info(
            "%s pid=%d listening on %s after %.1fs",
            self._what,
            self._pid,
            self.address,
            time.monotonic() - t0,
        )
        return self

    def _launch(self, command: list[str]) -> int:
        """Start the launcher; return the server's PID, which it reports."""
        assert self._workdir is not None
        assert self._log_fd is not None
        self._launcher = spawn_launcher(
            command,
            workdir=self._workdir,
            stderr=self._log_fd,
            env=self._environment(),
            grace=self._stop_grace,
        )
        assert self._launcher.stdout is not None
        line = self._launcher.stdout.readline()
        self._launcher.stdout.close()
        try:
            return int(line)
        except ValueError:
            raise RuntimeError(
                f"the {self._what} could not be launched (log: {self.log_path}):\n"
                f"{self.log_tail(_FAILURE_TAIL_LINES)}"
            ) from None

    def restart(self) -> None:
        """Start again a server that died (see :meth:`death`), on the same port, with the
        same secret: its URL stays the same. Its log goes on in the same file.

        Raises ``RuntimeError`` when it was never started, is running, or cannot start again
        (another process took its port, say); whatever interrupts it, nothing is left running.
        """
        if self._launcher is None or self._log_fd is None or self._port is None:
            raise RuntimeError(f"{self._what} is not started")
        if self._launcher.poll() is None:
            raise RuntimeError(f"{self._what} is running")
        t0 = time.monotonic()
        port = self._restart_port = self._port
        # The launcher of the dead server removed its private folder.
        offset = os.fstat(self._log_fd).st_size
        try:
            self._workdir = Path(tempfile.mkdtemp(prefix="pyspark-safestop-server-"))
            command = self._command(self._workdir)
            logger.info("restarting %s on port %d: %s", self._what, port, " ".join(command))
            self._pid = self._launch(command)
            if self._wait_for_port(t0, offset) != port:
                raise RuntimeError(f"the {self._what} did not start on its port {port} again")
        except BaseException:
            self.stop()
            raise
        logger.info(
            "%s pid=%d listening again on %s after %.1fs",
            self._what,
            self._pid,
            self.address,
            time.monotonic() - t0,
        )

    def _wait_for_port(self, t0: float, offset: int = 0) -> int:
        assert self._launcher is not None
        assert self._log_fd is not None
        deadline = t0 + self._start_timeout
        pending = b""
        port: int | None = None
        while True:
            if port is None:
                chunk = os.pread(self._log_fd, 1 << 20, offset)
                offset += len(chunk)
                lines = (pending + chunk).split(b"\n")
                pending = lines.pop()  # perhaps an incomplete line
                for raw in lines:
                    match = self._started_re.search(raw.decode("utf-8", errors="replace"))
                    if match:
                        port = int(match.group("port"))
                        break
                if chunk and port is None:
                    continue
            # Some engines name the port as they bind it: it is ready once it accepts.
            if port is not None and _accepts(port):
                return port
            code = self._launcher.poll()
            if code is not None:
                raise RuntimeError(
                    f"the {self._what} exited with code {code} while starting "
                    f"(log: {self.log_path}):\n{self.log_tail(_FAILURE_TAIL_LINES)}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the {self._what} did not start within {self._start_timeout:g} s "
                    f"(log: {self.log_path}):\n{self.log_tail(_FAILURE_TAIL_LINES)}"
                )
            time.sleep(0.05 if port is not None else 0.1)

    def stop(self) -> None:
        """Stop the server: SIGTERM to its process group, SIGKILL after the grace period.

        The launcher does it when its pipe from this process closes; the private folder (and
        a temporary log) is removed. Idempotent; safe on a server never started.
        """
        launcher, self._launcher = self._launcher, None
        if launcher is not None:
            if launcher.poll() is None:
                logger.info("stopping %s pid=%s", self._what, self._pid)
            if launcher.stdin is not None:
                launcher.stdin.close()  # end of file: the launcher stops the server
            try:
                launcher.wait(self._stop_grace + _LAUNCHER_SLACK)
            except subprocess.TimeoutExpired:
                logger.warning(
                    "the launcher of %s pid=%s did not stop it in %.0f s; "
                    "killing it (the server dies with it)",
                    self._what,
                    self._pid,
                    self._stop_grace + _LAUNCHER_SLACK,
                )
                launcher.send_signal(signal.SIGKILL)  # our unreaped child: its PID is ours
                launcher.wait()
        if self._ipv6_guard is not None:
            self._ipv6_guard.close()
            self._ipv6_guard = None
        if self._log_fd is not None:
            os.close(self._log_fd)
            self._log_fd = None
        if self._workdir is not None:
            shutil.rmtree(self._workdir, ignore_errors=True)
            self._workdir = None
        self._port = None
        self._restart_port = None

    def _forget(self) -> None:
        """In a forked child: let go of the parent's server without touching it."""
        launcher, self._launcher = self._launcher, None
        if launcher is not None and launcher.stdin is not None:
            with contextlib.suppress(OSError):
                launcher.stdin.close()  # the child's copy of the pipe end; nothing is written
        if self._ipv6_guard is not None:
            self._ipv6_guard.close()
            self._ipv6_guard = None
        if self._log_fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._log_fd)
            self._log_fd = None
        self._workdir = None  # the parent's to remove
        self._port = None

    def __enter__(self: _Self) -> _Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid={self._pid} port={self._port}" if self.running else "stopped"
        return f"<{type(self).__name__} {state}>"
