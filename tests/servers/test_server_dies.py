"""A suite survives its server: a local server killed between tests costs the test that was using
it, not the run; a server that cannot be reached fails each call within the unreachable timeout,
naming its address, instead of the client's ten minutes and more of retries.

Each scenario runs as a child pytest run against a real server; without the package's help
(``PYSPARK_SAFESTOP=0``, no restart) the same run is still waiting long after the bound.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from pyspark_safestop import ServerUnreachableError
from pyspark_safestop.servers._supervisor import Supervisor
from pyspark_safestop.shim import _reachability
from tests.children import PLUGIN_ONLY, clean_env, in_own_session, run_python

#: A run that should finish: start-up, a server start and a restart, a few queries.
RUN_TIMEOUT = 300.0
#: Seconds a run without help must still be going after the call that meets the dead server
#: began (the suite marks that moment with a file): the package fails that call in about one
#: second (a server it saw die) or UNREACHABLE (one it never reached); the client retries for
#: ten minutes and more.
STUCK_AFTER = 20.0
STALL_MARK = "stall-began"
UNREACHABLE = 4.0

KILLED_SUITE = """
import os
import signal


def test_1(spark):
    assert spark.range(3).count() == 3


def test_2_kills_the_server(spark, spark_connect_server):
    assert spark.range(3).count() == 3
    os.kill(spark_connect_server.pid, signal.SIGKILL)
    open("stall-began", "w").close()
    spark.range(5).collect()


def test_3(spark):
    assert spark.range(4).count() == 4


def test_4(spark):
    assert spark.sql("SELECT 1 AS x").first().x == 1
"""

REMOTE_SUITE = """
open("stall-began", "w").close()  # collected: nothing is left to start before the first call


def test_1(spark):
    spark.range(3).collect()


def test_2(spark):
    spark.range(3).collect()


def test_3(spark):
    spark.sql("SELECT 1").collect()
"""


CRASH_LOOP_SUITE = """
import os
import signal


def _kill(server):
    os.kill(server.pid, signal.SIGKILL)


def test_1(spark, spark_connect_server):
    _kill(spark_connect_server)
    spark.range(1).collect()


def test_2(spark, spark_connect_server):
    _kill(spark_connect_server)
    spark.range(1).collect()


def test_3(spark, spark_connect_server):
    _kill(spark_connect_server)
    spark.range(1).collect()


def test_4(spark):
    spark.range(1).collect()


def test_5(spark):
    spark.range(1).collect()
"""

#: Two xdist workers, each with its own server; the one that runs test_2 loses its server.
XDIST_SUITE = KILLED_SUITE.replace("def test_2_kills_the_server", "def test_2_kills_a_server")

#: Two xdist workers on the run's shared server, which test_0 kills; the host restarts it and the
#: workers follow: every later test passes.
SHARED_SUITE = """
import os
import signal
import time

import pytest


@pytest.mark.parametrize("n", range(6))
def test_before(spark, n):
    assert spark.range(n).count() == n


def test_kill(spark, spark_connect_server):
    os.kill(spark_connect_server.pid, signal.SIGKILL)
    spark.range(5).collect()


@pytest.mark.parametrize("n", range(6))
def test_after(spark, n):
    assert spark.range(n).count() == n
"""


def _child(tmp_path: Path, suite: str, *args: str, **env: str) -> tuple[list[str], dict[str, str]]:
    (tmp_path / "test_suite.py").write_text(suite)
    argv = [sys.executable, "-m", "pytest", *PLUGIN_ONLY, "-rA", "test_suite.py", *args]
    child_env = clean_env(**env)
    home = os.environ.get("PYSPARK_SAFESTOP_SPARK_HOME")
    if home:
        child_env["PYSPARK_SAFESTOP_SPARK_HOME"] = home
    return argv, child_env


def _still_running_after(argv: list[str], env: dict[str, str], cwd: Path, seconds: float) -> bool:
    """Whether the run is still going ``seconds`` after its suite marked the stall's start."""
    mark = cwd / STALL_MARK
    child = in_own_session(argv, env=env, cwd=cwd, output=False)
    try:
        deadline = time.monotonic() + RUN_TIMEOUT
        while not mark.exists():
            if child.poll() is not None or time.monotonic() > deadline:
                return False
            time.sleep(0.2)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if child.poll() is not None:
                return False
            time.sleep(0.5)
        return True
    finally:
        os.killpg(child.pid, 9)  # the group: pytest, its server and the server's launcher
        child.wait()


