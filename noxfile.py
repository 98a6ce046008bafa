"""The test matrix: the whole suite against five Spark Connect client lines, plus lint.

``nox`` runs everything; ``nox -s "tests(line='4.1')"`` runs one line. Each line gets its own
virtual environment. The real server for every line comes from one ``pyspark==4.3.*``
install (the full distribution ships the JVM jars; the ``pyspark-client`` lines have none);
every client line from 3.5 on talks to a 4.3 server.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nox

nox.options.default_venv_backend = "uv"
nox.options.sessions = ["lint", "tests"]
nox.options.error_on_missing_interpreters = True

LINES = {
    "3.5": ["pyspark[connect]==3.5.*", "pandas<2.3", "numpy<2", "pyarrow<17", "protobuf<5"],
    "4.0": ["pyspark-client==4.0.*", "pandas<3"],
    "4.1": ["pyspark-client==4.1.*", "pandas<3"],
    "4.2": ["pyspark-client==4.2.*", "pandas<3"],
    "4.3": ["pyspark[connect]==4.3.*", "pandas<3"],
}
SERVER_REQUIREMENT = "pyspark==4.3.*"
SERVER_VENV = Path(".nox") / "_spark-server"


def _spark_home(session: nox.Session) -> str:
    """The pyspark folder holding the server jars, installed once into its own venv."""
    explicit = os.environ.get("PYSPARK_SAFESTOP_SPARK_HOME")
    if explicit:
        return explicit
    found = sorted(SERVER_VENV.glob("lib/python*/site-packages/pyspark/jars/spark-connect_*.jar"))
    if not found:
        session.run("uv", "venv", "-q", "--python", sys.executable, str(SERVER_VENV), external=True)
        session.run(
            "uv", "pip", "install", "-q", "--python", str(SERVER_VENV / "bin" / "python"),
            SERVER_REQUIREMENT, external=True,
        )  # fmt: skip
        found = sorted(
            SERVER_VENV.glob("lib/python*/site-packages/pyspark/jars/spark-connect_*.jar")
        )
    if not found:
        session.error(f"{SERVER_REQUIREMENT} installed no spark-connect jar in {SERVER_VENV}")
    return str(found[-1].parent.parent.resolve())


@nox.session
@nox.parametrize("line", list(LINES))
def tests(session: nox.Session, line: str) -> None:
    """The test suite on one client line, against a real Spark Connect server."""
    spark_home = _spark_home(session)
    session.install(*LINES[line], ".[test]")
    session.run(
        "pytest",
        *session.posargs,
        env={
            "PYSPARK_SAFESTOP_SPARK_HOME": spark_home,
            # Missing Java or jars fail the run here instead of skipping the server tests.
            "PYSPARK_SAFESTOP_REQUIRE_SERVER": "1",
        },
    )


def _line_python(session: nox.Session, line: str) -> str:
    """An interpreter with one client line and this package, in .nox/lines/<line>."""
    venv = Path(".nox") / "lines" / line
    python = venv / "bin" / "python"
    if not python.exists():
        session.run("uv", "venv", "-q", "--python", sys.executable, str(venv), external=True)
    session.run(
        "uv", "pip", "install", "-q", "--python", str(python), *LINES[line], ".", external=True
    )  # fmt: skip
    return str(python.resolve())


@nox.session
def bench(session: nox.Session) -> None:
    """stop() latency and exit time, upstream vs shim, on every client line, in one table."""
    spark_home = _spark_home(session)
    session.install("grpcio", "psutil", "wrapt")
    lines = [f"--line={line}={_line_python(session, line)}" for line in LINES]
    session.run(
        "python", "benchmarks/stop_latency.py", *lines, *session.posargs,
        env={"PYSPARK_SAFESTOP_SPARK_HOME": spark_home},
    )  # fmt: skip


@nox.session
def lint(session: nox.Session) -> None:
    """ruff (lint and format) on everything, mypy --strict on the package."""
    session.install("ruff", "mypy", "types-psutil", "grpc-stubs", "wrapt", "psutil", "pytest")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy", "--strict", "pyspark_safestop")
