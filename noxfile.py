"""The test matrix: the suite against every supported Spark Connect client line, the server
side's own tests once, lint, the pure tests on the one claimed Python no line runs on, and the
activation tests (the package installed for real, from its wheel and in editable mode).

``nox`` runs everything one session after another; ``bash .ci/run`` installs everything first,
then runs the sessions side by side. ``nox -s "tests(line='4.1')"`` runs one line. Each line
gets its own virtual environment, on the Python its entry in ``LINES`` names. The real server
for every line comes from one ``pyspark==4.3.*`` install (the full distribution ships the JVM
jars; the ``pyspark-client`` and ``databricks-connect`` lines have none); every client line
from 3.5 on talks to a 4.3 server. ``nox -s demo`` runs the examples against a real local
server, without and with the shim.
"""

from __future__ import annotations

import fcntl
import os
import sys
from pathlib import Path

import nox

nox.options.default_venv_backend = "uv"
#: uv installs without compiling bytecode (pip compiles by default). Where
#: PYTHONDONTWRITEBYTECODE is set (as on CI machines) every interpreter the tests start would
#: then compile pandas, pyarrow, gRPC and pyspark from source again: about 2 s of CPU each,
#: most of what a child interpreter costs.
os.environ.setdefault("UV_COMPILE_BYTECODE", "1")
nox.options.sessions = ["lint", "tests", "engine", "unit", "activation"]
nox.options.error_on_missing_interpreters = True

#: Client line -> (Python, what to install); ``None``: the interpreter running nox. The
#: databricks-connect lines ship their own ``pyspark`` module and must not get Apache's beside
#: it (both write the same files). 16.1 is the newest for Python 3.11 (its ``pyspark`` says
#: 3.5.2 and is built like 4.0); 19.3 needs Python 3.12 (says 4.4.0.dev0, built like 4.2+).
#: 4.0 (the newest line that installs there) runs on 3.9 and 4.3 on 3.13: the two ends of
#: ``requires-python``, without a line of their own.
LINES: dict[str, tuple[str | None, list[str]]] = {
    "3.5": (None, ["pyspark[connect]==3.5.*", "pandas<2.3", "numpy<2", "pyarrow<17", "protobuf<5"]),
    "4.0": ("3.9", ["pyspark-client==4.0.*", "pandas<3"]),
    "4.1": (None, ["pyspark-client==4.1.*", "pandas<3"]),
    "4.2": (None, ["pyspark-client==4.2.*", "pandas<3"]),
    "4.3": ("3.13", ["pyspark[connect]==4.3.*", "pandas<3"]),
    "dbc-16.1": (None, ["databricks-connect==16.1.*", "pyarrow<20", "pandas<2.3", "numpy<2"]),
    "dbc-19.3": ("3.12", ["databricks-connect==19.3.*"]),
}
#: The client of the ``engine`` session: the server side's own tests (marker ``engine``).
ENGINE_LINE = "4.3"
#: The one line per Python that also runs the tests needing no client line (marker ``pure``);
#: 3.10, which no line runs on, has them in the ``unit`` session.
PURE_LINES = ("4.0", "4.2", "4.3", "dbc-19.3")
#: The lines of the benchmarks and the demo, on the interpreter running nox.
MAIN_LINES = ("3.5", "4.0", "4.1", "4.2", "4.3")
#: Claimed by ``requires-python`` but run by no line: the pure tests, there.
UNIT_PYTHONS = ("3.10",)
UNIT_LINE = "4.2"
SERVER_REQUIREMENT = "pyspark==4.3.*"
SERVER_VENV = Path(".nox") / "_spark-server"
#: Sail answers no query when its own environment holds pyspark 4.3: it gets a venv of its own,
#: with what Sail runs Python UDFs on there (the client and pandas its own tests pin).
SAIL_VENV = Path(".nox") / "_sail-server"
SAIL_REQUIREMENTS = ("pysail", "pyspark-client==4.2.*", "pandas<3")


