"""The fixtures: a real local server (or the ``--safestop-remote`` one), its URL, a factory of
more servers, and sessions on it stopped safely."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

from .. import connect_session
from .._settings import (
    SafestopWarning,
    master_from_env,
)
from ..client import _operations
from ..servers._engines import (
    EngineUnavailable,
    check_engine,
    make_server,
)
from ..servers._local import LocalServer, RunningServer
from ..servers._shared import (
    FOLDER_NAME,
    SharedServer,
    SharedServerFailed,
    wait_for_shared_server,
)
from ..servers._supervisor import Supervisor
from ..servers._warm import WarmAttachment, attach
from ._options import (
    PluginSettings,
)
from ._stash import (
    SERVER,
    SETTINGS,
    SUPERVISOR,
    is_xdist_worker,
    without_token,
)


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
        return make_server(engine, settings.request(log_path, conf, master))
    except EngineUnavailable as missing:
        _unavailable(settings, str(missing))
    except ValueError as error:
        pytest.fail(f"--safestop-server-conf / safestop_server_conf: {error}", pytrace=False)


def _shared_server(
    config: pytest.Config, settings: PluginSettings, tmp_path_factory: pytest.TempPathFactory
) -> SharedServer:
    base = tmp_path_factory.getbasetemp()
    # An xdist worker's base is made in the run's, where the main process hosts the server.
    folder = (base.parent if is_xdist_worker(config) else base) / FOLDER_NAME
    try:
        return wait_for_shared_server(folder, settings.start_timeout)
    except SharedServerFailed as failed:
        if failed.unavailable:
            _unavailable(settings, failed.reason)
        pytest.fail(str(failed), pytrace=False)
    except (RuntimeError, ValueError) as error:
        pytest.fail(str(error), pytrace=False)


def _warm_server(
    settings: PluginSettings, engine: str, conf: dict[str, str], master: str | None
) -> WarmAttachment:
    try:
        return attach(
            engine,
            settings.request(None, conf, master),
            idle=settings.reuse_idle,
            restarts=settings.server_restarts,
        )
    except EngineUnavailable as missing:
        _unavailable(settings, str(missing))
    except SharedServerFailed as failed:
        if failed.unavailable:
            _unavailable(settings, failed.reason)
        pytest.fail(f"the reused server could not start: {failed.reason}", pytrace=False)
    except ValueError as error:
        pytest.fail(f"--safestop-server-conf / safestop_server_conf: {error}", pytrace=False)
    except (RuntimeError, OSError) as error:  # TimeoutError included
        pytest.fail(f"the reused server: {error}", pytrace=False)


@pytest.fixture(scope="session")
def spark_connect_server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """A real local server of the chosen engine on 127.0.0.1, for this test session (or xdist
    worker; with ``--safestop-shared-server``, for the whole run; with
    ``--safestop-reuse-server``, a warm one kept up between runs)."""
    config = request.config
    settings = config.stash[SETTINGS]
    if settings.remote:
        _unavailable(
            settings,
            f"the fixtures use {without_token(settings.remote)}: no local server is started",
        )
    if settings.reuse_server:
        # Kept up after the run by its own host; this process only attaches to it.
        attachment = _warm_server(settings, settings.engine, settings.server_conf, settings.master)
        config.stash[SERVER] = attachment.server
        try:
            yield attachment.server
        finally:
            attachment.detach()
            del config.stash[SERVER]
        return
    if settings.shared_server:
        shared = _shared_server(config, settings, tmp_path_factory)
        config.stash[SERVER] = shared
        try:
            yield shared
        finally:
            del config.stash[SERVER]
        return
    log_path: Path = tmp_path_factory.mktemp(f"{settings.engine}-server") / "server.log"
    server = _new_server(settings, settings.engine, settings.server_conf, log_path, settings.master)
    config.stash[SERVER] = server
    supervisor = config.stash[SUPERVISOR]
    try:
        server.start()
        supervisor.watch(server)
        yield server
    finally:
        supervisor.forget(server)  # first: a server being stopped is no death
        server.stop()
        del config.stash[SERVER]


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
        self._attachments: list[WarmAttachment] = []

    def __call__(
        self,
        engine: str = "spark",
        conf: dict[str, str] | None = None,
        master: str | None = None,
        reuse: bool | None = None,
    ) -> LocalServer | SharedServer:
        """Start a server of ``engine`` ("spark" or "sail"; ``ValueError`` naming another) with
        ``conf`` (Spark confs, or ``SAIL_*`` settings for Sail) and return it, started. A Spark
        server's ``master`` defaults to the run's (``--safestop-master``). With ``reuse``
        (default: ``--safestop-reuse-server``), the warm server of these settings, kept up
        between runs, is attached to (started when there is none) and returned.

        Skips the test (fails it with ``--safestop-require-server``) when the engine cannot run
        here."""
        check_engine(engine)
        if master is None and engine == "spark":
            master = self._settings.master or master_from_env()
        if reuse or (reuse is None and self._settings.reuse_server):
            attachment = _warm_server(self._settings, engine, dict(conf or {}), master)
            self._attachments.append(attachment)
            return attachment.server
        log_path = self._tmp_path_factory.mktemp(f"{engine}-server") / "server.log"
        server = _new_server(self._settings, engine, dict(conf or {}), log_path, master)
        self._servers.append(server)
        server.start()
        if self._supervisor is not None:
            self._supervisor.watch(server)
        return server

    def close(self) -> None:
        """Stop every server started so far (each one, whatever happens to the others), and
        let the warm ones go idle."""
        while self._attachments:
            self._attachments.pop().detach()
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
    factory = ServerFactory(config.stash[SETTINGS], tmp_path_factory, config.stash[SUPERVISOR])
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture(scope="session")
def spark_connect_url(request: pytest.FixtureRequest) -> str:
    """The URL the fixtures use: the local server's, with its token, or ``--safestop-remote``."""
    settings = request.config.stash[SETTINGS]
    if settings.remote:
        return settings.remote
    server: RunningServer = request.getfixturevalue("spark_connect_server")
    if server.authenticated:
        _warn_if_token_needs_channel_builder()
    return server.url


_warned_token_url = False


def _warn_if_token_needs_channel_builder() -> None:
    # Once per process: every test of a 3.5 suite asks for the URL.
    global _warned_token_url
    with contextlib.suppress(Exception, SystemExit):
        if _warned_token_url or not _operations.token_needs_channel_builder():
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
