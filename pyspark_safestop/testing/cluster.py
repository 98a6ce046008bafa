"""A real Spark standalone cluster on loopback, for suites that run on a cluster master.

:class:`StandaloneCluster` starts a standalone master and one worker from a Spark distribution
(``spark-class org.apache.spark.deploy.master.Master`` / ``...worker.Worker``), as a cluster
would run them, with what the package's own servers get (:mod:`pyspark_safestop.servers._local`):
loopback only (the OS picks every port; the web UIs on 127.0.0.1, with no kill links and no
decommissioning), private 0700 working folders (the worker's executors run there), and
launchers that stop both when their owner dies, SIGKILL included. The cluster checks a fresh
random secret (``spark.authenticate``), so no other local user can register a worker or an
application; it reaches every JVM through its environment, never a command line::

    with StandaloneCluster(spark_home) as cluster:
        server = SparkConnectServer(spark_home, master=cluster.master_url, extra_conf=cluster.conf)
        ...

or, with the pytest plugin: ``spark_connect_server_factory(master=cluster.master_url,
conf=cluster.conf)``.
"""

from __future__ import annotations

import os
import re
import secrets
import time
from pathlib import Path
from types import TracebackType
from typing import ClassVar

from ..servers import BIND_HOST, LocalServer

__all__ = ["StandaloneCluster"]

#: Where the JVMs of a standalone cluster read its secret (Spark's SecurityManager).
_SECRET_ENV = "_SPARK_AUTH_SECRET"
#: Written to each daemon's properties file: nothing secret.
_DAEMON_CONF = {
    "spark.authenticate": "true",
    "spark.ui.killEnabled": "false",
    "spark.master.ui.decommission.allow.mode": "DENY",
    "spark.master.rest.enabled": "false",
}


class _Daemon(LocalServer):
    """A master or worker JVM of the cluster, run by ``spark-class``."""

    _main: ClassVar[str] = ""

    def __init__(self, spark_home: Path, secret: str, *, start_timeout: float) -> None:
        super().__init__(start_timeout=start_timeout)
        self._spark_home = spark_home
        self._secret = secret

    @property
    def url(self) -> str:
        return f"spark://{BIND_HOST}:{self.port}"

    def _arguments(self, workdir: Path) -> list[str]:
        raise NotImplementedError

    def _command(self, workdir: Path) -> list[str]:
        properties = workdir / "daemon.conf"
        properties.write_text("".join(f"{key} {value}\n" for key, value in _DAEMON_CONF.items()))
        return [
            str(self._spark_home / "bin" / "spark-class"),
            self._main,
            "--host",
            BIND_HOST,
            "--port",
            "0",
            "--webui-port",
            "0",
            "--properties-file",
            str(properties),
            *self._arguments(workdir),
        ]

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env["SPARK_HOME"] = str(self._spark_home)
        env["SPARK_LOCAL_IP"] = BIND_HOST  # the web UI and the executors bind it too
        env.pop("SPARK_LOCAL_HOSTNAME", None)
        env[_SECRET_ENV] = self._secret
        return env


class _Master(_Daemon):
    _main = "org.apache.spark.deploy.master.Master"
    _what = "Spark standalone master"
    _started_re = re.compile(r"Starting Spark master at spark://[^\s:]+:(?P<port>\d+)")

    def _arguments(self, workdir: Path) -> list[str]:
        return []


class _Worker(_Daemon):
    _main = "org.apache.spark.deploy.worker.Worker"
    _what = "Spark standalone worker"
    _started_re = re.compile(r"Starting Spark worker [^\s:]+:(?P<port>\d+)")

    def __init__(
        self,
        spark_home: Path,
        secret: str,
        master_url: str,
        *,
        cores: int,
        memory_mb: int,
        start_timeout: float,
    ) -> None:
        super().__init__(spark_home, secret, start_timeout=start_timeout)
        self._master_url = master_url
        self._cores = cores
        self._memory_mb = memory_mb

    def _wait_for_port(self, t0: float, offset: int = 0) -> int:
        # Ready once registered with the master: an application then finds its executors.
        port = super()._wait_for_port(t0, offset)
        while "Successfully registered with master" not in self.log_tail(200):
            if not self.running or time.monotonic() > t0 + self._start_timeout:
                raise RuntimeError(
                    f"the {self._what} did not register with {self._master_url} within "
                    f"{self._start_timeout:g} s (log: {self.log_path}):\n{self.log_tail(40)}"
                )
            time.sleep(0.1)
        return port

    def _arguments(self, workdir: Path) -> list[str]:
        return [
            "--cores",
            str(self._cores),
            "--memory",
            f"{self._memory_mb}m",
            "--work-dir",
            str(workdir / "work"),
            self._master_url,
        ]


class StandaloneCluster:
    """A standalone master and one worker on 127.0.0.1; see the module's description."""

    def __init__(
        self,
        spark_home: str | Path,
        *,
        cores: int = 2,
        memory_mb: int = 2048,
        start_timeout: float = 120.0,
    ) -> None:
        """``spark_home``: a Spark distribution or full pyspark folder (``bin/spark-class``).
        The worker offers ``cores`` cores and ``memory_mb`` MiB to executors."""
        self._spark_home = Path(spark_home)
        if not (self._spark_home / "bin" / "spark-class").is_file():
            raise ValueError(f"{str(spark_home)!r} has no bin/spark-class: not a Spark home")
        if cores < 1 or memory_mb < 512:
            raise ValueError(f"a worker needs cores >= 1 and memory_mb >= 512, got {cores}, "
                             f"{memory_mb}")  # fmt: skip
        self._cores = cores
        self._memory_mb = memory_mb
        self._start_timeout = start_timeout
        self._secret = secrets.token_urlsafe(32)
        self._master: _Master | None = None
        self._worker: _Worker | None = None

    @property
    def master_url(self) -> str:
        """``spark://127.0.0.1:PORT``, the master for ``--safestop-master``."""
        if self._master is None:
            raise RuntimeError("the cluster is not started")
        return self._master.url

    @property
    def conf(self) -> dict[str, str]:
        """The confs an application needs to join: authentication and its secret (a server
        started by this package passes the secret through the JVM's environment)."""
        return {"spark.authenticate": "true", "spark.authenticate.secret": self._secret}

    @property
    def log_paths(self) -> list[Path]:
        """The master's and the worker's logs (in their private folders, while they run)."""
        return [daemon.log_path for daemon in (self._master, self._worker) if daemon]

    def start(self) -> StandaloneCluster:
        """Start the master, then a worker registered with it; return ``self``. Whatever
        interrupts it, nothing is left running."""
        try:
            self._master = _Master(
                self._spark_home, self._secret, start_timeout=self._start_timeout
            )
            self._master.start()
            self._worker = _Worker(
                self._spark_home,
                self._secret,
                self._master.url,
                cores=self._cores,
                memory_mb=self._memory_mb,
                start_timeout=self._start_timeout,
            )
            self._worker.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the worker (its executors with it), then the master. Idempotent."""
        for daemon in (self._worker, self._master):
            if daemon is not None:
                daemon.stop()
        self._worker = self._master = None

    def __enter__(self) -> StandaloneCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
