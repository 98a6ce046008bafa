"""The one registry of server engines: the fixtures, ``serve`` and ``doctor`` choose from it.

Each engine is a :class:`LocalServer` subclass that carries what sets it apart: its name,
who can use it (:attr:`~LocalServer.access`), whether it takes a Spark master, its one
availability check (:meth:`~LocalServer.build` and :meth:`~LocalServer.start` raise the same
:class:`EngineUnavailable`) and the interpreter of its Python UDFs. A new engine is a new
subclass and one entry in :data:`ENGINES`.
"""

from __future__ import annotations

import os

from .._settings import master_from_env, warn
from ._local import EngineUnavailable, LocalServer, ServerRequest
from ._sail import SailServer
from ._spark import SparkConnectServer

__all__ = [
    "DEFAULT_ENGINE",
    "ENGINES",
    "ENV_ENGINE",
    "EngineUnavailable",
    "check_engine",
    "describe",
    "engine_from_env",
    "make_server",
    "master_for",
    "python_workers",
]

#: Every engine by the name the options and the environment give it.
ENGINES: dict[str, type[LocalServer]] = {
    engine.engine: engine for engine in (SparkConnectServer, SailServer)
}
DEFAULT_ENGINE = "spark"
#: Environment variable choosing the engine of the fixtures' server (as ``--safestop-engine``).
ENV_ENGINE = "PYSPARK_SAFESTOP_ENGINE"

_warned_engine: set[str] = set()


def check_engine(engine: str) -> str:
    """Return ``engine`` if it is one of :data:`ENGINES`; ``ValueError`` naming it otherwise."""
    if engine not in ENGINES:
        raise ValueError(f"unknown server engine {engine!r}: choose one of {', '.join(ENGINES)}")
    return engine


def engine_from_env() -> str:
    """The engine ``$PYSPARK_SAFESTOP_ENGINE`` names; a bad value warns once and is ``spark``."""
    raw = os.environ.get(ENV_ENGINE, "").strip().lower()
    if not raw:
        return DEFAULT_ENGINE
    if raw in ENGINES:
        return raw
    if raw not in _warned_engine:
        _warned_engine.add(raw)
        warn(
            f"{ENV_ENGINE}={raw!r} is not a server engine ({', '.join(ENGINES)}); "
            f"using {DEFAULT_ENGINE}"
        )
    return DEFAULT_ENGINE


def python_workers(
    engine: str, *, spark_home: str | None = None, sail_executable: str | None = None
) -> tuple[str, list[str]]:
    """Which interpreter a server of ``engine`` runs Python UDFs in, and what keeps them from
    running there (sentences)."""
    request = ServerRequest(spark_home=spark_home, sail_executable=sail_executable)
    return ENGINES[check_engine(engine)].python_workers(request)


def master_for(engine: str) -> str | None:
    """The master ``$PYSPARK_SAFESTOP_MASTER`` gives a server of ``engine``; ``None`` for an
    engine without one (Sail)."""
    return master_from_env() if ENGINES[check_engine(engine)].has_master else None


def make_server(engine: str, request: ServerRequest | None = None) -> LocalServer:
    """A server of ``engine`` for ``request`` (default: everything by default), not started.

    Raises :class:`EngineUnavailable` when the engine cannot run here (no Java or jars, no
    ``sail``), ``ValueError`` for an unknown engine or a refused setting (both named).
    """
    return ENGINES[check_engine(engine)].build(request or ServerRequest())


def describe(engine: str) -> str:
    """How a server of ``engine`` is shown: who can use it."""
    server = ENGINES[check_engine(engine)]
    return f"a local {server._what} ({server.access})"
