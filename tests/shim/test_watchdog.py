"""The hang watchdog in a pytest suite, against the real server through the fault proxy.

A suite whose class shares one session runs four tests; the second one's query is held by the
proxy (its SQL carries a marker). Without the watchdog the run hangs there (shown by the proxy
holding the call while the run makes no progress); with it exactly that test fails, its report
names the RPC and shows every thread's stack, and the other three pass on the same session,
also under pytest-xdist.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest

import pyspark_safestop
from pyspark_safestop import RpcHangError, plugin
from pyspark_safestop.shim._watchdog import RpcHang
from tests.children import REPO_ROOT, clean_env, own_group, run_python

pytest.importorskip("grpc")
from pyspark_safestop.testing.faults import FaultProxy

pytestmark = pytest.mark.server

MARKER = "SAFESTOP_MARKER"
#: The watchdog's timeout in these runs, in seconds.
HANG = 3.0
#: Generous bound for a child pytest run that should finish (start-up, sessions, a hang).
RUN_TIMEOUT = 240.0

SUITE = f"""
class TestSharedSession:
    def test_1(self, spark_per_class):
        assert spark_per_class.range(3).count() == 3

    def test_2(self, spark_per_class):
        spark_per_class.sql("SELECT '{MARKER}' AS m").collect()

    def test_3(self, spark_per_class):
        assert spark_per_class.range(4).count() == 4

    def test_4(self, spark_per_class):
        assert spark_per_class.sql("SELECT 1 AS x").collect()[0].x == 1
"""


@pytest.fixture
def proxy(spark_connect_url: str) -> Iterator[FaultProxy]:
    """A fault proxy in front of the session's server that holds the marked query forever."""
    with FaultProxy(spark_connect_url) as started:
        started.hang("ExecutePlan", marker=MARKER.encode())
        yield started


def _suite_command(tmp_path: Path, url: str, *args: str) -> tuple[list[str], dict[str, str]]:
    """The arguments to Python for the inner pytest run of the suite, and its environment."""
    (tmp_path / "test_suite.py").write_text(SUITE)
    points = metadata.entry_points()
    # Python 3.9's entry_points() takes no group: it returns a dict of groups.
    group = (
        points.select(group="pytest11") if hasattr(points, "select") else points.get("pytest11", [])
    )
    installed = any(ep.name == "pyspark_safestop" for ep in group)
    plugin = [] if installed else ["-p", "pyspark_safestop.plugin"]
    command = [
        "-m",
        "pytest",
        *plugin,
        "-p",
        "no:cacheprovider",
        "-rA",
        str(tmp_path / "test_suite.py"),
        *args,
    ]
    env = clean_env(pythonpath=[REPO_ROOT, *filter(None, [os.environ.get("PYTHONPATH")])])
    # In the environment, not on the command line: the URL holds the server's token.
    env["PYSPARK_SAFESTOP_REMOTE"] = url
    # xdist workers of pyspark-client 4.2 exit without a Spark home: the plugin gives them the
    # server's, which it finds here.
    home = os.environ.get("PYSPARK_SAFESTOP_SPARK_HOME")
    if home:
        env["PYSPARK_SAFESTOP_SPARK_HOME"] = home
    return command, env


def _run_suite(tmp_path: Path, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    command, env = _suite_command(tmp_path, url, *args)
    return run_python(*command, cwd=tmp_path, env=env, timeout=RUN_TIMEOUT)


def test_without_the_watchdog_the_held_query_hangs_the_run(
    tmp_path: Path, proxy: FaultProxy
) -> None:
    command, env = _suite_command(tmp_path, proxy.url, "--safestop-hang-timeout=0")
    with own_group([sys.executable, *command], cwd=tmp_path, env=env) as child:
        held = proxy.wait_hung("ExecutePlan", 1, timeout=RUN_TIMEOUT)
        assert held, "the marked query never reached the proxy"
        # The call is held and nothing bounds it: well past the watchdog's timeout the run
        # still waits. (With the watchdog, test_2 fails after HANG seconds.)
        time.sleep(HANG * 3)
        assert child.poll() is None, "the run ended although its query was held"
        assert proxy.hung_now("ExecutePlan") == 1


@pytest.mark.parametrize(
    "xdist",
    [
        pytest.param([], id="serial"),
        # The watchdog's interception is the client line's; the workers add nothing per line:
        # under xdist once (marker engine), serially on every line.
        pytest.param(["-n", "2"], id="xdist", marks=pytest.mark.engine),
    ],
)
def test_with_the_watchdog_only_the_hung_test_fails(
    tmp_path: Path, proxy: FaultProxy, xdist: list[str]
) -> None:
    result = _run_suite(tmp_path, proxy.url, f"--safestop-hang-timeout={HANG:g}", *xdist)
    out = result.stdout
    assert result.returncode == 1, out + result.stderr
    assert "1 failed, 3 passed" in out, out
    assert "FAILED" in out, out
    assert "test_2" in out, out
    assert "RpcHangError" in out, out
    # The report section: the RPC, the seconds waited, every thread's stack.
    assert "Spark Connect RPC hung" in out, out
    assert "Spark Connect RPC ExecutePlan hung: no response for" in out, out
    assert "Threads when it was declared:" in out, out
    assert "test_2" in out.split("Threads when it was declared:", 1)[1], out


def test_the_header_tells_the_watchdog_setting(tmp_path: Path, proxy: FaultProxy) -> None:
    result = _run_suite(tmp_path, proxy.url, "--safestop-hang-timeout=7", "-k", "test_1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "hang watchdog 7 s" in result.stdout, result.stdout


def test_a_plain_run_has_the_watchdog_on(tmp_path: Path, proxy: FaultProxy) -> None:
    """Nothing set: on, at the plugin's default; the run's longest wait is reported with -v."""
    result = _run_suite(tmp_path, proxy.url, "-v", "-k", "test_1")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"hang watchdog {plugin.PYTEST_HANG_TIMEOUT:g} s" in result.stdout, result.stdout
    assert "the longest wait for a response was" in result.stdout, result.stdout


# -- settings and the error, without a server ----------------------------------------------------


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf"), 10**400, "3", True])
def test_install_refuses_a_bad_hang_timeout(bad: object) -> None:
    with pytest.raises(ValueError, match="hang_timeout"):
        pyspark_safestop.install(hang_timeout=bad)


def test_rpc_hang_error_is_a_timeout_error_that_names_the_call() -> None:
    hang = RpcHang(
        method="AnalyzePlan",
        session_id="s-1",
        operation_id="",
        address="localhost:15002",
        waited=3.04,
        thread="MainThread",
        stacks="",
    )
    error = RpcHangError(hang)
    assert isinstance(error, TimeoutError)
    assert str(error) == (
        "Spark Connect RPC AnalyzePlan hung: no response for 3.0 s (session s-1, server "
        "localhost:15002, thread 'MainThread'); the call was cancelled and the session can go on"
    )
    assert error.hang is hang


def test_bad_environment_value_warns_once_and_leaves_the_watchdog_off(tmp_path: Path) -> None:
    script = tmp_path / "check.py"
    script.write_text(
        "import warnings\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    import pyspark_safestop\n"
        "    pyspark_safestop.install(); pyspark_safestop.install()\n"
        "said = [str(w.message) for w in caught if 'HANG_TIMEOUT' in str(w.message)]\n"
        "print(len(said), pyspark_safestop.status()['settings']['hang_timeout'])\n"
    )
    env = clean_env(PYSPARK_SAFESTOP_HANG_TIMEOUT="soon")
    result = run_python(script, env=env, timeout=RUN_TIMEOUT)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", "None"]