def _sail(session: nox.Session) -> str:
    """The ``sail`` executable of the Sail tests, installed once into its own venv."""
    sail = SAIL_VENV / "bin" / "sail"
    if not sail.is_file():
        session.run_install(
            "uv", "venv", "-q", "--python", sys.executable, str(SAIL_VENV), external=True
        )  # fmt: skip
        session.run_install(
            "uv", "pip", "install", "-q", "--python", str(SAIL_VENV / "bin" / "python"),
            *SAIL_REQUIREMENTS, external=True,
        )  # fmt: skip
    return str(sail.resolve())


def _spark_home(session: nox.Session) -> str:
    """The pyspark folder holding the server jars, installed once into its own venv."""
    explicit = os.environ.get("PYSPARK_SAFESTOP_SPARK_HOME")
    if explicit:
        return explicit
    found = sorted(SERVER_VENV.glob("lib/python*/site-packages/pyspark/jars/spark-connect_*.jar"))
    if not found:
        # run_install: `nox --install-only` (what .ci/run does first) makes it too.
        session.run_install(
            "uv", "venv", "-q", "--python", sys.executable, str(SERVER_VENV), external=True
        )  # fmt: skip
        session.run_install(
            "uv", "pip", "install", "-q", "--python", str(SERVER_VENV / "bin" / "python"),
            SERVER_REQUIREMENT, external=True,
        )  # fmt: skip
        found = sorted(
            SERVER_VENV.glob("lib/python*/site-packages/pyspark/jars/spark-connect_*.jar")
        )
    if not found:
        session.error(f"{SERVER_REQUIREMENT} installed no spark-connect jar in {SERVER_VENV}")
    return str(found[-1].parent.parent.resolve())


#: The client line of the activation tests' fresh environments and of the demo.
ACTIVATION_LINE = "4.2"
#: The demo's run without the shim hangs on 4.1 (4.2+ only waits 10 s per stop).
DEMO_LINE = "4.1"


def _install_dependencies(session: nox.Session, *extra: str) -> None:
    # The package's dependencies, not the package: installed, its site-wide .pth would activate
    # the shim in every interpreter of the session, including the subprocesses of tests that
    # check what pyspark looks like before the shim touches it. The tests import the checkout;
    # tests/activation installs the package for real, in environments of its own.
    session.install("-r", "pyproject.toml", "--extra", "test", *extra)


#: Lines whose client has the layout of another line (the patch targets, the release pool):
#: they run the wings that meet the client's code (client, shim, plugin: the regressions, the
#: install orders, the watchdog, the everyday patterns) and their Python's pure tests, not the
#: servers' and the command line's tests, which the other line runs on the same layout.
LAYOUT_TWINS = {"dbc-16.1": "4.0", "dbc-19.3": "4.2"}
#: The wings a twin line runs (the folders of tests/, as markers: tests/conftest.py).
TWIN_WINGS = ("client", "shim", "plugin")


@nox.session
@nox.parametrize(
    "python,line",
    # The id keeps the names short (`tests(line='4.1')`); the line's name tells its Python.
    [nox.param(python, line, id=f"line={line!r}") for line, (python, _) in LINES.items()],
)
def tests(session: nox.Session, line: str) -> None:
    """The test suite on one client line, against a real Spark Connect server.

    Without the tests of the server side alone (marker ``engine``): the ``engine`` sessions
    run those, once; the tests that need no client line (marker ``pure``) run on one line per
    Python (``PURE_LINES``); a line in ``LAYOUT_TWINS`` runs the ``TWIN_WINGS`` only.
    """
    _install_dependencies(session, *LINES[line][1])
    _pytest(session, "-m", _line_marks(line), python=LINES[line][0])


def _line_marks(line: str) -> str:
    """The marker expression of a line's session."""
    marks = "not engine" if line in PURE_LINES else "not engine and not pure"
    if line in LAYOUT_TWINS:
        wings = " or ".join((*TWIN_WINGS, "pure") if line in PURE_LINES else TWIN_WINGS)
        marks = f"not engine and ({wings})"
    return marks