@pytest.mark.server
def test_a_server_killed_mid_run_costs_one_test(tmp_path: Path) -> None:
    argv, env = _child(tmp_path, KILLED_SUITE)
    started = time.monotonic()
    result = run_python(*argv[1:], cwd=tmp_path, env=env, timeout=RUN_TIMEOUT)
    took = time.monotonic() - started
    out = result.stdout
    assert "1 failed, 3 passed" in out, out + result.stderr
    assert "FAILED test_suite.py::test_2_kills_the_server" in out, out
    assert "ServerUnreachableError" in out, out
    assert "died: killed by SIGKILL (the kernel's OOM killer is the usual cause)" in out, out
    assert "1 death(s), 1 restart(s)" in out, out
    assert took < RUN_TIMEOUT


# Once, not on every line: what stalls is the client retrying an address where nothing answers,
# which test_without_help_a_remote_server_gone_stalls_the_run proves on every line without the
# cost of a server to kill.
@pytest.mark.server
@pytest.mark.engine
def test_without_help_a_killed_server_stalls_the_run(tmp_path: Path) -> None:
    argv, env = _child(tmp_path, KILLED_SUITE, "--safestop-server-restarts=0", PYSPARK_SAFESTOP="0")
    assert _still_running_after(argv, env, tmp_path, STUCK_AFTER), "the run ended by itself"


