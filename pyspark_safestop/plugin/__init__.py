"""The pytest plugin: the shim active from pytest's start, a report header, real-server fixtures.

Installing the package registers this plugin (``pytest11`` entry point ``pyspark_safestop``);
``-p no:pyspark_safestop`` turns it off. Loading it imports the package, which activates the
shim (unless ``PYSPARK_SAFESTOP=0``), also where the site-wide ``.pth`` is skipped
(``python -S``, ``PYTHONPATH`` set-ups).

Fixtures:

``spark_connect_server``
    Session-scoped: a real local server of the chosen engine (``--safestop-engine``): Spark
    Connect started from the installed jars (the default), or Sail. On a port the OS picks,
    bound to 127.0.0.1, no UI, stopped at teardown and never outliving the test process (see
    :mod:`._local_server`); a Spark server is usable only with its own random token, a Sail
    server by every local user (Sail checks no secret). One per pytest-xdist worker, or, with
    ``--safestop-shared-server``, one for the whole run, hosted by its main process (see
    :mod:`._shared_server`); its log is in pytest's temporary directory, and its tail is
    attached to the report of a failing test that used it.
``spark_connect_server_factory``
    Session-scoped: ``factory(engine="spark"|"sail", conf={...})`` starts another server on
    demand (for differential suites: the same queries on two engines); every one is stopped at
    the end of the session.
``spark_connect_url``
    Session-scoped: ``sc://localhost:PORT/;token=TOKEN`` of that server, or the
    ``--safestop-remote`` URL (then no server is started). On the 3.5 client line, a token
    reaches a local server only through :func:`connect_session` and the session fixtures.
``spark`` / ``spark_per_class``
    A Spark Connect session on that URL for one test / one test class, stopped safely at
    teardown: through the shim, or, with the shim off, by :func:`stop_safely`.

For another scope, write a fixture around :func:`connect_session`.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import warnings
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import pytest

from .. import __version__, connect_session, install, is_installed, status, stop_safely
from .._settings import (
    DEFAULT_MASTER,
    ENV_HANG_TIMEOUT,
    ENV_MASTER,
    MAX_TIMEOUT,
    SafestopWarning,
    enabled_from_env,
    environment_problems,
    master_from_env,
    validate_master,
    validate_timeout,
)
from ..client import _layouts
from ..client._probe import import_connect
from ..servers._engines import (
    ENGINES,
    ENV_ENGINE,
    EngineUnavailable,
    check_engine,
    describe,
    engine_from_env,
    make_server,
    python_workers,
)
from ..servers._local import LocalServer
from ..servers._shared import (
    FOLDER_NAME,
    SharedServer,
    SharedServerFailed,
    SharedServerHost,
    wait_for_shared_server,
)
from ..servers._spark import find_spark_home
from ..servers._supervisor import MAX_RESTARTS, Death, Supervisor
from ..shim._watchdog import hangs_since, longest_wait

__all__ = [
    "ENV_REMOTE",
    "ENV_REQUIRE_SERVER",
    "PluginSettings",
    "ServerFactory",
    "connect_session",
    "spark",
    "spark_connect_server",
    "spark_connect_server_factory",
    "spark_connect_url",
    "spark_per_class",
    "stop_safely",
]

#: ``1`` makes a missing Java, missing jars or ``--safestop-remote`` fail the tests that need a
#: local server instead of skipping them (as ``--safestop-require-server`` does).
ENV_REQUIRE_SERVER = "PYSPARK_SAFESTOP_REQUIRE_SERVER"
#: The server the fixtures use, as ``--safestop-remote`` says. An URL holding a token belongs in
#: the environment (only its user reads it), not on a command line, which ``ps`` shows to all.
ENV_REMOTE = "PYSPARK_SAFESTOP_REMOTE"

DEFAULT_START_TIMEOUT = 120.0
#: The hang watchdog's timeout under pytest when nothing sets one. A healthy call's longest
#: wait for its next response is bounded by the server: it ends an execution's response
#: stream after two minutes without results (spark.connect.execute.reattachable.
#: senderMaxStreamDuration), and the client reattaches with a new call. Five times that.
PYTEST_HANG_TIMEOUT = 600.0
#: More restarts than this is a crash loop whatever the option says.
_MAX_RESTARTS_ALLOWED = 1000
#: Log lines attached to a failing test's report.
LOG_TAIL_LINES = 60


@dataclass(frozen=True)
class PluginSettings:
    """The plugin's settings, from the command line, else the ini file, else the default."""

    remote: str | None = None
    release_timeout: float | None = None
    #: Seconds an RPC may wait for its next response (None: from the environment, 0: off).
    hang_timeout: float | None = None
    #: Seconds a server may stay unreachable (None: from the environment, 0: off).
    unreachable_timeout: float | None = None
    start_timeout: float = DEFAULT_START_TIMEOUT
    server_conf: dict[str, str] = field(default_factory=dict)
    spark_home: str | None = None
    require_server: bool = False
    #: The engine of the fixtures' server: "spark" or "sail".
    engine: str = "spark"
    #: One server for the whole run (xdist workers included), hosted by its main process.
    shared_server: bool = False
    #: Where a Spark server's executors run (``None`` for Sail, which has no master).
    master: str | None = DEFAULT_MASTER
    #: How many times a local server that dies is started again (0: never).
    server_restarts: int = MAX_RESTARTS