#: The server side's own tests in two sessions side by side (each about half of them): the
#: warm and clustered servers, ``serve`` and the regressions on Sail in the first, the rest
#: of the marker ``engine`` in the second.
ENGINE_FIRST = (
    "tests/servers/test_warm_server.py",
    "tests/servers/test_masters.py",
    "tests/cli/test_serve.py",
    "tests/shim/test_regressions_sail.py",
)


@nox.session
@nox.parametrize("part", [1, 2])
def engine(session: nox.Session, part: int) -> None:
    """The tests of the server side alone (marker ``engine``: server life cycle, loopback and
    files, Sail, the shared server, ``serve``, masters and clusters): the same whatever the
    client line, run once, with the ENGINE_LINE client on the interpreter running nox, in two
    parts (``ENGINE_FIRST`` and the rest); the first also runs the everyday patterns on a Sail
    server."""
    _install_dependencies(session, *LINES[ENGINE_LINE][1])
    if part == 1:
        _pytest(session, "-m", "engine", *ENGINE_FIRST, python=None)
        # The everyday patterns on Sail too (each line runs them on Spark): what Sail serves.
        _pytest(session, "tests/plugin/test_everyday.py", "--safestop-engine", "sail", python=None)
    else:
        ignored = [f"--ignore={path}" for path in ENGINE_FIRST]
        _pytest(session, "-m", "engine", *ignored, python=None)


def _compile_checkout(session: nox.Session) -> None:
    """The checkout's own modules compiled, as the installed packages are (UV_COMPILE_BYTECODE),
    for the session's Python."""
    session.run(
        "python", "-m", "compileall", "-q", "pyspark_safestop", "tests", "boot", silent=True
    )


def _pytest(session: nox.Session, *marks: str, python: str | None) -> None:
    _compile_checkout(session)
    session.run(
        "pytest",
        "--ignore=tests/activation",
        # The slowest, in the log: where a line's time goes.
        "--durations=15",
        *marks,
        *session.posargs,
        env={
            "PYSPARK_SAFESTOP_SPARK_HOME": _spark_home(session),
            "PYSPARK_SAFESTOP_SAIL": _sail(session),
            # Missing Java or jars fail the run here instead of skipping the server tests.
            "PYSPARK_SAFESTOP_REQUIRE_SERVER": "1",
            **_grpc_fork_env(python),
            **_server_jvm(session),
        },
    )


#: The tests' servers live seconds to minutes and answer small queries: with the JVM's first
#: compiler only and the serial collector, one takes about half the CPU (README, pytest
#: plugin; benchmarks/server_jvm.py), which four sessions side by side on two cores lack.
#: SPARK_SUBMIT_OPTS: Spark's own variable for the options of the JVM spark-submit starts.
TEST_SERVER_JVM = {"SPARK_SUBMIT_OPTS": "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"}
#: The classes a test server loads to start and answer its first queries, archived once (the
#: JVM's class-data sharing): every later start maps them instead of loading them from the
#: jars: a start and its first queries take about half the CPU.
#: The JVM ignores an archive that does not match it (another JDK, other jars), with a warning.
SERVER_ARCHIVE = SERVER_VENV / "test-server.jsa"
#: Run by a line's interpreter: a server started with the archive to write at its exit, a few
#: queries of the kinds the tests send, then stopped.
_ARCHIVE_SCRIPT = """
from pyspark_safestop import connect_session
from pyspark_safestop.servers import SparkConnectServer, find_spark_home
# The JVM writes the archive as it exits, which takes longer than a stop's usual grace.
server = SparkConnectServer(find_spark_home(), stop_grace=300)
with server, connect_session(server.url) as spark:
    df = spark.range(100).selectExpr("id", "id % 7 AS k")
    df.groupBy("k").count().join(df, "k").orderBy("k").limit(5).collect()
    spark.sql("SELECT 1 AS one").toPandas()
    spark.createDataFrame([(1, "a")], ["n", "s"]).collect()
"""


