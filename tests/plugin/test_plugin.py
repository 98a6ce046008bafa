"""The pytest plugin in this test session, and in inner pytest runs (pytester) against the same
real server: fixtures, options and ini keys, the report header.

One server per xdist worker, several suites at once, ``-p no:pyspark_safestop`` and the plugin
without the ``.pth`` are covered in ``tests/activation``, in fresh environments.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest

from pyspark_safestop import plugin
from pyspark_safestop._settings import SafestopWarning
from pyspark_safestop.client import _operations
from pyspark_safestop.plugin import connect_session
from pyspark_safestop.servers import SparkConnectServer
from tests.children import run_inner

pytestmark = pytest.mark.server

_seen: dict[str, Any] = {}


def test_spark_runs_queries_on_the_session_server(
    spark: Any, spark_connect_url: str, spark_connect_server: SparkConnectServer
) -> None:
    assert spark_connect_url == spark_connect_server.url
    port, token = spark_connect_server.port, spark_connect_server.token
    assert spark_connect_url == f"sc://localhost:{port}/;token={token}"
    assert spark.range(7).count() == 7


def test_a_token_url_on_3_5_is_explained_once(
    client_layout: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(plugin._fixtures, "_warned_token_url", False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            plugin._fixtures._warn_if_token_needs_channel_builder()
    said = [w for w in caught if issubclass(w.category, SafestopWarning)]
    # 3.5, and Databricks Connect 16.1 (built like 4.0 but with 3.5's channel builder).
    if client_layout == "3.5" or _operations.token_needs_channel_builder():
        assert len(said) == 1, said
        assert "connect_session" in str(said[0].message)
    else:
        assert said == []


def test_connect_session_stops_the_session_on_leaving(spark_connect_url: str) -> None:
    with connect_session(spark_connect_url) as session:
        assert session.range(2).count() == 2
    assert _operations.is_closed(session.client)


class TestPerClass:
    def test_first(self, spark_per_class: Any) -> None:
        assert spark_per_class.range(3).count() == 3
        _seen["class"] = spark_per_class

    def test_second_shares_it(self, spark_per_class: Any) -> None:
        assert spark_per_class is _seen["class"]
        assert spark_per_class.range(4).count() == 4


def test_per_class_session_was_stopped() -> None:
    session = _seen.pop("class", None)
    assert session is not None, "TestPerClass did not get its session: see its failure above"
    assert _operations.is_closed(session.client)


# -- inner runs ---------------------------------------------------------------------------------

USES_REMOTE = """
def test_remote(spark, spark_connect_url):
    assert spark_connect_url == {url!r}
    assert spark.range(5).count() == 5

def test_local_server(spark_connect_server):
    pass
"""


def test_header_names_the_shim_line_and_layout(inner: pytest.Pytester, client_layout: str) -> None:
    inner.makepyfile("def test_nothing(): pass")
    result = run_inner(inner, "--safestop-release-timeout", "2.5")
    header = f"pyspark-safestop *: active (activated by *); pyspark *, layout {client_layout};"
    result.stdout.fnmatch_lines([f"{header} release timeout 2.5 s*"])
    assert result.ret == pytest.ExitCode.OK


def test_remote_option_uses_the_url_and_starts_no_server(
    inner: pytest.Pytester, spark_connect_url: str
) -> None:
    inner.makepyfile(USES_REMOTE.format(url=spark_connect_url))
    result = run_inner(inner, "--safestop-remote", spark_connect_url, "-rs")
    result.assert_outcomes(passed=1, skipped=1)
    # Reported without its token: reports and CI logs are read by others.
    shown, token = spark_connect_url.split(";token=", 1)
    result.stdout.fnmatch_lines([f"*fixtures use {shown};token=…*"])
    assert token not in result.stdout.str()


def test_remote_ini_key_and_require_server(inner: pytest.Pytester, spark_connect_url: str) -> None:
    inner.makeini(f"[pytest]\nsafestop_remote = {spark_connect_url}\n")
    inner.makepyfile(USES_REMOTE.format(url=spark_connect_url))
    result = run_inner(inner, "--safestop-require-server")
    result.assert_outcomes(passed=1, errors=1)
    result.stdout.fnmatch_lines(["*a local Spark Connect server is required here, but*"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--safestop-remote", "localhost:15002"],
            "*must be sc://HOST:PORT, got 'localhost:15002'*",
        ),
        (["--safestop-remote", "sc://"], "*must be sc://HOST:PORT, got 'sc://'*"),
        (["--safestop-release-timeout", "-1"], "*--safestop-release-timeout must be a positive*"),
        (["--safestop-server-start-timeout", "x"], "*--safestop-server-start-timeout must be*"),
        (["--safestop-server-conf", "spark.ui.enabled"], "*KEY=VALUE, got 'spark.ui.enabled'*"),
        (["--safestop-master", "yarn"], "*safestop_master must be local*'yarn'*"),
        (
            ["--safestop-master", "local[1]", "--safestop-server-conf", "spark.master=local[2]"],
            "*given twice: * 'local[[]1]' and --safestop-server-conf spark.master='local[[]2]'*",
        ),
        (["--safestop-server-conf", "spark.master=yarn"], "*spark.master must be local*"),
        (["--safestop-engine", "sail", "--safestop-master", "local[1]"], "*Sail server has no*"),
        (["--safestop-server-restarts", "-1"], "*restarts must be a whole number from 0*'-1'*"),
        (["--safestop-unreachable-timeout", "x"], "*--safestop-unreachable-timeout must be*"),
    ],
)
def test_bad_options_are_usage_errors(
    inner: pytest.Pytester, args: list[str], message: str
) -> None:
    inner.makepyfile("def test_nothing(): pass")
    result = run_inner(inner, *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([message])


def test_a_server_conf_moving_a_bind_is_refused(inner: pytest.Pytester) -> None:
    inner.makepyfile("def test_server(spark_connect_server): pass")
    result = run_inner(inner, "--safestop-server-conf", "spark.driver.bindAddress=0.0.0.0")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*bindAddress='0.0.0.0': the server binds 127.0.0.1 only*"])