_SETTINGS = pytest.StashKey[PluginSettings]()
_SERVER = pytest.StashKey["LocalServer | SharedServer"]()
_HOST = pytest.StashKey[SharedServerHost]()
#: How many hangs the watchdog had recorded when a test started, and how many were reported.
_HANGS_SEEN = pytest.StashKey[list[int]]()
#: Restarts the local servers this process started when they die.
_SUPERVISOR = pytest.StashKey[Supervisor]()
#: The deaths of the xdist workers' servers, in the controller (``pytest_testnodedown``).
_WORKER_DEATHS = pytest.StashKey[list[dict[str, object]]]()
_WORKER_OUTPUT_KEY = "pyspark_safestop_deaths"
#: How many server deaths were noticed when a test started.
_DEATHS_SEEN = pytest.StashKey[int]()


# -- options ------------------------------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    """Register the ``--safestop-*`` options and the ``safestop_*`` ini keys."""
    group = parser.getgroup("pyspark-safestop", "Spark Connect sessions that stop safely")

    def option(name: str, help_text: str, **kwargs: Any) -> None:
        dest = f"safestop_{name.replace('-', '_')}"
        group.addoption(f"--safestop-{name}", dest=dest, help=help_text, **kwargs)

    option(
        "remote",
        "use this Spark Connect server or cluster (sc://HOST:PORT) and start none "
        f"(ini: safestop_remote; also {ENV_REMOTE}, the place for a URL with a token)",
        metavar="URL",
    )
    option(
        "release-timeout",
        "seconds allowed for the server-side release in stop() "
        "(ini: safestop_release_timeout; default: PYSPARK_SAFESTOP_RELEASE_TIMEOUT, else 5)",
        metavar="SECONDS",
    )
    option(
        "hang-timeout",
        "declare a Spark Connect RPC hung after this many seconds without its next response: "
        "the call is cancelled, the test fails with RpcHangError and a report of the call "
        "(ini: safestop_hang_timeout; default: PYSPARK_SAFESTOP_HANG_TIMEOUT, else "
        f"{PYTEST_HANG_TIMEOUT:g}; 0: off)",
        metavar="SECONDS",
    )
    option(
        "unreachable-timeout",
        "fail a Spark Connect call with ServerUnreachableError once its server has been "
        "unreachable this long, instead of the client's minutes of retries (ini: "
        "safestop_unreachable_timeout; default: PYSPARK_SAFESTOP_UNREACHABLE_TIMEOUT, else 30; "
        "0: off)",
        metavar="SECONDS",
    )
    option(
        "server-restarts",
        "start a local server that dies (the OOM killer, a crash) again, on the same URL, up "
        f"to this many times (ini: safestop_server_restarts; default {MAX_RESTARTS}; 0: never)",
        metavar="N",
    )
    option(
        "server-start-timeout",
        "seconds the local server may take to start "
        f"(ini: safestop_server_start_timeout; default {DEFAULT_START_TIMEOUT:g})",
        metavar="SECONDS",
    )
    option(
        "server-conf",
        "extra Spark conf for the local server (for Sail: a SAIL_* setting), repeatable "
        "(ini: safestop_server_conf, one KEY=VALUE per line)",
        metavar="KEY=VALUE",
        action="append",
    )
    option(
        "spark-home",
        "Spark distribution (or pyspark folder) with the server jars (ini: safestop_spark_home; "
        "default: PYSPARK_SAFESTOP_SPARK_HOME, the installed pyspark, SPARK_HOME)",
        metavar="PATH",
    )
    option(
        "require-server",
        "fail, instead of skipping, tests that need a local server when none can be started "
        f"(ini: safestop_require_server; also {ENV_REQUIRE_SERVER}=1)",
        action="store_true",
        default=None,
    )
    option(
        "engine",
        "engine of the local server: spark (a JVM, owner-only) or sail (Rust, no "
        f"authentication) (ini: safestop_engine; default: {ENV_ENGINE}, else spark)",
        choices=ENGINES,
    )
    option(
        "master",
        "where the local Spark server's executors run: local[N], local-cluster[N,CORES,MB] "
        "(executors in JVMs of their own) or spark://HOST:PORT of a standalone cluster on this "
        f"machine (ini: safestop_master; default: {ENV_MASTER}, else {DEFAULT_MASTER})",
        metavar="MASTER",
    )
    option(
        "shared-server",
        "one local server for the whole run, pytest-xdist workers included, started when a "
        "test first needs it and stopped when the run ends (ini: safestop_shared_server)",
        action="store_true",
        default=None,
    )
    parser.addini("safestop_remote", "Spark Connect URL to use instead of a local server")
    parser.addini("safestop_engine", "engine of the local server: spark or sail")
    parser.addini("safestop_master", "master of the local Spark server")
    parser.addini("safestop_shared_server", "one local server for the whole xdist run", type="bool")
    parser.addini("safestop_release_timeout", "seconds allowed for the release in stop()")
    parser.addini("safestop_hang_timeout", "seconds an RPC may wait for its next response")
    parser.addini("safestop_unreachable_timeout", "seconds a server may stay unreachable")
    parser.addini("safestop_server_start_timeout", "seconds the local server may take to start")
    parser.addini("safestop_server_restarts", "times a local server that dies is restarted")
    parser.addini("safestop_server_conf", "extra Spark confs, KEY=VALUE per line", type="linelist")
    parser.addini("safestop_spark_home", "Spark distribution with the server jars")
    parser.addini("safestop_require_server", "fail instead of skip without a server", type="bool")