def _server_jvm(session: nox.Session) -> dict[str, str]:
    """The test servers' JVM options: TEST_SERVER_JVM, with the class archive, made first when
    missing (also under ``nox --install-only``) by this session's interpreter, which must have
    the session's dependencies. Without an archive (it could not be made) they still run."""
    options = TEST_SERVER_JVM["SPARK_SUBMIT_OPTS"]
    archive = SERVER_ARCHIVE.resolve()
    lock_path = SERVER_VENV / "test-server.jsa.lock"
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # sessions side by side make it once
        if not archive.exists():
            partial = archive.with_suffix(".partial.jsa")
            try:
                session.run_install(
                    "python", "-c", _ARCHIVE_SCRIPT,
                    env={
                        "PYTHONPATH": str(Path.cwd()),
                        "PYTHONWARNINGS": "ignore",  # a client's warnings: not the tests'
                        # Its own Spark home too: a thin client's `python -c` looks for one.
                        "SPARK_HOME": _spark_home(session),
                        "PYSPARK_SAFESTOP_SPARK_HOME": _spark_home(session),
                        "SPARK_SUBMIT_OPTS": f"{options} -XX:ArchiveClassesAtExit={partial}",
                    },
                )  # fmt: skip
                if partial.exists():
                    partial.replace(archive)
            except Exception as error:  # the tests run without it, only slower
                session.warn(f"no class archive for the test servers: {error}")
    if archive.exists():
        options += f" -XX:SharedArchiveFile={archive}"
    return {"SPARK_SUBMIT_OPTS": options}


def _grpc_fork_env(python: str | None) -> dict[str, str]:
    """Python 3.9's subprocess forks (3.10+ uses vfork): in a process where gRPC is busy, its
    fork handlers then abort or hang the child before exec (README, Limitations;
    benchmarks/grpc_fork.py). The tests start thousands of children from such processes."""
    return {"GRPC_ENABLE_FORK_SUPPORT": "0"} if python == "3.9" else {}


@nox.session(python=UNIT_PYTHONS)
def unit(session: nox.Session) -> None:
    """The tests that need neither a client line nor a server (marker ``pure``), on a Python
    that no client line runs on."""
    spark_home = _spark_home(session)  # some read the jars without starting a server
    _install_dependencies(session, *LINES[UNIT_LINE][1])
    _compile_checkout(session)
    session.run(
        "pytest", "--ignore=tests/activation", "-m", "pure", *session.posargs,
        env={"PYSPARK_SAFESTOP_SPARK_HOME": spark_home, **_server_jvm(session)},
    )  # fmt: skip


@nox.session
def activation(session: nox.Session) -> None:
    """The package installed for real (wheel, editable) in fresh environments: the .pth, the
    pytest plugin under xdist, doctor, serve; then the start-up cost of the .pth."""
    spark_home = _spark_home(session)
    _install_dependencies(session, "uv", *LINES[ACTIVATION_LINE][1])
    _compile_checkout(session)
    session.run(
        "pytest",
        "tests/activation",
        *session.posargs,
        env={
            "PYSPARK_SAFESTOP_SPARK_HOME": spark_home,
            "PYSPARK_SAFESTOP_REQUIRE_SERVER": "1",
            "PYSPARK_SAFESTOP_ACTIVATION_CLIENT": " ".join(LINES[ACTIVATION_LINE][1]),
            **_server_jvm(session),
        },
    )
    session.run("python", "benchmarks/startup.py", "--runs", "200")


@nox.session
def demo(session: nox.Session) -> None:
    """The examples against a real local server: they hang without the shim, pass with it.

    ``nox -s demo -- --line 4.1`` picks another client line; other arguments go to
    examples/demo.py (``--timeout``, ``--all``).
    """
    args = list(session.posargs)
    line = DEMO_LINE
    if "--line" in args:
        at = args.index("--line")
        line = args[at + 1] if at + 1 < len(args) else ""
        del args[at : at + 2]
    if line not in MAIN_LINES:
        session.error(f"--line must be one of {', '.join(MAIN_LINES)}")
    spark_home = _spark_home(session)
    session.install(*LINES[line][1], ".[test,testing]")
    session.run(
        "python", "examples/demo.py", *args, env={"PYSPARK_SAFESTOP_SPARK_HOME": spark_home}
    )


