"""Fixtures shared by the tests: a real Spark Connect server and the client line under test."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from pyspark_safestop import _layouts
from pyspark_safestop._server import SparkConnectServer, find_spark_home, java_available

#: Set by the test runner (noxfile, CI) where a server must be available: a missing Java or
#: missing jars then fail the run instead of skipping the server tests.
REQUIRE_SERVER = os.environ.get("PYSPARK_SAFESTOP_REQUIRE_SERVER") == "1"

_server: SparkConnectServer | None = None


def _unavailable(reason: str) -> None:
    if REQUIRE_SERVER:
        pytest.fail(f"a real Spark Connect server is required here, but {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def spark_connect_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SparkConnectServer]:
    """A real Spark Connect server on a loopback port, for the whole test session."""
    global _server
    if not java_available():
        _unavailable("no Java runtime found (install Java 17 or set JAVA_HOME)")
    home = find_spark_home()
    if home is None:
        _unavailable(
            "no Spark jars found: install pyspark[connect]==4.3.* somewhere and point "
            "PYSPARK_SAFESTOP_SPARK_HOME at its pyspark folder"
        )
    assert home is not None
    log_path = tmp_path_factory.mktemp("spark-connect-server") / "server.log"
    server = SparkConnectServer(home, log_path=log_path)
    server.start()
    _server = server
    try:
        yield server
    finally:
        _server = None
        server.stop()


@pytest.fixture(scope="session")
def spark_connect_server_address(spark_connect_server: SparkConnectServer) -> str:
    """``127.0.0.1:PORT`` of the real server (what the fault proxy forwards to)."""
    return f"127.0.0.1:{spark_connect_server.port}"


@pytest.fixture(scope="session")
def client_layout() -> str:
    """The layout of the installed Spark Connect client: "3.5", "4.0", "4.1" or "4.2+"."""
    pytest.importorskip("grpc")
    import pyspark.sql.connect.session  # noqa: F401

    layout, problem = _layouts.detect_loaded()
    assert layout is not None, f"unrecognised Spark Connect client: {problem}"
    return layout.name


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.failed and _server is not None and item.get_closest_marker("server"):
        report.sections.append(("Spark Connect server log (tail)", _server.log_tail(60)))