def _raw(config: pytest.Config, name: str) -> Any:
    value = config.getoption(f"safestop_{name}", None)
    if value is None or value == []:
        value = config.getini(f"safestop_{name}")
    return value if value not in ("", [], None) else None


def _seconds(text: object, name: str) -> float:
    try:
        return validate_timeout(float(str(text)), name)
    except ValueError:
        raise pytest.UsageError(
            f"{name} must be a positive number of seconds, at most {MAX_TIMEOUT:g}, got {text!r}"
        ) from None


def _seconds_or_off(text: object, name: str) -> float:
    # 0 turns it off, also against its environment variable.
    try:
        if float(str(text)) == 0:
            return 0.0
    except ValueError:
        pass
    return _seconds(text, name)


def read_settings(config: pytest.Config) -> PluginSettings:
    """Validate the plugin's options and ini keys; raise ``pytest.UsageError`` on a bad one."""
    remote = _raw(config, "remote")
    if remote is None and os.environ.get(ENV_REMOTE, "").strip():
        remote = os.environ[ENV_REMOTE]
    if remote is not None:
        remote = str(remote).strip()
        host = remote[len("sc://") :].split("/", 1)[0].split(":", 1)[0]
        if not remote.startswith("sc://") or not host:
            raise pytest.UsageError(
                f"--safestop-remote / safestop_remote / {ENV_REMOTE} must be sc://HOST:PORT, "
                f"got {remote!r}"
            )
    timeout = _raw(config, "release_timeout")
    hang = _raw(config, "hang_timeout")
    unreachable = _raw(config, "unreachable_timeout")
    start = _raw(config, "server_start_timeout")
    conf: dict[str, str] = {}
    lines = list(config.getini("safestop_server_conf") or [])
    lines += config.getoption("safestop_server_conf", None) or []
    for line in lines:
        key, sep, value = str(line).partition("=")
        if not sep or not key.strip():
            raise pytest.UsageError(f"a server conf must be KEY=VALUE, got {line!r}")
        conf[key.strip()] = value.strip()
    require = config.getoption("safestop_require_server", None)
    if require is None:
        require = bool(config.getini("safestop_require_server"))
    require = require or os.environ.get(ENV_REQUIRE_SERVER) == "1"
    home = _raw(config, "spark_home")
    engine = _raw(config, "engine")
    try:
        engine = engine_from_env() if engine is None else check_engine(str(engine).strip())
    except ValueError as error:
        raise pytest.UsageError(f"--safestop-engine / safestop_engine: {error}") from None
    shared = config.getoption("safestop_shared_server", None)
    if shared is None:
        shared = bool(config.getini("safestop_shared_server"))
    master = _master(_raw(config, "master"), conf, engine)
    restarts = _raw(config, "server_restarts")
    if timeout is not None:
        timeout = _seconds(timeout, "--safestop-release-timeout")
    if hang is not None:
        hang = _seconds_or_off(hang, "--safestop-hang-timeout")
    elif not os.environ.get(ENV_HANG_TIMEOUT, "").strip():
        hang = PYTEST_HANG_TIMEOUT
    if unreachable is not None:
        unreachable = _seconds_or_off(unreachable, "--safestop-unreachable-timeout")
    start = (
        DEFAULT_START_TIMEOUT
        if start is None
        else _seconds(start, "--safestop-server-start-timeout")
    )
    return PluginSettings(
        remote=remote,
        release_timeout=timeout,
        hang_timeout=hang,
        unreachable_timeout=unreachable,
        start_timeout=start,
        server_conf=conf,
        spark_home=None if home is None else str(home),
        require_server=bool(require),
        engine=engine,
        shared_server=bool(shared),
        master=master,
        server_restarts=MAX_RESTARTS if restarts is None else _count(restarts),
    )


