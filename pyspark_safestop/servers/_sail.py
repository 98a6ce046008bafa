"""A local Sail server: Spark Connect answered by Sail (``pysail``, Rust, no JVM), run like Spark's.

``sail spark server --ip 127.0.0.1 --port 0`` is ready in well under a second. It gets what
:mod:`._local_server` gives every engine: loopback only (the OS picks the port, read back from
its log; ``[::1]:PORT`` held), a private 0700 working folder, a 0600 log never opened through a
symbolic link, and a launcher that stops it when its owner dies, SIGKILL included.

What it cannot get: **Sail checks no secret.** It has no authentication setting (its server
takes ``--ip``, ``--port`` and ``-C`` only) and serves clients without the token that
``SPARK_CONNECT_AUTHENTICATE_TOKEN`` would make Spark require; any local user who finds the port
can run queries there. Its URL carries no token, and :data:`NO_AUTH_NOTICE` says so wherever the
server is shown.

The ``sail`` executable: ``sail_executable``, else ``$PYSPARK_SAFESTOP_SAIL``, else the one
beside this Python (``pip install "pyspark-safestop[sail]"`` puts it there), else ``PATH``.
Sail runs Python code with the ``pyspark`` of its own environment; the ``sail`` of an
environment that holds a ``pyspark`` newer than Sail supports answers no query (sessions fail
with "session ... is not running"): point ``PYSPARK_SAFESTOP_SAIL`` at the ``sail`` of an
environment with a supported ``pyspark``.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

from ._local import BIND_HOST, EngineUnavailable, LocalServer, ServerRequest, conf_shown
from ._workers import pyspark_in, sail_python

__all__ = ["ENV_SAIL", "NO_AUTH_NOTICE", "SailServer", "find_sail"]

#: Environment variable naming the ``sail`` executable to run.
ENV_SAIL = "PYSPARK_SAFESTOP_SAIL"
#: Said wherever a Sail server is shown: it is reachable by every local user.
NO_AUTH_NOTICE = "Sail: no authentication — any local user can connect"

#: Sail logs e.g. ``Starting the Spark Connect server on 127.0.0.1:43335...`` once it is bound.
_STARTED_RE = re.compile(r"Starting the Spark Connect server on (?P<addr>\S+):(?P<port>\d+)")
_CHECKPOINT_ENV = "SAIL_EXECUTION__CHECKPOINT__PATH"
#: Settings whose values are secrets (shown as a digest).
_SECRET_SETTING = re.compile(r"SECRET|PASSWORD|TOKEN|KEY", re.IGNORECASE)
#: Where Sail's own processes listen, when it runs them: loopback, whatever the environment says.
FORCED_ENV = {
    "SAIL_CLUSTER__DRIVER_LISTEN_HOST": BIND_HOST,
    "SAIL_CLUSTER__WORKER_LISTEN_HOST": BIND_HOST,
}


def _runnable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def find_sail(explicit: str | None = None) -> Path | None:
    """Return the ``sail`` executable to run, or ``None`` when there is none.

    Candidates, in order: ``explicit``, ``$PYSPARK_SAFESTOP_SAIL``, ``sail`` beside this
    interpreter, ``sail`` on ``PATH``. An explicit or configured path that is not an executable
    file is ``None`` (not silently another one).
    """
    chosen = explicit or os.environ.get(ENV_SAIL)
    if chosen:
        path = Path(chosen).expanduser()
        return path.resolve() if _runnable(path) else None
    beside = Path(sys.executable).with_name("sail")
    if _runnable(beside):
        return beside
    found = shutil.which("sail")
    return None if found is None else Path(found)


def _missing(explicit: str | None) -> str:
    named = explicit or os.environ.get(ENV_SAIL)
    if named:
        return f"{named!r} is not an executable sail"
    return 'no sail found: pip install "pyspark-safestop[sail]"'


class SailServer(LocalServer):
    """A local Sail server, usable as a context manager::

        with SailServer() as server:
            spark = SparkSession.builder.remote(server.url).create()

    Loopback only, private files, stopped with its owner (see the module's description); no
    authentication: :attr:`authenticated` is ``False``.
    """

    engine: ClassVar[str] = "sail"
    authenticated: ClassVar[bool] = False
    access: ClassVar[str] = NO_AUTH_NOTICE
    _started_re = _STARTED_RE
    _what = "Sail server"

    def __init__(
        self,
        sail_executable: str | Path | None = None,
        *,
        log_path: Path | None = None,
        start_timeout: float = 60.0,
        extra_env: Mapping[str, str] | None = None,
        stop_grace: float = 10.0,
    ) -> None:
        """Configure the server (it is started by :meth:`start`).

        ``sail_executable``: see :func:`find_sail`. ``extra_env``: Sail settings, as its
        ``SAIL_*`` environment variables (``ValueError`` for another name, or for one that
        moves where it listens). The other arguments are :class:`LocalServer`'s.
        """
        env = dict(extra_env or {})
        for key, value in env.items():
            if not key.startswith("SAIL_"):
                raise ValueError(f"{key!r}: a Sail setting is a SAIL_* environment variable")
            if key in FORCED_ENV and value != FORCED_ENV[key]:
                raise ValueError(f"{key}={value!r}: the server listens on {BIND_HOST} only")
        super().__init__(log_path=log_path, start_timeout=start_timeout, stop_grace=stop_grace)
        self._explicit = None if sail_executable is None else str(sail_executable)
        self._extra_env = env
        self._sail: Path | None = None

    @property
    def url(self) -> str:
        """``sc://localhost:PORT``: no token, Sail checks none."""
        return f"sc://localhost:{self.port}"

    @classmethod
    def build(cls, request: ServerRequest) -> SailServer:
        """A server of the ``sail`` found (:func:`find_sail`), ``request.conf`` its ``SAIL_*``
        settings; see :meth:`LocalServer.build`. A master is refused: Sail has none."""
        if request.master is not None:
            raise ValueError(f"master={request.master!r}: a Sail server has no Spark master")
        if find_sail(request.sail_executable) is None:
            raise EngineUnavailable(_missing(request.sail_executable))
        return cls(
            request.sail_executable,
            log_path=request.log_path,
            start_timeout=request.start_timeout,
            extra_env=request.conf,
        )

    @classmethod
    def python_workers(cls, request: ServerRequest) -> tuple[str, list[str]]:
        """The interpreter running ``sail``, which must hold a pyspark, and what it lacks."""
        sail = find_sail(request.sail_executable)
        python = None if sail is None else sail_python(sail)
        if python is None:
            return "the interpreter running sail (not found)", []
        problems = python.problems(None)
        if python.version is not None and not pyspark_in(python):
            problems.append(
                f"Sail's environment ({python.executable}) has no pyspark: every Python UDF "
                "fails there (install pyspark-client and pandas beside pysail)"
            )
        return python.describe(), problems

    def setup(self) -> dict[str, str]:
        """Its ``sail`` executable and settings."""
        return {
            "sail": str(self.installation() or self._explicit),
            "conf": conf_shown(self._extra_env, _SECRET_SETTING),
        }

    def installation(self) -> Path | None:
        """The ``sail`` executable it runs."""
        return find_sail(self._explicit)

    def _check_runnable(self) -> None:
        self._sail = find_sail(self._explicit)
        if self._sail is None:
            raise EngineUnavailable(_missing(self._explicit))

    def _command(self, workdir: Path) -> list[str]:
        assert self._sail is not None
        port = str(self._restart_port or 0)
        return [str(self._sail), "spark", "server", "--ip", BIND_HOST, "--port", port]

    def _environment(self) -> dict[str, str]:
        env = dict(os.environ)
        if self._workdir is not None:
            # DataFrame.checkpoint() needs a folder, which Sail has none of by default: one in
            # the private folder, removed with it, as the Spark servers get.
            env[_CHECKPOINT_ENV] = str(self._workdir / "checkpoints")
        env.update(self._extra_env)
        env.update(FORCED_ENV)
        # The line naming the port must reach the log whatever RUST_LOG asks for.
        wanted = "sail_cli::spark::server=info"
        env["RUST_LOG"] = f"{env['RUST_LOG']},{wanted}" if env.get("RUST_LOG") else "info"
        # Another server's secret has no business here.
        env.pop("SPARK_CONNECT_AUTHENTICATE_TOKEN", None)
        return env
