"""The server engines the fixtures and ``serve`` can start, behind one small interface.

``spark`` is a real Spark Connect server (a JVM, :mod:`._server`), ``sail`` a Sail server
(Rust, :mod:`._sail`). :func:`make_server` builds either from the same arguments; both are
:class:`._local_server.LocalServer`: ``start()``, ``stop()``, ``url``, ``log_path``,
``log_tail()``, ``authenticated``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from .._settings import master_from_env, warn
from ._local import LocalServer
from ._sail import ENV_SAIL, NO_AUTH_NOTICE, SailServer, find_sail
from ._spark import SparkConnectServer, find_spark_home, java_available
from ._workers import NEEDS, pyspark_in, sail_python, worker_python

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

ENGINES = ("spark", "sail")
DEFAULT_ENGINE = "spark"
#: Environment variable choosing the engine of the fixtures' server (as ``--safestop-engine``).
ENV_ENGINE = "PYSPARK_SAFESTOP_ENGINE"

_warned_engine: set[str] = set()


class EngineUnavailable(RuntimeError):
    """The engine cannot run here; the message says what is missing and how to get it."""


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
    running there (sentences). Spark: its Python workers (:mod:`._workers`); Sail: the
    interpreter running ``sail``, which must hold a pyspark."""
    if engine == "sail":
        sail = find_sail(sail_executable)
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
    python = worker_python()
    return python.describe(), python.problems(find_spark_home(spark_home), *NEEDS)


def master_for(engine: str) -> str | None:
    """The master ``$PYSPARK_SAFESTOP_MASTER`` gives a server of ``engine``: a Spark server's;
    ``None`` for Sail, which has none."""
    return None if engine == "sail" else master_from_env()


def make_server(
    engine: str,
    *,
    log_path: Path | None = None,
    start_timeout: float = 120.0,
    conf: Mapping[str, str] | None = None,
    spark_home: str | None = None,
    sail_executable: str | None = None,
    master: str | None = None,
) -> LocalServer:
    """A server of ``engine``, not started.

    ``conf``: Spark confs for ``spark``, ``SAIL_*`` settings for ``sail``. ``master``: where a
    Spark server's executors run (default ``local[2]``; Sail refuses another). Raises
    :class:`EngineUnavailable` when the engine cannot run here (no Java or jars, no ``sail``),
    ``ValueError`` for an unknown engine or a refused setting (both named).
    """
    check_engine(engine)
    if engine == "sail" and master is not None:
        raise ValueError(f"master={master!r}: a Sail server has no Spark master")
    if engine == "sail":
        if find_sail(sail_executable) is None:
            named = sail_executable or os.environ.get(ENV_SAIL)
            raise EngineUnavailable(
                f"{named!r} is not an executable sail"
                if named
                else 'no sail found: pip install "pyspark-safestop[sail]"'
            )
        return SailServer(
            sail_executable, log_path=log_path, start_timeout=start_timeout, extra_env=conf
        )
    if not java_available():
        raise EngineUnavailable("no Java runtime found (install Java 17 or set JAVA_HOME)")
    home = find_spark_home(spark_home)
    if home is None:
        raise EngineUnavailable(
            "no Spark jars found: install pyspark (the full distribution) or point "
            "--safestop-spark-home / PYSPARK_SAFESTOP_SPARK_HOME at a Spark distribution"
        )
    return SparkConnectServer(
        home, log_path=log_path, start_timeout=start_timeout, extra_conf=conf, master=master
    )


def describe(engine: str) -> str:
    """How a server of ``engine`` is shown: who can use it."""
    if engine == "sail":
        return f"a local Sail server ({NO_AUTH_NOTICE})"
    return "a local Spark Connect server (owner only: a random token per server)"