def _count(text: object) -> int:
    where = "--safestop-server-restarts / safestop_server_restarts"
    try:
        value = int(str(text).strip())
    except ValueError:
        value = -1
    if not 0 <= value <= _MAX_RESTARTS_ALLOWED:
        raise pytest.UsageError(
            f"{where} must be a whole number from 0 to {_MAX_RESTARTS_ALLOWED}, got {text!r}"
        )
    return value


def _master(raw: object, conf: dict[str, str], engine: str) -> str | None:
    """The local Spark server's master: the option, else a ``spark.master`` server conf, else
    the environment; a conf that says otherwise than the option is refused, never ignored."""
    where = "--safestop-master / safestop_master"
    conf_master = conf.get("spark.master")
    if engine == "sail":
        if raw is not None or conf_master is not None:
            raise pytest.UsageError(f"{where}: a Sail server has no Spark master")
        return None
    try:
        master = None if raw is None else validate_master(str(raw), where)
        if conf_master is not None:
            conf_master = validate_master(conf_master, "--safestop-server-conf spark.master")
    except ValueError as error:
        raise pytest.UsageError(str(error)) from None
    if master is not None and conf_master is not None and master != conf_master:
        raise pytest.UsageError(
            f"the server's master is given twice: {where} {master!r} and "
            f"--safestop-server-conf spark.master={conf_master!r}"
        )
    if master is None and conf_master is not None:
        master = conf_master
    conf.pop("spark.master", None)
    return master if master is not None else master_from_env()