def _line_python(session: nox.Session, line: str) -> str:
    """An interpreter with one client line and this package, in .nox/lines/<line>."""
    venv = Path(".nox") / "lines" / line
    python = venv / "bin" / "python"
    if not python.exists():
        session.run("uv", "venv", "-q", "--python", sys.executable, str(venv), external=True)
    session.run(
        "uv", "pip", "install", "-q", "--python", str(python), *LINES[line][1], ".", external=True
    )  # fmt: skip
    # Not resolve(): the venv's python is a symlink to the base interpreter, which has no pyspark.
    return str(python.absolute())


@nox.session
def bench(session: nox.Session) -> None:
    """stop() latency and exit time, upstream vs shim, on every client line, in one table."""
    spark_home = _spark_home(session)
    session.install("grpcio", "psutil", "wrapt")
    lines = [f"--line={line}={_line_python(session, line)}" for line in MAIN_LINES]
    session.run(
        "python", "benchmarks/stop_latency.py", *lines, *session.posargs,
        env={"PYSPARK_SAFESTOP_SPARK_HOME": spark_home},
    )  # fmt: skip


EVIDENCE = (
    "stop_latency", "chart", "fault_matrix", "resource_growth", "suite_shaped", "seed_size",
    "watchdog", "server_dies", "release_pool",
)  # fmt: skip


@nox.session
def evidence(session: nox.Session) -> None:
    """Every benchmark behind the README's "Measured" section, on every client line.

    ``nox -s evidence -- fault_matrix suite_shaped`` runs some of them (names: see EVIDENCE).
    About 1.5 h on a 2-core machine; JSON goes to benchmarks/results/, the chart to docs/.
    """
    wanted = list(session.posargs) or list(EVIDENCE)
    unknown = sorted(set(wanted) - set(EVIDENCE))
    if unknown:
        session.error(f"unknown benchmark(s) {unknown}; choose from {', '.join(EVIDENCE)}")
    spark_home = _spark_home(session)
    session.install(".[bench]")
    pythons = {line: _line_python(session, line) for line in MAIN_LINES}
    for python in pythons.values():
        # The suite-shaped runs are pytest suites, also under pytest-xdist.
        session.run(
            "uv", "pip", "install", "-q", "--python", python, "pytest>=7", "pytest-xdist>=3",
            external=True,
        )  # fmt: skip
    lines = [f"--line={line}={python}" for line, python in pythons.items()]
    env = {"PYSPARK_SAFESTOP_SPARK_HOME": spark_home}
    commands = {
        "stop_latency": ["benchmarks/stop_latency.py", *lines],
        "chart": ["benchmarks/chart.py", "--out", "docs/stop_latency.png"],
        "fault_matrix": ["benchmarks/fault_matrix.py", *lines],
        "resource_growth": ["benchmarks/resource_growth.py", *lines],
        "suite_shaped": ["benchmarks/suite_shaped.py", *lines],
        "seed_size": [
            "benchmarks/suite_shaped.py", "--seed-size", "--fractions=0.01",
            "--parallel-fraction=-1", "--timeout=900",
            f"--line=4.1={pythons['4.1']}", f"--line=4.3={pythons['4.3']}",
            "--json=benchmarks/results/suite_shaped_seed_size.json",
        ],
        "watchdog": ["benchmarks/watchdog.py", *lines],
        "server_dies": ["benchmarks/server_dies.py", *lines],
        "release_pool": ["benchmarks/release_pool.py", *lines],
    }  # fmt: skip
    for name in EVIDENCE:
        if name in wanted:
            session.run("python", *commands[name], env=env)


LINT_TOOLS = ("ruff==0.17.6", "mypy==2.4.1", "types-psutil==7.2.2.20261111", "grpc-stubs==1.53.0.6")


@nox.session
def lint(session: nox.Session) -> None:
    """ruff (lint and format) on everything, mypy --strict on the package."""
    # Pinned: a new release of a linter must not turn a green tree red overnight.
    session.install(*LINT_TOOLS, "wrapt", "psutil", "pytest")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy", "--strict", "pyspark_safestop", "boot")