@pytest.fixture
def dead_url() -> str:
    """A loopback URL where nothing listens."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"sc://localhost:{port}"


@pytest.mark.server
def test_a_remote_server_gone_fails_each_test_within_the_bound(
    tmp_path: Path, dead_url: str
) -> None:
    argv, env = _child(
        tmp_path,
        REMOTE_SUITE,
        f"--safestop-unreachable-timeout={UNREACHABLE:g}",
        PYSPARK_SAFESTOP_REMOTE=dead_url,
    )
    started = time.monotonic()
    result = run_python(*argv[1:], cwd=tmp_path, env=env, timeout=RUN_TIMEOUT)
    took = time.monotonic() - started
    out = result.stdout
    assert "3 failed" in out, out + result.stderr
    address = dead_url[len("sc://") :]
    assert out.count(f"the Spark Connect server at {address} cannot be reached") >= 3, out
    # Each test: the bound, plus a session's start and stop; far from the client's minutes.
    assert took < 3 * (UNREACHABLE + 15) + 30, took


@pytest.mark.server
def test_without_help_a_remote_server_gone_stalls_the_run(tmp_path: Path, dead_url: str) -> None:
    argv, env = _child(
        tmp_path, REMOTE_SUITE, PYSPARK_SAFESTOP="0", PYSPARK_SAFESTOP_REMOTE=dead_url
    )
    assert _still_running_after(argv, env, tmp_path, STUCK_AFTER), "the run ended by itself"


@pytest.mark.server
@pytest.mark.engine
def test_a_real_crash_loop_is_given_up_and_the_rest_fail_at_once(tmp_path: Path) -> None:
    argv, env = _child(tmp_path, CRASH_LOOP_SUITE, "--safestop-server-restarts=2")
    result = run_python(*argv[1:], cwd=tmp_path, env=env, timeout=RUN_TIMEOUT)
    out = result.stdout
    assert "5 failed" in out, out + result.stderr
    assert "3 death(s), 2 restart(s)" in out, out
    assert "NOT restarted: it died 3 times (a crash loop)" in out, out
    # The tests after it fail, each naming the crash loop: its error, and the summary's line.
    assert out.count("NOT restarted: it died 3 times (a crash loop); unreachable for") >= 3, out


@pytest.mark.server
@pytest.mark.engine
def test_an_xdist_worker_s_server_killed_is_counted_by_the_controller(tmp_path: Path) -> None:
    argv, env = _child(tmp_path, XDIST_SUITE, "-n", "2")
    result = run_python(*argv[1:], cwd=tmp_path, env=env, timeout=RUN_TIMEOUT)
    out = result.stdout
    assert "1 failed, 3 passed" in out, out + result.stderr
    assert "FAILED test_suite.py::test_2_kills_a_server" in out, out
    assert "pyspark-safestop: local servers that died" in out, out
    assert "] the Spark Connect server at 127.0.0.1:" in out, out  # named by its worker: [gwN]
    assert "1 death(s), 1 restart(s)" in out, out


@pytest.mark.server
@pytest.mark.engine
def test_the_shared_server_killed_is_restarted_and_the_workers_follow(tmp_path: Path) -> None:
    argv, env = _child(tmp_path, SHARED_SUITE, "-n", "2", "--safestop-shared-server")
    result = run_python(*argv[1:], cwd=tmp_path, env=env, timeout=RUN_TIMEOUT)
    out = result.stdout
    assert "1 death(s), 1 restart(s)" in out, out + result.stderr
    # At most the test killing it and one running beside it on the other worker (a call in
    # flight in the killing test may also wait for the restart and pass).
    failed = [x for x in out.splitlines() if x.startswith("FAILED ")]
    assert len(failed) <= 2, out
    passed_after = [x for x in out.splitlines() if x.startswith("PASSED test_suite.py::test_after")]
    assert len(passed_after) >= 5, out


# -- the parts, on small stand-ins ----------------------------------------------------------------


class _Server:
    """A stand-in for a LocalServer: dies when told, restarts unless told it cannot."""

    _what = "test server"

    def __init__(self, port: int, restarts_fail: bool = False) -> None:
        self.address = f"127.0.0.1:{port}"
        self.dead = False
        self.restarts = 0
        self.restarts_fail = restarts_fail

    def death(self) -> str | None:
        return "killed by SIGKILL" if self.dead else None

    def restart(self) -> None:
        if self.restarts_fail:
            raise RuntimeError("port taken\nmore")
        self.restarts += 1
        self.dead = False

    def log_tail(self, lines: int) -> str:
        return "the log"


def test_a_crash_loop_is_left_dead_and_calls_to_it_fail_at_once() -> None:
    supervisor = Supervisor(max_restarts=2)
    server: Any = _Server(1)
    supervisor.watch(server)
    try:
        for _ in range(3):
            server.dead = True
            supervisor.settle()
        assert server.restarts == 2
        deaths = supervisor.deaths()
        assert [death.restarted for death in deaths] == [True, True, False]
        assert deaths[-1].given_up == "it died 3 times (a crash loop)"
        assert supervisor.given_up(server) == deaths[-1].describe()
        error = _reachability.after_unavailable("localhost:1", "refused", timeout=60.0)
        assert isinstance(error, ServerUnreachableError)
        assert "NOT restarted: it died 3 times (a crash loop)" in str(error)
        assert error.waited < 1.0
    finally:
        supervisor.forget(server)
        supervisor.close()
        _reachability.mark_alive("127.0.0.1:1")


def test_a_failed_restart_says_why_once() -> None:
    supervisor = Supervisor()
    server: Any = _Server(2, restarts_fail=True)
    supervisor.watch(server)
    try:
        server.dead = True
        supervisor.settle()
        supervisor.settle()
        (death,) = supervisor.deaths()
        assert death.given_up == "it could not start again: port taken"
        assert death.describe() == (
            "the test server at 127.0.0.1:2 died: killed by SIGKILL (the kernel's OOM killer "
            "is the usual cause); NOT restarted: it could not start again: port taken"
        )
    finally:
        supervisor.forget(server)
        supervisor.close()
        _reachability.mark_alive("127.0.0.1:2")


def test_an_unreachable_server_fails_after_the_timeout_and_a_call_deadline_is_kept() -> None:
    address = "127.0.0.1:9"  # discard: nothing listens on loopback here
    started = time.monotonic()
    error = _reachability.after_unavailable(address, "refused", timeout=1.0)
    assert isinstance(error, ServerUnreachableError)
    assert isinstance(error, ConnectionError)
    assert 0.9 <= time.monotonic() - started < 5
    assert error.address == address
    assert "cannot be reached (unreachable for" in str(error)
    _reachability.reached(address)  # a response: no longer failing
    # A call's own deadline ends the wait first: its own error then stands.
    _reachability.mark_alive(address)
    started = time.monotonic()
    assert _reachability.after_unavailable(address, "x", 30.0, time.monotonic() + 0.5) is None
    assert time.monotonic() - started < 5
    _reachability.mark_alive(address)
    assert _reachability.after_unavailable(address, "x", None) is None