def _shown(url: str) -> str:
    """``url`` as reports may show it: without its token."""
    return re.sub(r"(;token=)[^;]*", r"\1…", url)


def _is_xdist_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def pytest_configure(config: pytest.Config) -> None:
    """Validate the settings; apply the timeouts to the shim; watch the servers it starts."""
    settings = read_settings(config)
    config.stash[_SETTINGS] = settings
    config.stash[_SUPERVISOR] = Supervisor(settings.server_restarts)
    timeouts = (settings.release_timeout, settings.hang_timeout, settings.unreachable_timeout)
    if any(timeout is not None for timeout in timeouts) and enabled_from_env() and is_installed():
        install(
            release_timeout=settings.release_timeout,
            hang_timeout=settings.hang_timeout,
            unreachable_timeout=settings.unreachable_timeout,
        )
    if "SPARK_HOME" not in os.environ and not _pyspark_is_spark_home():
        # The thin distributions (pyspark-client, Databricks Connect) have no Spark home, and
        # pyspark exits (SystemExit) where it looks for one: importing pyspark.testing, and,
        # on 4.2+, importing its Connect client under a `python -c` main, which an xdist
        # worker is. The server's own Spark home satisfies both.
        home = find_spark_home(settings.spark_home)
        if home is not None:
            os.environ["SPARK_HOME"] = str(home)


def _pyspark_is_spark_home() -> bool:
    return any(
        (Path(folder) / "bin" / "spark-submit").is_file()
        for folder in _layouts.pyspark_package_dirs()
    )


def pytest_sessionstart(session: pytest.Session) -> None:
    """With a shared server, the run's main process hosts it (it starts when first asked)."""
    config = session.config
    settings = config.stash.get(_SETTINGS, None)
    if settings is None or not settings.shared_server or settings.remote:
        return
    if _is_xdist_worker(config):
        return
    # The base every xdist worker's own base temporary folder is made in.
    base = config._tmp_path_factory.getbasetemp()  # type: ignore[attr-defined]

    def build(log_path: Path) -> LocalServer:
        return make_server(
            settings.engine,
            log_path=log_path,
            start_timeout=settings.start_timeout,
            conf=settings.server_conf,
            spark_home=settings.spark_home,
            master=settings.master,
        )

    config.stash[_HOST] = SharedServerHost(
        Path(base) / FOLDER_NAME, build, config.stash[_SUPERVISOR]
    )


def pytest_unconfigure(config: pytest.Config) -> None:
    """Stop the run's shared server, when this process hosts one (also after an interrupt)."""
    supervisor = config.stash.get(_SUPERVISOR, None)
    if supervisor is not None:
        supervisor.close()
    host = config.stash.get(_HOST, None)
    if host is not None:
        del config.stash[_HOST]
        host.close()


# -- report -------------------------------------------------------------------------------------


def describe_shim() -> str:
    """One line: whether the shim is active, on which pyspark version and client layout, and
    any environment variable whose bad value was replaced by its default.

    Imports pyspark's Spark Connect client (when it is installed) to tell its layout. Never
    raises, whatever pyspark looks like.
    """
    # Errors (SystemExit too: pyspark's dependency check exits in some set-ups) are reported.
    error = import_connect()
    info = status()
    if info["installed"]:
        state = f"active (activated by {info['activated_by']})"
    elif not info["enabled"]:
        state = "OFF (PYSPARK_SAFESTOP=0)"
    else:
        state = "not active (uninstalled)"
    version = info["pyspark_version"] or "(version unknown)"
    # Imported above when installed: a pyspark whose version cannot be read is still there.
    if info["pyspark_version"] is None and "pyspark" not in sys.modules:
        where = "pyspark not installed"
    elif info["layout"] is not None:
        where = f"pyspark {version}, layout {info['layout']}"
    elif error is not None:
        where = f"pyspark {version}, Spark Connect client not importable ({error})"
    elif info["layout_problem"] == "unknown":
        where = f"pyspark {version}, Spark Connect client not recognised (left untouched)"
    else:
        where = f"pyspark {version}, Spark Connect client not importable"
    timeout = info["settings"]["release_timeout"]
    hang = info["settings"]["hang_timeout"]
    watchdog = "off" if hang is None else f"{hang:g} s"
    line = (
        f"pyspark-safestop {__version__}: {state}; {where}; release timeout {timeout:g} s; "
        f"hang watchdog {watchdog}"
    )
    # Here too, because a warning about them may have gone to the logger (warnings as errors).
    return "".join([line, *(f"; bad setting: {problem}" for problem in environment_problems())])


