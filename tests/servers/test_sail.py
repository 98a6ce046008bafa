"""The Sail engine: the fixtures on Sail (``--safestop-engine``, its ini key and environment
variable), what the report header and ``serve`` say about it, the server factory, and an
engine that cannot run here.

Sail checks no secret: every place that shows a Sail server says so, none pretends otherwise.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import warnings
from pathlib import Path

import psutil
import pytest

from pyspark_safestop._settings import SafestopWarning
from pyspark_safestop.servers import NO_AUTH_NOTICE, _engines, find_sail
from tests.children import clean_env, has_name, in_own_session, run_inner, server_processes

# Server-side behaviour, the same whatever the client line: run on one line (noxfile.py).
pytestmark = [pytest.mark.server, pytest.mark.engine]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module", autouse=True)
def sail_installed() -> None:
    if find_sail() is None:
        pytest.skip('no sail executable (pip install "pyspark-safestop[sail]")')


@pytest.fixture
def inner(inner: pytest.Pytester, client_layout: str) -> pytest.Pytester:
    """The inner run of tests/conftest.py, the client imported first (``client_layout``):
    pytester unloads what an inner run imported, and numpy cannot be loaded twice in one
    process."""
    return inner


ON_SAIL = """
def test_sail(spark, spark_connect_server, spark_connect_url):
    assert spark_connect_server.engine == "sail"
    assert spark_connect_url == f"sc://localhost:{spark_connect_server.port}"
    assert spark.range(6).count() == 6
"""


def test_fixtures_on_sail_and_the_header_says_anyone_local_can_connect(
    inner: pytest.Pytester,
) -> None:
    inner.makepyfile(ON_SAIL)
    result = run_inner(inner, "--safestop-engine", "sail")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        [f"pyspark-safestop: fixtures use a local Sail server ({NO_AUTH_NOTICE})*"]
    )


def test_the_ini_key_and_the_environment_choose_sail(
    inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    inner.makepyfile(ON_SAIL)
    inner.makeini("[pytest]\nsafestop_engine = sail\n")
    run_inner(inner).assert_outcomes(passed=1)
    inner.makeini("[pytest]\n")
    monkeypatch.setenv(_engines.ENV_ENGINE, "sail")
    run_inner(inner).assert_outcomes(passed=1)


def test_a_spark_header_says_owner_only(inner: pytest.Pytester) -> None:
    inner.makepyfile("def test_nothing(): pass")
    result = run_inner(inner, "--safestop-engine", "spark")
    result.stdout.fnmatch_lines(["*fixtures use a local Spark Connect server (owner only*"])


@pytest.mark.parametrize(
    ("args", "ini", "message"),
    [
        (["--safestop-engine", "flink"], "", "*invalid choice: 'flink'*"),
        ([], "safestop_engine = flink", "*unknown server engine 'flink'*"),
    ],
)
def test_an_unknown_engine_is_a_usage_error(
    inner: pytest.Pytester, args: list[str], ini: str, message: str
) -> None:
    inner.makepyfile("def test_nothing(): pass")
    inner.makeini(f"[pytest]\n{ini}\n")
    result = run_inner(inner, *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


def test_a_bad_engine_in_the_environment_warns_once_and_means_spark(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(_engines.ENV_ENGINE, "flink-v2")
    monkeypatch.setattr(_engines, "_warned_engine", set())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert [_engines.engine_from_env() for _ in range(3)] == ["spark"] * 3
    said = [w for w in caught if issubclass(w.category, SafestopWarning)]
    assert len(said) == 1, said
    assert "PYSPARK_SAFESTOP_ENGINE='flink-v2'" in str(said[0].message)


def test_a_missing_sail_skips_or_fails_with_its_reason(
    inner: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYSPARK_SAFESTOP_SAIL", "/nonexistent/sail")
    inner.makepyfile("def test_server(spark_connect_server): pass")
    result = run_inner(inner, "--safestop-engine", "sail", "-rs")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*'/nonexistent/sail' is not an executable sail*"])
    result = run_inner(inner, "--safestop-engine", "sail", "--safestop-require-server")
    result.assert_outcomes(errors=1)


DIFFERENTIAL = """
import pytest
from pyspark_safestop import connect_session

def test_both(spark_connect_server_factory):
    spark_server = spark_connect_server_factory(engine="spark")
    sail_server = spark_connect_server_factory(engine="sail")
    assert spark_server.authenticated and not sail_server.authenticated
    counts = []
    for server in (spark_server, sail_server):
        with connect_session(server.url) as session:
            counts.append(session.range(9).count())
    assert counts == [9, 9]
    with pytest.raises(ValueError, match="'flink'"):
        spark_connect_server_factory(engine="flink")
    with pytest.raises(pytest.fail.Exception, match="SAIL_"):
        spark_connect_server_factory(engine="sail", conf={"spark.ui.enabled": "true"})
    with open("pids", "w") as out:
        out.write(f"{spark_server.pid} {sail_server.pid}")
"""


def test_the_factory_starts_either_engine_and_stops_both_at_the_end(
    inner: pytest.Pytester,
) -> None:
    inner.makepyfile(DIFFERENTIAL)
    run_inner(inner).assert_outcomes(passed=1)
    pids = [int(pid) for pid in (inner.path / "pids").read_text().split()]
    assert [pid for pid in pids if psutil.pid_exists(pid)] == []


def test_serve_sail_prints_its_url_says_who_can_connect_and_stops_on_sigterm() -> None:
    env = clean_env()
    if "PYSPARK_SAFESTOP_SAIL" in os.environ:  # the sail of these tests, where it is not beside
        env["PYSPARK_SAFESTOP_SAIL"] = os.environ["PYSPARK_SAFESTOP_SAIL"]
    proc = in_own_session(
        [sys.executable, "-m", "pyspark_safestop", "serve", "--engine", "sail"], env=env
    )
    try:
        assert proc.stdout is not None
        assert proc.stderr is not None
        url = proc.stdout.readline().strip()
        assert re.fullmatch(r"sc://localhost:\d+", url), url
        said = proc.stderr.readline()
        assert NO_AUTH_NOTICE in said, said
        (sail,) = [p for p in server_processes(proc) if has_name(p, "sail")]
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert not sail.is_running()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
