"""The plugin's options and ini keys, read once into :class:`PluginSettings`: the command
line, else the ini file, else the environment, else the default. Every value goes through the
one parser of its setting (:mod:`pyspark_safestop._settings`); a bad one is a usage error
naming the option and the value."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest

from .._settings import (
    DEFAULT_MASTER,
    DEFAULT_REUSE_IDLE,
    ENV_HANG_TIMEOUT,
    ENV_MASTER,
    ENV_REUSE_IDLE,
    ENV_REUSE_SERVER,
    master_from_env,
    parse_conf,
    parse_count,
    parse_seconds,
    reuse_idle_from_env,
    reuse_server_from_env,
    validate_master,
)
from ..servers._engines import (
    ENGINES,
    ENV_ENGINE,
    check_engine,
    engine_from_env,
)
from ..servers._local import ServerRequest
from ..servers._supervisor import MAX_RESTARTS

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
    #: A warm server, kept up between runs, instead of one started for this run.
    reuse_server: bool = False
    #: Seconds a warm server stays up unused.
    reuse_idle: float = DEFAULT_REUSE_IDLE

    def request(
        self, log_path: Path | None, conf: Mapping[str, str], master: str | None
    ) -> ServerRequest:
        """What a server is asked for under these settings, with its own confs and master (the
        settings' own, or the factory's)."""
        return ServerRequest(
            log_path=log_path,
            start_timeout=self.start_timeout,
            conf=conf,
            spark_home=self.spark_home,
            master=master,
        )


def add_options(parser: pytest.Parser) -> None:
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
    option(
        "reuse-server",
        "keep the local server up after the run (detached from it) and attach to it in the next "
        "runs that ask for the same server (engine, Spark home, master, confs, worker Python): "
        "no start-up to wait for (ini: safestop_reuse_server; also "
        f"{ENV_REUSE_SERVER}=1; see `pyspark-safestop servers`)",
        action="store_true",
        default=None,
    )
    option(
        "reuse-idle",
        "seconds a reused server stays up with no run attached and no client connected "
        f"(ini: safestop_reuse_idle; default: {ENV_REUSE_IDLE}, else {DEFAULT_REUSE_IDLE:g})",
        metavar="SECONDS",
    )
    parser.addini("safestop_reuse_server", "keep the local server up between runs", type="bool")
    parser.addini("safestop_reuse_idle", "seconds a reused server stays up unused")
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


_T = TypeVar("_T")


def _usage(parse: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
    """A setting's one parser (:mod:`pyspark_safestop._settings`), its ``ValueError`` (naming
    the option and the value) turned into pytest's usage error."""
    try:
        return parse(*args, **kwargs)
    except ValueError as error:
        raise pytest.UsageError(str(error)) from None


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
        key, value = _usage(parse_conf, line, "--safestop-server-conf / safestop_server_conf")
        conf[key] = value
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
        timeout = _usage(parse_seconds, timeout, "--safestop-release-timeout")
    if hang is not None:
        hang = _usage(parse_seconds, hang, "--safestop-hang-timeout", zero=True)
    elif not os.environ.get(ENV_HANG_TIMEOUT, "").strip():
        hang = PYTEST_HANG_TIMEOUT
    if unreachable is not None:
        unreachable = _usage(
            parse_seconds, unreachable, "--safestop-unreachable-timeout", zero=True
        )
    start = (
        DEFAULT_START_TIMEOUT
        if start is None
        else _usage(parse_seconds, start, "--safestop-server-start-timeout")
    )
    reuse = config.getoption("safestop_reuse_server", None)
    if reuse is None:
        reuse = bool(config.getini("safestop_reuse_server")) or reuse_server_from_env()
    idle = _raw(config, "reuse_idle")
    idle = (
        reuse_idle_from_env()
        if idle is None
        else _usage(parse_seconds, idle, "--safestop-reuse-idle / safestop_reuse_idle")
    )
    return PluginSettings(
        reuse_server=bool(reuse),
        reuse_idle=idle,
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
        server_restarts=MAX_RESTARTS
        if restarts is None
        else _usage(
            parse_count,
            restarts,
            "--safestop-server-restarts / safestop_server_restarts",
            0,
            _MAX_RESTARTS_ALLOWED,
        ),
    )


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