def pytest_report_header(config: pytest.Config) -> list[str]:
    """The shim's state, and the server the fixtures use (not in xdist workers: unseen)."""
    if _is_xdist_worker(config):
        return []
    lines = [describe_shim()]
    settings = config.stash.get(_SETTINGS, None)
    if settings is not None and settings.remote:
        lines.append(f"pyspark-safestop: fixtures use {_shown(settings.remote)} (no local server)")
    elif settings is not None:
        scope = "one for the whole run" if settings.shared_server else "one per process"
        where = f"master {settings.master}; " if settings.master else ""
        lines.append(
            f"pyspark-safestop: fixtures use {describe(settings.engine)}, {scope}; {where}"
            f"Python workers: {_workers_line(settings)}"
        )
    return lines


def _workers_line(settings: PluginSettings) -> str:
    described, problems = python_workers(settings.engine, spark_home=settings.spark_home)
    return "; ".join([described, *(f"WARNING: {problem}" for problem in problems)])


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Note how many RPC hangs and server deaths were recorded before this test (its report
    shows the new ones)."""
    count, _ = hangs_since(0)
    item.stash[_HANGS_SEEN] = [count]
    supervisor = item.config.stash.get(_SUPERVISOR, None)
    if supervisor is not None:
        # A server that died is started again before the next test, on the same URL.
        supervisor.settle()
        item.stash[_DEATHS_SEEN] = len(supervisor.deaths())
    server = item.config.stash.get(_SERVER, None)
    if isinstance(server, SharedServer):
        # The host restarts the run's server; a worker waits for that here, as above.
        server.follow(item.config.stash[_SETTINGS].start_timeout)


def _hang_sections(item: pytest.Item) -> list[tuple[str, str]]:
    seen = item.stash.get(_HANGS_SEEN, None)
    if seen is None:
        return []
    count, new = hangs_since(seen[0])
    seen[0] = count
    return [
        (
            "Spark Connect RPC hung",
            f"{hang.describe()}\n\nThreads when it was declared:\n{hang.stacks}",
        )
        for hang in new
    ]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    """Attach to the report of a failing test the RPCs declared hung while it ran (with every
    thread's stack), and the tail of the server's log if it used the local server."""
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        report.sections.extend(_hang_sections(item))
        report.sections.extend(_death_sections(item))
    server = item.config.stash.get(_SERVER, None)
    used = "spark_connect_server" in getattr(item, "fixturenames", ())
    if report.failed and server is not None and used:
        title = f"Spark Connect server log (tail of {server.log_path})"
        report.sections.append((title, server.log_tail(LOG_TAIL_LINES)))


def _death_sections(item: pytest.Item) -> list[tuple[str, str]]:
    supervisor = item.config.stash.get(_SUPERVISOR, None)
    seen = item.stash.get(_DEATHS_SEEN, None)
    if supervisor is None or seen is None:
        return []
    return [
        ("Spark Connect server died", f"{death.describe()}\n\nIts log's tail:\n{death.log_tail}")
        for death in supervisor.deaths(seen)
    ]


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """Say how many times the servers this process started died, and what became of them;
    with ``-v``, the longest wait for a response against the hang timeout."""
    hang = status()["settings"]["hang_timeout"]
    waited, method = longest_wait()
    if config.getoption("verbose", 0) > 0 and hang is not None and method:
        terminalreporter.write_line(
            f"pyspark-safestop: the longest wait for a response was {waited:.1f} s "
            f"({method}); hang watchdog {hang:g} s"
        )
    supervisor = config.stash.get(_SUPERVISOR, None)
    deaths = [] if supervisor is None else [_death_shown(d) for d in supervisor.deaths()]
    from_workers: list[dict[str, object]] = config.stash.get(_WORKER_DEATHS, [])
    deaths.extend(from_workers)
    if not deaths:
        return
    restarted = sum(bool(death["restarted"]) for death in deaths)
    terminalreporter.write_sep("=", "pyspark-safestop: local servers that died")
    for death in deaths:
        terminalreporter.write_line(f"{death['where']}{death['described']}")
    terminalreporter.write_line(f"{len(deaths)} death(s), {restarted} restart(s)")


def _death_shown(death: Death, where: str = "") -> dict[str, object]:
    return {"where": where, "described": death.describe(), "restarted": death.restarted}


def pytest_sessionfinish(session: pytest.Session) -> None:
    """In an xdist worker: hand the deaths of its servers to the controller's summary."""
    config = session.config
    supervisor = config.stash.get(_SUPERVISOR, None)
    if supervisor is not None and _is_xdist_worker(config):
        worker = config.workerinput.get("workerid", "?")  # type: ignore[attr-defined]
        shown = [_death_shown(death, f"[{worker}] ") for death in supervisor.deaths()]
        config.workeroutput[_WORKER_OUTPUT_KEY] = shown  # type: ignore[attr-defined]


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """In the xdist controller: collect what a worker's servers went through."""
    shown = getattr(node, "workeroutput", {}).get(_WORKER_OUTPUT_KEY, [])
    node.config.stash.setdefault(_WORKER_DEATHS, []).extend(shown)


# -- fixtures -----------------------------------------------------------------------------------


def _unavailable(settings: PluginSettings, reason: str) -> NoReturn:
    if settings.require_server:
        pytest.fail(f"a local Spark Connect server is required here, but {reason}", pytrace=False)
    pytest.skip(reason)


def _new_server(
    settings: PluginSettings,
    engine: str,
    conf: dict[str, str],
    log_path: Path,
    master: str | None = None,
) -> LocalServer:
    try:
        return make_server(
            engine,
            log_path=log_path,
            start_timeout=settings.start_timeout,
            conf=conf,
            spark_home=settings.spark_home,
            master=master,
        )
    except EngineUnavailable as missing:
        _unavailable(settings, str(missing))
    except ValueError as error:
        pytest.fail(f"--safestop-server-conf / safestop_server_conf: {error}", pytrace=False)


def _shared_server(
    config: pytest.Config, settings: PluginSettings, tmp_path_factory: pytest.TempPathFactory
) -> SharedServer:
    base = tmp_path_factory.getbasetemp()
    # An xdist worker's base is made in the run's, where the main process hosts the server.
    folder = (base.parent if _is_xdist_worker(config) else base) / FOLDER_NAME
    try:
        return wait_for_shared_server(folder, settings.start_timeout)
    except SharedServerFailed as failed:
        if failed.kind == EngineUnavailable.__name__:
            _unavailable(settings, failed.reason)
        pytest.fail(str(failed), pytrace=False)
    except (RuntimeError, ValueError) as error:
        pytest.fail(str(error), pytrace=False)


@pytest.fixture(scope="session")
def spark_connect_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LocalServer | SharedServer]:
    """A real local server of the chosen engine on 127.0.0.1, for this test session (or xdist
    worker; with ``--safestop-shared-server``, for the whole run)."""
    config = request.config
    settings = config.stash[_SETTINGS]
    if settings.remote:
        _unavailable(
            settings, f"the fixtures use {_shown(settings.remote)}: no local server is started"
        )
    if settings.shared_server:
        shared = _shared_server(config, settings, tmp_path_factory)
        config.stash[_SERVER] = shared
        try:
            yield shared
        finally:
            del config.stash[_SERVER]
        return
    log_path: Path = tmp_path_factory.mktemp(f"{settings.engine}-server") / "server.log"
    server = _new_server(settings, settings.engine, settings.server_conf, log_path, settings.master)
    config.stash[_SERVER] = server
    supervisor = config.stash[_SUPERVISOR]
    try:
        server.start()
        supervisor.watch(server)
        yield server
    finally:
        supervisor.forget(server)  # first: a server being stopped is no death
        server.stop()
        del config.stash[_SERVER]


