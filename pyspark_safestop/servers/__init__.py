"""The servers wing: real local Spark Connect servers, owned by the process that starts them.

The public names here are what the fixtures, ``serve``, the benchmarks and the examples use:

* :class:`LocalServer`: the life cycle every engine shares (``start()``, ``stop()``,
  ``restart()``, ``url``, ``log_tail()``, ``death``), one launcher process per server that
  takes the server down with its owner (:mod:`._launcher`);
* the engines, :class:`SparkConnectServer` (a JVM from the installed jars, usable only with its
  own random token) and :class:`SailServer` (Sail, no authentication), one registry of them in
  :mod:`._engines` with :func:`make_server`;
* :mod:`._supervisor` notices a server's death and starts it again; :mod:`._shared` hosts one
  server for a whole pytest-xdist run; :mod:`._workers` finds the Python a server runs UDFs in.
"""

from __future__ import annotations

from ._engines import DEFAULT_ENGINE, ENGINES, ENV_ENGINE, EngineUnavailable, make_server
from ._local import BIND_HOST, LocalServer, RunningServer, ServerRequest
from ._sail import NO_AUTH_NOTICE, SailServer, find_sail
from ._spark import SparkConnectServer, find_spark_home, java_available

__all__ = [
    "BIND_HOST",
    "DEFAULT_ENGINE",
    "ENGINES",
    "ENV_ENGINE",
    "NO_AUTH_NOTICE",
    "EngineUnavailable",
    "LocalServer",
    "RunningServer",
    "SailServer",
    "ServerRequest",
    "SparkConnectServer",
    "find_sail",
    "find_spark_home",
    "java_available",
    "make_server",
]
