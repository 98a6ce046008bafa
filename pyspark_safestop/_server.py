"""Start and stop a real, local Spark Connect server (a JVM) for tests.

The server is launched through ``spark-submit`` so that it behaves exactly
like a production Spark Connect server; only the network side is made
test-friendly (loopback only, port chosen by the OS, no UI).

Nothing here imports :mod:`pyspark`: the Spark installation is located on
disk, so this module also works in environments that only have the thin
``pyspark-client`` package (as long as a full Spark distribution is
reachable via ``SPARK_HOME`` or ``PYSPARK_SAFESTOP_SPARK_HOME``).
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import logging
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType

__all__ = [
    "SparkConnectServer",
    "find_spark_home",
    "java_available",
]

_log = logging.getLogger("pyspark_safestop")

#: Main class of the Spark Connect server inside ``spark-connect_*.jar``.
_SERVER_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"

#: Spark 4.x logs e.g. ``Spark Connect server started at: 127.0.0.1:45051``.
#: Older releases print a ``java.net.InetSocketAddress`` (``/127.0.0.1:15002``,
#: ``localhost/127.0.0.1:15002``) and a wildcard bind may show up as ``[::]``
#: or ``0:0:0:0:0:0:0:0``; so the address part is free-form and only the
#: trailing ``:PORT`` is significant.
_STARTED_RE = re.compile(r"Spark Connect server started at:?\s*(?P<addr>\S*):(?P<port>\d+)\s*$")

#: How many log lines a start failure quotes in its exception message.
_FAILURE_TAIL_LINES = 60


def _valid_spark_home(candidate: Path) -> bool:
    """Whether ``candidate`` can run a Spark Connect server.

    ``pyspark-client`` also installs a ``pyspark`` package, but without
    ``bin/`` and ``jars/``, so both are checked explicitly.
    """
    if not (candidate / "bin" / "spark-submit").is_file():
        return False
    return any((candidate / "jars").glob("spark-connect_*.jar"))


def _pyspark_package_dirs() -> Iterator[Path]:
    """Folders of the installed ``pyspark`` package, found without importing it.

    Importing pyspark is slow and may have side effects (and the caller may
    want to pick a different version than the one importable here).
    """
    try:
        spec = importlib.util.find_spec("pyspark")
    except (ImportError, ValueError):
        # ValueError: "pyspark.__spec__ is None" when a weird module object
        # is already in sys.modules; treat it like "not installed".
        return
    if spec is None or not spec.submodule_search_locations:
        return
    for location in spec.submodule_search_locations:
        yield Path(location)


def find_spark_home(explicit: str | None = None) -> Path | None:
    """Locate a Spark distribution able to run a Spark Connect server.

    Candidates, in order: ``explicit``, ``$PYSPARK_SAFESTOP_SPARK_HOME``, the
    folder of the installed ``pyspark`` package (full ``pyspark`` wheels ship
    ``bin/`` and ``jars/``), ``$SPARK_HOME``. A candidate is valid if it has
    ``bin/spark-submit`` and ``jars/spark-connect_*.jar``.

    Returns:
        The first valid candidate (resolved), or ``None``.
    """
    candidates: list[Path] = []
    if explicit:
        candidates.append(Path(explicit))
    env_home = os.environ.get("PYSPARK_SAFESTOP_SPARK_HOME")
    if env_home:
        candidates.append(Path(env_home))
    candidates.extend(_pyspark_package_dirs())
    spark_home = os.environ.get("SPARK_HOME")
    if spark_home:
        candidates.append(Path(spark_home))

    for raw in candidates:
        candidate = raw.expanduser()
        if _valid_spark_home(candidate):
            return candidate.resolve()
        _log.debug("not a usable Spark home (no spark-submit / spark-connect jar): %s", candidate)
    return None


def java_available() -> bool:
    """Whether a ``java`` executable can be found (``$JAVA_HOME`` or ``PATH``).

    This mirrors how ``bin/spark-class`` picks its JVM.
    """
    java_home = os.environ.get("JAVA_HOME")
    if java_home:
        java = Path(java_home) / "bin" / "java"
        if java.is_file() and os.access(java, os.X_OK):
            return True
    return shutil.which("java") is not None


def _process_name(pid: int) -> str | None:
    """Executable name of ``pid`` (Linux ``/proc`` only; ``None`` elsewhere)."""
    try:
        return Path(f"/proc/{pid}/comm").read_text(encoding="utf-8").strip()
    except OSError:
        return None


def _format_host(host: str) -> str:
    """Bracket IPv6 literals so that ``host:port`` stays unambiguous."""
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


class SparkConnectServer:
    """A local Spark Connect server process, usable as a context manager.

    Example::

        with SparkConnectServer(home, log_path=tmp / "server.log") as srv:
            spark = SparkSession.builder.remote(srv.url).create()

    The process is started in its own session (so it is the leader of its own
    process group) and is only ever stopped through its own PID / process
    group, never by name, so concurrent servers and unrelated JVMs are safe.
    """

    def __init__(
        self,
        spark_home: Path,
        *,
        log_path: Path,
        host: str = "127.0.0.1",
        start_timeout: float = 120.0,
        extra_conf: Mapping[str, str] | None = None,
    ) -> None:
        """Configure (but do not start) the server.

        Args:
            spark_home: Spark distribution, see :func:`find_spark_home`.
            log_path: File receiving the server's stdout and stderr.
            host: Address the server (gRPC and driver) binds to.
            start_timeout: Seconds to wait for the "server started" log line.
            extra_conf: Additional ``--conf key=value`` settings; they are
                passed after the defaults and therefore override them.
        """
        self._spark_home = Path(spark_home)
        self._log_path = Path(log_path)
        self._host = host
        self._start_timeout = start_timeout
        self._extra_conf: dict[str, str] = dict(extra_conf or {})
        self._proc: subprocess.Popen[bytes] | None = None
        self._port: int | None = None
        # Whether the child leads its own process group (decided right after
        # spawning, while its PID is certainly still ours).
        self._own_group = False

    # -- properties ---------------------------------------------------------

    @property
    def port(self) -> int:
        """TCP port of the gRPC endpoint (only valid after :meth:`start`)."""
        if self._port is None:
            raise RuntimeError("Spark Connect server is not started")
        return self._port

    @property
    def url(self) -> str:
        """Connection string for ``SparkSession.builder.remote()``."""
        return f"sc://{_format_host(self._host)}:{self.port}"

    @property
    def pid(self) -> int:
        """PID of the server process (the JVM, since spark-submit execs java)."""
        if self._proc is None:
            raise RuntimeError("Spark Connect server is not started")
        return self._proc.pid

    @property
    def log_path(self) -> Path:
        """File holding the server's combined stdout/stderr."""
        return self._log_path

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def log_tail(self, n: int = 80) -> str:
        """Last ``n`` lines of the server log ('' if there is no log yet)."""
        try:
            text = self._log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-n:])

    # -- lifecycle ----------------------------------------------------------

    def _command(self) -> list[str]:
        """The ``spark-submit`` command line."""
        confs = {
            # Port 0: let the OS pick a free port, so parallel test runs and
            # leftover servers never collide; the real port is read from the log.
            "spark.connect.grpc.binding.port": "0",
            "spark.connect.grpc.binding.address": self._host,
            # Keep the driver's own RPC/block-manager endpoints on loopback too.
            "spark.driver.bindAddress": self._host,
            "spark.driver.host": self._host,
            "spark.ui.enabled": "false",
        }
        confs.update(self._extra_conf)
        cmd = [
            str(self._spark_home / "bin" / "spark-submit"),
            "--class",
            _SERVER_CLASS,
            "--master",
            "local[2]",
            "--driver-memory",
            "1g",
        ]
        # No primary resource (same as sbin/start-connect-server.sh): the
        # server class is already on the classpath via jars/.
        for key, value in confs.items():
            cmd += ["--conf", f"{key}={value}"]
        return cmd

    def start(self) -> SparkConnectServer:
        """Launch the server and block until it accepts connections.

        Returns:
            ``self``.

        Raises:
            RuntimeError: Already started, no Java, the process died, or the
                "server started" line did not appear within ``start_timeout``;
                the message contains the tail of the log.
        """
        if self._proc is not None:
            raise RuntimeError("Spark Connect server already started")
        if not java_available():
            raise RuntimeError(
                "cannot start Spark Connect server: no java (set JAVA_HOME or put java on PATH)"
            )

        env = dict(os.environ)
        env["SPARK_HOME"] = str(self._spark_home)
        # Silences "hostname resolves to a loopback address" and keeps Spark
        # from picking a non-loopback interface for anything left unset.
        env.setdefault("SPARK_LOCAL_IP", self._host)

        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        cmd = self._command()
        _log.info("starting Spark Connect server: %s", " ".join(cmd))
        t0 = time.monotonic()
        with self._log_path.open("wb") as log_file:
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                env=env,
                # Run in the log's folder so spark-warehouse/ and derby files
                # do not land in the caller's working directory.
                cwd=self._log_path.parent,
                # Own session => own process group (pgid == pid): Ctrl-C in
                # the terminal does not hit the JVM, and stop() can signal the
                # whole group (JVM plus any Python workers it forked).
                start_new_session=True,
            )
        try:
            self._own_group = os.getpgid(self._proc.pid) == self._proc.pid
        except ProcessLookupError:  # died instantly; handled by the wait below
            self._own_group = False
        # Safety net: a crashed/forgotten test must not leak a JVM.
        atexit.register(self.stop)

        try:
            self._port = self._wait_for_port(t0)
        except BaseException:
            # Includes KeyboardInterrupt: never leave a half-started JVM behind.
            self.stop()
            raise
        _log.info(
            "Spark Connect server pid=%d (%s) listening on %s after %.1fs",
            self._proc.pid,
            _process_name(self._proc.pid) or "?",
            self.url,
            time.monotonic() - t0,
        )
        return self

    def _wait_for_port(self, t0: float) -> int:
        """Poll the log for the "server started" line; return the port."""
        assert self._proc is not None
        deadline = t0 + self._start_timeout
        offset = 0
        pending = b""
        while True:
            # Read only what was appended since the last poll.
            try:
                with self._log_path.open("rb") as f:
                    f.seek(offset)
                    chunk = f.read()
            except OSError:
                chunk = b""
            offset += len(chunk)
            lines = (pending + chunk).split(b"\n")
            pending = lines.pop()  # possibly incomplete last line
            for raw in lines:
                match = _STARTED_RE.search(raw.decode("utf-8", errors="replace"))
                if match:
                    return int(match.group("port"))

            code = self._proc.poll()
            if code is not None:
                raise RuntimeError(
                    f"Spark Connect server exited with code {code} during startup "
                    f"(log: {self._log_path}):\n{self.log_tail(_FAILURE_TAIL_LINES)}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"Spark Connect server did not start within {self._start_timeout:.0f}s "
                    f"(log: {self._log_path}):\n{self.log_tail(_FAILURE_TAIL_LINES)}"
                )
            time.sleep(0.1)

    def _signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` to our process group, or just our PID if we lack one."""
        assert self._proc is not None
        pid = self._proc.pid
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if self._own_group:
                # Safe even after the leader died: a PGID is not reused while
                # any member of the group is alive, and ESRCH otherwise.
                os.killpg(pid, sig)
            elif self._proc.poll() is None:
                # poll() first: only signal a PID that is still our unreaped
                # child (so it cannot have been recycled).
                os.kill(pid, sig)

    def stop(self, timeout: float = 20.0) -> None:
        """Stop the server: SIGTERM, wait up to ``timeout`` s, then SIGKILL.

        SIGTERM lets Spark's shutdown hooks run (they remove ``blockmgr-*``
        temp dirs). Idempotent; safe to call on a never-started server.
        """
        proc = self._proc
        if proc is None:
            return
        atexit.unregister(self.stop)
        if proc.poll() is None:
            _log.info(
                "stopping Spark Connect server pid=%d (%s)",
                proc.pid,
                _process_name(proc.pid) or "?",
            )
            self._signal(signal.SIGTERM)
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _log.warning(
                    "Spark Connect server pid=%d ignored SIGTERM for %.1fs; killing",
                    proc.pid,
                    timeout,
                )
                self._signal(signal.SIGKILL)
                proc.wait()
        # The JVM may be gone while children it forked (e.g. Python UDF
        # workers) still live in its group: reap them too.
        self._signal(signal.SIGKILL)
        self._proc = None
        self._port = None
        self._own_group = False

    # -- context manager ----------------------------------------------------

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
        state = f"pid={self._proc.pid} port={self._port}" if self._proc is not None else "stopped"
        return f"<SparkConnectServer {self._spark_home} {state}>"