class ServerFactory:
    """Starts local servers on demand: ``factory(engine="sail", conf={...})``; see
    :func:`spark_connect_server_factory`. Every server it started is stopped by :meth:`close`."""

    def __init__(
        self,
        settings: PluginSettings,
        tmp_path_factory: pytest.TempPathFactory,
        supervisor: Supervisor | None = None,
    ) -> None:
        """Servers get the plugin's start timeout and Spark home, and logs in pytest's temporary
        folder; ``supervisor`` restarts the ones that die."""
        self._settings = settings
        self._tmp_path_factory = tmp_path_factory
        self._supervisor = supervisor
        self._servers: list[LocalServer] = []

    def __call__(
        self,
        engine: str = "spark",
        conf: dict[str, str] | None = None,
        master: str | None = None,
    ) -> LocalServer:
        """Start a server of ``engine`` ("spark" or "sail"; ``ValueError`` naming another) with
        ``conf`` (Spark confs, or ``SAIL_*`` settings for Sail) and return it, started. A Spark
        server's ``master`` defaults to the run's (``--safestop-master``).

        Skips the test (fails it with ``--safestop-require-server``) when the engine cannot run
        here."""
        check_engine(engine)
        if master is None and engine == "spark":
            master = self._settings.master or master_from_env()
        log_path = self._tmp_path_factory.mktemp(f"{engine}-server") / "server.log"
        server = _new_server(self._settings, engine, dict(conf or {}), log_path, master)
        self._servers.append(server)
        server.start()
        if self._supervisor is not None:
            self._supervisor.watch(server)
        return server

    def close(self) -> None:
        """Stop every server started so far (each one, whatever happens to the others)."""
        while self._servers:
            server = self._servers.pop()
            if self._supervisor is not None:
                self._supervisor.forget(server)
            server.stop()


