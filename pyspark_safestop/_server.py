"""A real, local Spark Connect server (a JVM) that only its owner can use and never outlives it.

The server is launched through ``spark-submit``, so it behaves like a production Spark Connect
server; what differs is what a shared machine needs:

- **Owner only.** Each server checks a fresh random token (``secrets``, 256 bits). The JVM gets
  it in its environment (``SPARK_CONNECT_AUTHENTICATE_TOKEN``), never on a command line, which
  every user can read; it is in no log and no ``repr``. :attr:`SparkConnectServer.url` carries
  it: ``sc://localhost:PORT/;token=...``, which 4.0+ clients send over gRPC local credentials
  (3.5 needs :func:`pyspark_safestop._layouts.session_builder`).
- **Never outliving its owner.** The JVM runs under a small launcher (:mod:`._launcher`) that
  stops it when a pipe from this process reaches end of file, which the kernel guarantees when
  this process dies, SIGKILL included; the JVM dies with the launcher (``PR_SET_PDEATHSIG``).
- **Loopback only.** gRPC, the driver and (when enabled) the UI bind 127.0.0.1, whatever
  ``SPARK_LOCAL_IP`` says; the port is chosen by the OS; ``[::1]:PORT``, where ``localhost``
  may also lead, is held by this process so that no one else can listen there.
- **Private files.** The JVM works in a fresh 0700 folder, removed at the end; the log is
  created 0600 and never through a symbolic link.

Nothing here imports pyspark: the Spark installation is found on disk, so this module also works
where only the thin ``pyspark-client`` is installed, given a full Spark distribution in
``SPARK_HOME`` or ``PYSPARK_SAFESTOP_SPARK_HOME``.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import re
import secrets
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
from pathlib import Path
from types import TracebackType

from ._layouts import pyspark_package_dirs
from ._settings import validate_timeout

__all__ = [
    "FORCED_CONF",
    "SparkConnectServer",
    "find_spark_home",
    "java_available",
    "open_private_log",
]

logger = logging.getLogger("pyspark_safestop")

#: Main class of the Spark Connect server inside ``spark-connect_*.jar``.
_SERVER_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"
#: The address every listener binds; ``localhost`` in the URL names it.
BIND_HOST = "127.0.0.1"
#: Where the JVM reads the token: an environment variable, never a command-line argument.
TOKEN_ENV = "SPARK_CONNECT_AUTHENTICATE_TOKEN"
_TOKEN_CONF = "spark.connect.authenticate.token"
_LAUNCHER = Path(__file__).with_name("_launcher.py")

#: Confs that decide where the server listens; an ``extra_conf`` cannot change them.
FORCED_CONF = {
    "spark.connect.grpc.binding.address": BIND_HOST,
    "spark.driver.bindAddress": BIND_HOST,
    "spark.driver.host": BIND_HOST,
}

#: Spark 4.x logs e.g. ``Spark Connect server started at: 127.0.0.1:45051``; older releases an
#: ``InetSocketAddress`` (``/127.0.0.1:15002``), so only the trailing ``:PORT`` is significant.
_STARTED_RE = re.compile(r"Spark Connect server started at:?\s*(?P<addr>\S*):(?P<port>\d+)\s*$")

#: How many log lines a start failure quotes in its exception message.
_FAILURE_TAIL_LINES = 60
#: How much of the end of the log :meth:`SparkConnectServer.log_tail` reads, in bytes.
_TAIL_BYTES = 256 * 1024
#: Seconds the launcher may need beyond the stop grace period before it is killed.
_LAUNCHER_SLACK = 10.0


def _valid_spark_home(candidate: Path) -> bool:
    # pyspark-client also installs a `pyspark` package, without bin/ and jars/.
    if not (candidate / "bin" / "spark-submit").is_file():
        return False
    return any((candidate / "jars").glob("spark-connect_*.jar"))


def find_spark_home(explicit: str | None = None) -> Path | None:
    """Return a Spark distribution able to run a Spark Connect server, or ``None``.

    Candidates, in order: ``explicit``, ``$PYSPARK_SAFESTOP_SPARK_HOME``, the folder of the
    installed ``pyspark`` package (the full ``pyspark`` wheels ship ``bin/`` and ``jars/``),
    ``$SPARK_HOME``. A candidate is valid if it has ``bin/spark-submit`` and
    ``jars/spark-connect_*.jar``; the first valid one is returned, resolved.
    """
    candidates: list[Path] = []
    if explicit:
        candidates.append(Path(explicit))
    env_home = os.environ.get("PYSPARK_SAFESTOP_SPARK_HOME")
    if env_home:
        candidates.append(Path(env_home))
    candidates.extend(Path(folder) for folder in pyspark_package_dirs())
    spark_home = os.environ.get("SPARK_HOME")
    if spark_home:
        candidates.append(Path(spark_home))
    for raw in candidates:
        candidate = raw.expanduser()
        if _valid_spark_home(candidate):
            return candidate.resolve()
        logger.debug("not a usable Spark home (no spark-submit or spark-connect jar): %s", raw)
    return None


def java_available() -> bool:
    """Return whether a ``java`` executable can be found, as ``bin/spark-class`` looks for it
    (``$JAVA_HOME/bin/java``, else ``PATH``)."""
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        java = Path(java_home) / "bin" / "java"
        if java.is_file() and os.access(java, os.X_OK):
            return True
    return shutil.which("java") is not None


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


def _reserve_ipv6_loopback(port: int) -> socket.socket | None:
    """Hold ``[::1]:PORT`` (bound, never listening) so that no one else can listen there.

    gRPC may try ``[::1]`` first for ``localhost``: a listener of another user there would
    receive the token. Returns ``None`` where IPv6 loopback does not exist (no one can listen
    there either); raises ``RuntimeError`` when another process already holds it.
    """
    try:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    except OSError:
        return None
    try:
        sock.bind(("::1", port))
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            raise RuntimeError(
                f"another process holds [::1]:{port}, where clients of localhost:{port} may "
                "connect: the server is not handed out"
            ) from None
        return None
    return sock


def _forget_in_child(server: weakref.ReferenceType[SparkConnectServer]) -> None:
    alive = server()
    if alive is not None:
        alive._forget()


class SparkConnectServer:
    """A local Spark Connect server, usable as a context manager::

        with SparkConnectServer(home) as server:
            spark = _layouts.session_builder(server.url).create()

    Only its owner can use it (see the module's description); it is stopped by ``stop()``, at
    the end of the ``with`` block, or, when this process ends in any way, by its launcher.
    """

    def __init__(
        self,
        spark_home: Path,
        *,
        log_path: Path | None = None,
        start_timeout: float = 120.0,
        extra_conf: Mapping[str, str] | None = None,
        stop_grace: float = 10.0,
    ) -> None:
        """Configure the server (it is started by :meth:`start`).

        ``log_path`` receives the server's output (default: a file in its private working
        folder, removed at stop). ``start_timeout``: seconds to wait for it to accept
        connections. ``extra_conf``: more Spark confs, overriding the defaults, except the
        addresses it binds and its token (``ValueError``). ``stop_grace``: seconds between
        SIGTERM and SIGKILL at stop.
        """
        conf = dict(extra_conf or {})
        for key, value in conf.items():
            if key == _TOKEN_CONF:
                raise ValueError(f"{key} cannot be set: every server gets its own token")
            if key in FORCED_CONF and value != FORCED_CONF[key]:
                raise ValueError(f"{key}={value!r}: the server binds {BIND_HOST} only")
        self._spark_home = Path(spark_home)
        self._log_path = None if log_path is None else Path(log_path)
        self._temporary_log = log_path is None
        self._start_timeout = validate_timeout(start_timeout, "start_timeout")
        self._stop_grace = validate_timeout(stop_grace, "stop_grace")
        self._extra_conf = conf
        self._token: str | None = None
        self._launcher: subprocess.Popen[bytes] | None = None
        self._workdir: Path | None = None
        self._log_fd: int | None = None
        self._ipv6_guard: socket.socket | None = None
        self._pid: int | None = None
        self._port: int | None = None

    # -- what it hands out --------------------------------------------------------------------

    @property
    def port(self) -> int:
        """TCP port of the gRPC endpoint (once started)."""
        if self._port is None:
            raise RuntimeError("Spark Connect server is not started")
        return self._port

    @property
    def address(self) -> str:
        """``127.0.0.1:PORT``: where it listens (connecting needs :attr:`token` too)."""
        return f"{BIND_HOST}:{self.port}"

    @property
    def token(self) -> str:
        """The secret a client must send (as ``Authorization: Bearer TOKEN``), new at each start."""
        if self._token is None:
            raise RuntimeError("Spark Connect server is not started")
        return self._token

    @property
    def url(self) -> str:
        """``sc://localhost:PORT/;token=TOKEN``, for ``SparkSession.builder.remote()``.

        ``localhost``: 4.0+ clients send a token over a plain local channel to that host only.
        """
        return f"sc://localhost:{self.port}/;token={self.token}"

    @property
    def pid(self) -> int:
        """PID of the server process (the JVM: ``spark-submit`` execs it), once started."""
        if self._pid is None:
            raise RuntimeError("Spark Connect server is not started")
        return self._pid

    @property
    def log_path(self) -> Path:
        """The file holding the server's output (in the private folder unless chosen)."""
        if self._log_path is None:
            raise RuntimeError("Spark Connect server is not started and has no log file chosen")
        return self._log_path

    @property
    def log_is_temporary(self) -> bool:
        """Whether the log is removed at stop (no ``log_path`` was chosen)."""
        return self._temporary_log

    @property
    def running(self) -> bool:
        """Whether the server is alive (its launcher exits when it does)."""
        return self._launcher is not None and self._launcher.poll() is None

    def log_tail(self, n: int = 80) -> str:
        """Return the last ``n`` lines of the server's log ('' when there is none)."""
        data = b""
        try:
            if self._log_fd is not None:
                size = os.fstat(self._log_fd).st_size
                start = max(0, size - _TAIL_BYTES)
                data = os.pread(self._log_fd, size - start, start)
            elif self._log_path is not None and not self._temporary_log:
                with open(self._log_path, "rb") as handle:
                    handle.seek(0, os.SEEK_END)
                    handle.seek(max(0, handle.tell() - _TAIL_BYTES))
                    data = handle.read()
        except OSError:
            return ""
        return "\n".join(data.decode("utf-8", errors="replace").splitlines()[-n:])

    # -- lifecycle ------------------------------------------------------------------------------

    def _command(self, workdir: Path) -> list[str]:
        confs = {
            # Port 0: the OS picks a free port, read back from the log: no collision, no race.
            "spark.connect.grpc.binding.port": "0",
            "spark.ui.enabled": "false",
            # Spark's scratch folders inside the private folder, removed with it.
            "spark.local.dir": str(workdir),
        }
        confs.update(self._extra_conf)
        confs.update(FORCED_CONF)
        command = [
            str(self._spark_home / "bin" / "spark-submit"),
            "--class",
            _SERVER_CLASS,
            "--master",
            "local[2]",
            "--driver-memory",
            "1g",
        ]
        # No primary resource (as sbin/start-connect-server.sh): the class is in jars/.
        for key, value in confs.items():
            command += ["--conf", f"{key}={value}"]
        return command

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env["SPARK_HOME"] = str(self._spark_home)
        # Forced, not defaulted: an inherited SPARK_LOCAL_IP=0.0.0.0 would put the UI, and
        # whatever else reads it, on every interface.
        env["SPARK_LOCAL_IP"] = BIND_HOST
        env.pop("SPARK_LOCAL_HOSTNAME", None)
        env[TOKEN_ENV] = self.token
        return env

    def start(self) -> SparkConnectServer:
        """Launch the server and wait until it accepts connections; return ``self``.

        Raises ``RuntimeError`` (with the tail of the log) when it is already started, Java is
        missing, the server exits or does not start within ``start_timeout``; ``ValueError``
        for a log file that is refused. Whatever interrupts it, nothing is left running.
        """
        if self._launcher is not None:
            raise RuntimeError("Spark Connect server already started")
        if not java_available():
            raise RuntimeError(
                "cannot start a Spark Connect server: no java (set JAVA_HOME or put java on PATH)"
            )
        t0 = time.monotonic()
        self._token = secrets.token_urlsafe(32)
        try:
            self._workdir = Path(tempfile.mkdtemp(prefix="pyspark-safestop-server-"))
            if self._temporary_log:
                self._log_path = self._workdir / "server.log"
            self._log_fd = open_private_log(self.log_path)
            command = self._command(self._workdir)
            logger.info("starting Spark Connect server: %s", " ".join(command))
            launch = [sys.executable, "-I", "-S", str(_LAUNCHER), str(self._stop_grace)]
            self._launcher = subprocess.Popen(
                [*launch, str(self._workdir), "--", *command],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._log_fd,
                env=self._environment(),
                cwd=self._workdir,
                # Its own session: a Ctrl-C in the terminal reaches the owner, which stops the
                # server in order, not the launcher.
                start_new_session=True,
            )
            # A forked child must not keep the pipe open: the server would outlive the owner.
            os.register_at_fork(
                after_in_child=functools.partial(_forget_in_child, weakref.ref(self))
            )
            self._pid = self._read_pid()
            self._port = self._wait_for_port(t0)
            self._ipv6_guard = _reserve_ipv6_loopback(self._port)
        except BaseException:
            # KeyboardInterrupt included: never leave a half-started server behind.
            self.stop()
            raise
        logger.info(
            "Spark Connect server pid=%d listening on %s after %.1fs",
            self._pid,
            self.address,
            time.monotonic() - t0,
        )
        return self

    def _read_pid(self) -> int:
        assert self._launcher is not None
        assert self._launcher.stdout is not None
        line = self._launcher.stdout.readline()
        self._launcher.stdout.close()
        try:
            return int(line)
        except ValueError:
            raise RuntimeError(
                f"the Spark Connect server could not be launched (log: {self.log_path}):\n"
                f"{self.log_tail(_FAILURE_TAIL_LINES)}"
            ) from None

    def _wait_for_port(self, t0: float) -> int:
        assert self._launcher is not None
        assert self._log_fd is not None
        deadline = t0 + self._start_timeout
        offset = 0
        pending = b""
        while True:
            chunk = os.pread(self._log_fd, 1 << 20, offset)
            offset += len(chunk)
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop()  # perhaps an incomplete line
            for raw in lines:
                match = _STARTED_RE.search(raw.decode("utf-8", errors="replace"))
                if match:
                    return int(match.group("port"))
            if chunk:
                continue
            code = self._launcher.poll()
            if code is not None:
                raise RuntimeError(
                    f"the Spark Connect server exited with code {code} while starting "
                    f"(log: {self.log_path}):\n{self.log_tail(_FAILURE_TAIL_LINES)}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"the Spark Connect server did not start within {self._start_timeout:g} s "
                    f"(log: {self.log_path}):\n{self.log_tail(_FAILURE_TAIL_LINES)}"
                )
            time.sleep(0.1)

    def stop(self) -> None:
        """Stop the server: SIGTERM to its process group, SIGKILL after the grace period.

        SIGTERM lets Spark's shutdown hooks run. The launcher does it when its pipe from this
        process closes; the private folder (and a temporary log) is removed. Idempotent; safe
        on a server never started.
        """
        launcher, self._launcher = self._launcher, None
        if launcher is not None:
            if launcher.poll() is None:
                logger.info("stopping Spark Connect server pid=%s", self._pid)
            if launcher.stdin is not None:
                launcher.stdin.close()  # end of file: the launcher stops the server
            try:
                launcher.wait(self._stop_grace + _LAUNCHER_SLACK)
            except subprocess.TimeoutExpired:
                logger.warning(
                    "the launcher of Spark Connect server pid=%s did not stop it in %.0f s; "
                    "killing it (the server dies with it)",
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

    def __enter__(self) -> SparkConnectServer:
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
        return f"<SparkConnectServer {self._spark_home} {state}>"
