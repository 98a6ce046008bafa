"""A real, local Spark Connect server (a JVM) that only its owner can use and never outlives it.

The server is launched through ``spark-submit``, so it behaves like a production Spark Connect
server; what differs is what a shared machine needs:

- **Owner only.** Each server checks a fresh random token (``secrets``, 256 bits). The JVM gets
  it in its environment (``SPARK_CONNECT_AUTHENTICATE_TOKEN``), never on a command line, which
  every user can read; it is in no log and no ``repr``. :attr:`SparkConnectServer.url` carries
  it: ``sc://localhost:PORT/;token=...``, which 4.0+ clients send over gRPC local credentials
  (3.5 needs :func:`pyspark_safestop.client._operations.session_builder`).
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

import logging
import os
import re
import secrets
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

from .._settings import DEFAULT_MASTER, validate_master
from ..client._layouts import pyspark_package_dirs
from ._launcher import REDACT_VAR
from ._local import (
    BIND_HOST,
    EngineUnavailable,
    LocalServer,
    ServerRequest,
    conf_shown,
    open_private_log,
)
from ._workers import ENV_WORKER_PYTHON, NEEDS, WorkerPython, worker_python

__all__ = [
    "BIND_HOST",
    "FORCED_CONF",
    "SparkConnectServer",
    "find_spark_home",
    "java_available",
    "open_private_log",
]

logger = logging.getLogger("pyspark_safestop")

#: Main class of the Spark Connect server inside ``spark-connect_*.jar``.
_SERVER_CLASS = "org.apache.spark.sql.connect.service.SparkConnectServer"
#: Where the JVM reads the token: an environment variable, never a command-line argument.
TOKEN_ENV = "SPARK_CONNECT_AUTHENTICATE_TOKEN"
_TOKEN_CONF = "spark.connect.authenticate.token"
_MASTER_CONF = "spark.master"
#: Confs whose values are secrets (``spark.authenticate.secret``, a keystore's password, ...):
#: they reach spark-submit in a 0600 properties file of the private folder, never a command
#: line, which every local user can read.
_SECRET_CONF = re.compile(r"secret|password|token", re.IGNORECASE)

#: Confs that decide where the server listens; an ``extra_conf`` cannot change them.
FORCED_CONF = {
    "spark.connect.grpc.binding.address": BIND_HOST,
    "spark.driver.bindAddress": BIND_HOST,
    "spark.driver.host": BIND_HOST,
}

#: Spark 4.x logs e.g. ``Spark Connect server started at: 127.0.0.1:45051``; older releases an
#: ``InetSocketAddress`` (``/127.0.0.1:15002``), so only the trailing ``:PORT`` is significant.
_STARTED_RE = re.compile(r"Spark Connect server started at:?\s*(?P<addr>\S*):(?P<port>\d+)\s*$")


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


def _write_properties(workdir: Path, conf: Mapping[str, str]) -> Path:
    """``conf`` as a Java properties file only this user can read, in the private folder."""
    path = workdir / "secret.properties"
    escaped = {key: value.replace("\\", "\\\\").replace("\n", "\\n") for key, value in conf.items()}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.writelines(f"{key}={value}\n" for key, value in escaped.items())
    return path


_NO_JAVA = "no Java runtime found (install Java 17 or set JAVA_HOME)"
_NO_JARS = (
    "no Spark jars found: install pyspark (the full distribution) or point "
    "--safestop-spark-home / PYSPARK_SAFESTOP_SPARK_HOME at a Spark distribution"
)


class SparkConnectServer(LocalServer):
    """A local Spark Connect server (a JVM), usable as a context manager::

        with SparkConnectServer(home) as server:
            spark = session_builder(server.url).create()

    Only its owner can use it (see the module's description); it is stopped by ``stop()``, at
    the end of the ``with`` block, or, when this process ends in any way, by its launcher.
    """

    engine: ClassVar[str] = "spark"
    authenticated: ClassVar[bool] = True
    access: ClassVar[str] = "owner only: a random token per server"
    has_master: ClassVar[bool] = True
    _started_re = _STARTED_RE
    _what = "Spark Connect server"

    def __init__(
        self,
        spark_home: Path,
        *,
        log_path: Path | None = None,
        start_timeout: float = 120.0,
        extra_conf: Mapping[str, str] | None = None,
        stop_grace: float = 10.0,
        master: str | None = None,
        python: str | None = None,
    ) -> None:
        """Configure the server (it is started by :meth:`start`).

        ``log_path`` receives the server's output (default: a file in its private working
        folder, removed at stop). ``start_timeout``: seconds to wait for it to accept
        connections. ``extra_conf``: more Spark confs, overriding the defaults, except the
        addresses it binds and its token (``ValueError``); a secret (a conf named like
        ``*secret*``, ``*password*``, ``*token*``) reaches spark-submit in a private file.
        ``stop_grace``: seconds between SIGTERM and SIGKILL at stop. ``master``: where its
        executors run (:func:`validate_master`; default ``local[2]``), also accepted as the
        conf ``spark.master``, not both unless equal. ``python``: the interpreter of its Python
        workers (default ``$PYSPARK_PYTHON``, else this interpreter; see :mod:`._workers`).
        """
        conf = dict(extra_conf or {})
        for key, value in conf.items():
            if key == _TOKEN_CONF:
                raise ValueError(f"{key} cannot be set: every server gets its own token")
            if key in FORCED_CONF and value != FORCED_CONF[key]:
                raise ValueError(f"{key}={value!r}: the server binds {BIND_HOST} only")
        conf_master = conf.pop(_MASTER_CONF, None)
        if conf_master is not None:
            conf_master = validate_master(conf_master, _MASTER_CONF)
        if master is not None:
            master = validate_master(master, "master")
        if master is not None and conf_master is not None and master != conf_master:
            raise ValueError(
                f"the master is given twice: {master!r} and {_MASTER_CONF}={conf_master!r}"
            )
        super().__init__(log_path=log_path, start_timeout=start_timeout, stop_grace=stop_grace)
        self._spark_home = Path(spark_home)
        self._extra_conf = conf
        self._master = master or conf_master or DEFAULT_MASTER
        self._python = worker_python(python)
        self._token: str | None = None

    # -- what it hands out --------------------------------------------------------------------

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
        return super().pid

    @property
    def master(self) -> str:
        """Where its executors run: ``local[2]``, ``local-cluster[...]``, ``spark://...``."""
        return self._master

    @property
    def worker_python(self) -> WorkerPython:
        """The interpreter of its Python workers (UDFs, pandas UDFs, ``foreachBatch``)."""
        return self._python

    @property
    def spark_home(self) -> Path:
        """The Spark distribution it runs from."""
        return self._spark_home

    # -- how it runs ----------------------------------------------------------------------------

    @classmethod
    def build(cls, request: ServerRequest) -> SparkConnectServer:
        """A server from the installed jars (or ``request.spark_home``); see
        :meth:`LocalServer.build`."""
        if not java_available():
            raise EngineUnavailable(_NO_JAVA)
        home = find_spark_home(request.spark_home)
        if home is None:
            raise EngineUnavailable(_NO_JARS)
        return cls(
            home,
            log_path=request.log_path,
            start_timeout=request.start_timeout,
            extra_conf=request.conf,
            master=request.master,
        )

    @classmethod
    def python_workers(cls, request: ServerRequest) -> tuple[str, list[str]]:
        """The interpreter of its Python workers (:mod:`._workers`) and what it lacks."""
        python = worker_python()
        return python.describe(), python.problems(find_spark_home(request.spark_home), *NEEDS)

    def setup(self) -> dict[str, str]:
        """Its Spark home, master, confs, worker interpreter and the JVM's options."""
        return {
            "spark_home": str(self._spark_home),
            "master": self._master,
            "conf": conf_shown(self._extra_conf, _SECRET_CONF),
            "python": self._python.executable,
            "java_home": os.environ.get("JAVA_HOME", ""),
            "jvm_options": os.environ.get("SPARK_SUBMIT_OPTS", ""),
        }

    def installation(self) -> Path:
        """Its Spark home."""
        return self._spark_home

    def _check_runnable(self) -> None:
        if not java_available():
            raise EngineUnavailable(_NO_JAVA)

    def _new_secret(self) -> None:
        self._token = secrets.token_urlsafe(32)

    def _command(self, workdir: Path) -> list[str]:
        confs = {
            # Port 0: the OS picks a free port, read back from the log: no collision, no race.
            # A restart takes the port it had, so that its URL stays the same.
            "spark.connect.grpc.binding.port": str(self._restart_port or 0),
            "spark.ui.enabled": "false",
            # Spark's scratch folders inside the private folder, removed with it; there too
            # the folder of DataFrame.checkpoint(), which has none by default.
            "spark.local.dir": str(workdir),
            "spark.checkpoint.dir": str(workdir / "checkpoints"),
        }
        secret = {key: value for key, value in self._extra_conf.items() if _SECRET_CONF.search(key)}
        confs.update((key, value) for key, value in self._extra_conf.items() if key not in secret)
        confs.update(FORCED_CONF)
        command = [
            str(self._spark_home / "bin" / "spark-submit"),
            "--class",
            _SERVER_CLASS,
            "--master",
            self._master,
            "--driver-memory",
            "1g",
        ]
        if secret:
            command += ["--properties-file", str(_write_properties(workdir, secret))]
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
        # The launcher writes it as <redacted> wherever the server prints it (see there).
        env[REDACT_VAR] = TOKEN_ENV
        env[ENV_WORKER_PYTHON] = self._python.executable
        if self._workdir is not None:
            # local-cluster's workers keep their executors' folders here, not in the Spark home.
            env["SPARK_WORKER_DIR"] = str(self._workdir / "work")
            # The JVM's own temporary files (Spark's artifact and shuffle-service folders,
            # native libraries it unpacks) go to the private folder too, not world-readable
            # into /tmp, where they would outlive a server that was SIGKILLed.
            # (spark-class splits the variable at spaces: a folder with one keeps the default.)
            tmp = self._workdir / "tmp"
            if " " not in str(tmp):
                tmp.mkdir(mode=0o700, exist_ok=True)
                options = env.get("SPARK_SUBMIT_OPTS", "")
                env["SPARK_SUBMIT_OPTS"] = f"{options} -Djava.io.tmpdir={tmp}".strip()
        return env

    def __repr__(self) -> str:
        state = f"pid={self._pid} port={self._port}" if self.running else "stopped"
        return f"<SparkConnectServer {self._spark_home} {self._master} {state}>"
