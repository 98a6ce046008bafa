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
    :mod:`._shared_server`), or, with ``--safestop-reuse-server``, a warm one kept up between
    runs by a host of its own (see :mod:`pyspark_safestop.servers._warm`); its log is in
    pytest's temporary directory (a warm server's in its folder), and its tail is attached to
    the report of a failing test that used it.
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

import os
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

from .. import connect_session, install, is_installed, stop_safely
from .._settings import (
    enabled_from_env,
)
from ..client import _layouts
from ..servers._engines import (
    make_server,
)
from ..servers._local import LocalServer
from ..servers._shared import (
    FOLDER_NAME,
    SharedServer,
    SharedServerHost,
)
from ..servers._spark import find_spark_home
from ..servers._supervisor import Supervisor
from ..shim._watchdog import hangs_since
from ._fixtures import (
    ServerFactory,
    spark,
    spark_connect_server,
    spark_connect_server_factory,
    spark_connect_url,
    spark_per_class,
)
from ._options import (
    ENV_REMOTE,
    ENV_REQUIRE_SERVER,
    PYTEST_HANG_TIMEOUT,
    PluginSettings,
    add_options,
    read_settings,
)
from ._report import (
    LOG_TAIL_LINES,
    death_sections,
    death_shown,
    hang_sections,
    report_header,
    terminal_summary,
)
from ._stash import (
    DEATHS_SEEN,
    HANGS_SEEN,
    HOST,
    SERVER,
    SETTINGS,
    SUPERVISOR,
    WORKER_DEATHS,
    WORKER_OUTPUT_KEY,
    is_xdist_worker,
)

__all__ = [
    "ENV_REMOTE",
    "ENV_REQUIRE_SERVER",
    "PYTEST_HANG_TIMEOUT",
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


def pytest_addoption(parser: pytest.Parser) -> None:
    """Register the ``--safestop-*`` options and the ``safestop_*`` ini keys."""
    add_options(parser)


def pytest_report_header(config: pytest.Config) -> list[str]:
    """The shim's state, and the server the fixtures use (not in xdist workers: unseen)."""
    return report_header(config)


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """Say how many times the servers this process started died, and what became of them;
    with ``-v``, the longest wait for a response against the hang timeout."""
    terminal_summary(terminalreporter, config)


def pytest_configure(config: pytest.Config) -> None:
    """Validate the settings; apply the timeouts to the shim; watch the servers it starts."""
    settings = read_settings(config)
    config.stash[SETTINGS] = settings
    config.stash[SUPERVISOR] = Supervisor(settings.server_restarts)
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
    settings = config.stash.get(SETTINGS, None)
    if settings is None or not settings.shared_server or settings.remote or settings.reuse_server:
        return
    if is_xdist_worker(config):
        return
    # The base every xdist worker's own base temporary folder is made in.
    base = config._tmp_path_factory.getbasetemp()  # type: ignore[attr-defined]

    def build(log_path: Path) -> LocalServer:
        # Raises in the host's thread, which records the failure for every worker to read.
        request = settings.request(log_path, settings.server_conf, settings.master)
        return make_server(settings.engine, request)

    config.stash[HOST] = SharedServerHost(Path(base) / FOLDER_NAME, build, config.stash[SUPERVISOR])


def pytest_unconfigure(config: pytest.Config) -> None:
    """Stop the run's shared server, when this process hosts one (also after an interrupt)."""
    supervisor = config.stash.get(SUPERVISOR, None)
    if supervisor is not None:
        supervisor.close()
    host = config.stash.get(HOST, None)
    if host is not None:
        del config.stash[HOST]
        host.close()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Note how many RPC hangs and server deaths were recorded before this test (its report
    shows the new ones)."""
    count, _ = hangs_since(0)
    item.stash[HANGS_SEEN] = [count]
    supervisor = item.config.stash.get(SUPERVISOR, None)
    if supervisor is not None:
        # A server that died is started again before the next test, on the same URL.
        supervisor.settle()
        item.stash[DEATHS_SEEN] = len(supervisor.deaths())
    server = item.config.stash.get(SERVER, None)
    if isinstance(server, SharedServer):
        # The host restarts the run's server; a worker waits for that here, as above.
        server.follow(item.config.stash[SETTINGS].start_timeout)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    """Attach to the report of a failing test the RPCs declared hung while it ran (with every
    thread's stack), and the tail of the server's log if it used the local server."""
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        report.sections.extend(hang_sections(item))
        report.sections.extend(death_sections(item))
    server = item.config.stash.get(SERVER, None)
    used = "spark_connect_server" in getattr(item, "fixturenames", ())
    if report.failed and server is not None and used:
        title = f"Spark Connect server log (tail of {server.log_path})"
        report.sections.append((title, server.log_tail(LOG_TAIL_LINES)))


def pytest_sessionfinish(session: pytest.Session) -> None:
    """In an xdist worker: hand the deaths of its servers to the controller's summary."""
    config = session.config
    supervisor = config.stash.get(SUPERVISOR, None)
    if supervisor is not None and is_xdist_worker(config):
        worker = config.workerinput.get("workerid", "?")  # type: ignore[attr-defined]
        shown = [death_shown(death, f"[{worker}] ") for death in supervisor.deaths()]
        config.workeroutput[WORKER_OUTPUT_KEY] = shown  # type: ignore[attr-defined]


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """In the xdist controller: collect what a worker's servers went through."""
    shown = getattr(node, "workeroutput", {}).get(WORKER_OUTPUT_KEY, [])
    node.config.stash.setdefault(WORKER_DEATHS, []).extend(shown)