@pytest.fixture(scope="session")
def spark_connect_server_factory(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerFactory]:
    """Start local servers on demand, for differential suites; all stopped at session end::

    @pytest.fixture(scope="module")
    def sail_url(spark_connect_server_factory):
        return spark_connect_server_factory(engine="sail").url
    """
    config = request.config
    factory = ServerFactory(config.stash[_SETTINGS], tmp_path_factory, config.stash[_SUPERVISOR])
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture(scope="session")
def spark_connect_url(request: pytest.FixtureRequest) -> str:
    """The URL the fixtures use: the local server's, with its token, or ``--safestop-remote``."""
    settings = request.config.stash[_SETTINGS]
    if settings.remote:
        return settings.remote
    server: LocalServer | SharedServer = request.getfixturevalue("spark_connect_server")
    if server.authenticated:
        _warn_if_token_needs_channel_builder()
    return server.url


_warned_token_url = False


def _warn_if_token_needs_channel_builder() -> None:
    # Once per process: every test of a 3.5 suite asks for the URL.
    global _warned_token_url
    with contextlib.suppress(Exception, SystemExit):
        if _warned_token_url or not _layouts.token_needs_channel_builder():
            return
        _warned_token_url = True
        warnings.warn(
            "this pyspark client (3.5, Databricks Connect 16.1) sends a token only over TLS: "
            "SparkSession.builder.remote(url) cannot "
            "reach the local server with spark_connect_url; use the spark and spark_per_class "
            "fixtures or pyspark_safestop.connect_session(url)",
            SafestopWarning,
            stacklevel=2,
        )


@pytest.fixture
def spark(spark_connect_url: str) -> Iterator[Any]:
    """A Spark Connect session for one test, stopped safely at teardown."""
    with connect_session(spark_connect_url) as session:
        yield session


@pytest.fixture(scope="class")
def spark_per_class(spark_connect_url: str) -> Iterator[Any]:
    """A Spark Connect session shared by the tests of one class, stopped safely at teardown."""
    with connect_session(spark_connect_url) as session:
        yield session
