"""The ``pyspark-safestop`` command, run as ``python -m pyspark_safestop`` in a subprocess."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pyspark_safestop.ports import ephemeral_port_range, port_from_env
from tests.foreign_user import ForeignUser
from tests.ports.helpers import (
    EXIT_TIMEOUT,
    REPO_ROOT,
    Processes,
    child_env,
)

pytestmark = [pytest.mark.usefixtures("private_port_leases"), pytest.mark.pure]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pyspark_safestop", *args],
        capture_output=True,
        text=True,
        env=child_env(),
        cwd=REPO_ROOT,
        timeout=EXIT_TIMEOUT,
        check=False,
    )


def test_no_command_is_a_usage_error() -> None:
    result = run_cli()
    assert result.returncode == 2
    assert "usage: pyspark-safestop" in result.stderr


def test_unknown_command_is_a_usage_error() -> None:
    result = run_cli("bogus")
    assert result.returncode == 2
    assert "usage:" in result.stderr
    assert "bogus" in result.stderr


def test_help_lists_the_commands() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    assert "free-port" in result.stdout
    assert "kill-port" in result.stdout
    assert "servers" in result.stdout


def test_servers_with_none_prints_nothing_and_creates_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "warm"
    env = {**child_env(), "PYSPARK_SAFESTOP_WARM_DIR": str(folder)}
    for args in (("servers",), ("servers", "--stop"), ("servers", "--json")):
        result = subprocess.run(
            [sys.executable, "-m", "pyspark_safestop", *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=REPO_ROOT,
            timeout=EXIT_TIMEOUT,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() in ("", "[]"), result.stdout
    assert not folder.exists()


def test_free_port_prints_one_port_outside_the_ephemeral_range() -> None:
    result = run_cli("free-port")
    assert result.returncode == 0, result.stderr
    (line,) = result.stdout.splitlines()
    low, high = ephemeral_port_range()
    assert not low <= int(line) <= high


def test_free_port_count_prints_distinct_ports() -> None:
    result = run_cli("free-port", "--count", "5")
    assert result.returncode == 0, result.stderr
    found = [int(line) for line in result.stdout.splitlines()]
    assert len(found) == 5
    assert len(set(found)) == 5


def test_free_port_help_says_the_lease_ends_with_the_command() -> None:
    result = run_cli("free-port", "--help")
    assert result.returncode == 0
    assert "leased only while this command runs" in " ".join(result.stdout.split())


def test_free_port_refuses_a_lease_directory_others_can_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = tmp_path / "leases"
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.setenv("PYSPARK_SAFESTOP_PORT_LEASE_DIR", str(shared))
    result = run_cli("free-port")
    assert result.returncode == 1
    assert result.stdout == ""
    assert str(shared) in result.stderr
    assert "PYSPARK_SAFESTOP_PORT_LEASE_DIR" in result.stderr


@pytest.mark.parametrize("bad", ["0", "-1", "abc", "1001", "2.5"])
def test_free_port_bad_count_is_a_usage_error(bad: str) -> None:
    result = run_cli("free-port", "--count", bad)
    assert result.returncode == 2
    assert repr(bad) in result.stderr


#: What ``int()`` would take but a port number is not: signs, digit separators, other digits.
NOT_PLAIN_DIGITS = ["+80", "8_080", "٨٠", "0x50", "1e3", "080800"]


@pytest.mark.parametrize("bad", ["0", "65536", "-1", "abc", "80.5", "", *NOT_PLAIN_DIGITS])
def test_kill_port_bad_port_is_a_usage_error(bad: str) -> None:
    result = run_cli("kill-port", "--", bad)
    assert result.returncode == 2
    assert repr(bad) in result.stderr
    assert "not a TCP port" in result.stderr  # the message of port_from_env: one parser


@pytest.mark.parametrize("bad", NOT_PLAIN_DIGITS)
def test_kill_port_and_port_from_env_reject_the_same_text(
    bad: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_KILL_PORT", bad)
    with pytest.raises(ValueError, match="not a TCP port"):
        port_from_env("TEST_KILL_PORT")
    assert run_cli("kill-port", "--dry-run", "--", bad).returncode == 2


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--timeout", "-1"),
        ("--timeout", "nan"),
        ("--timeout", "86401"),
        ("--timeout", "1e400"),
        ("--timeout", "9" * 400),
        ("--expect", "("),
    ],
)
def test_kill_port_bad_options_are_usage_errors(option: str, value: str) -> None:
    result = run_cli("kill-port", "15002", option, value)
    assert result.returncode == 2
    assert repr(value) in result.stderr


def test_kill_port_with_no_listener_succeeds_quietly() -> None:
    port = int(run_cli("free-port").stdout)
    result = run_cli("kill-port", str(port), "--expect", "no process has this 7f3c9e")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert f"nothing listens on port {port}" in result.stderr


def test_kill_port_ends_our_listener(procs: Processes) -> None:
    listener = procs.listener()
    result = run_cli("kill-port", str(listener.port), "--expect", r"listener\.py")
    assert result.returncode == 0, result.stderr
    assert f"ended PID {listener.pid} on port {listener.port}: " in result.stdout
    assert "listener.py" in result.stdout
    assert listener.wait() == -signal.SIGTERM


def test_kill_port_dry_run_signals_nothing(procs: Processes) -> None:
    listener = procs.listener()
    result = run_cli("kill-port", str(listener.port), "--dry-run")
    assert result.returncode == 0, result.stderr
    assert f"would end PID {listener.pid}" in result.stdout
    assert listener.alive()


def test_kill_port_expect_mismatch_is_refused(procs: Processes) -> None:
    listener = procs.listener()
    result = run_cli("kill-port", str(listener.port), "--expect", "SparkConnectServer")
    assert result.returncode == 1
    assert "refused" in result.stderr
    assert str(listener.pid) in result.stderr
    assert result.stdout == ""
    assert listener.alive()


def test_kill_port_sigkills_after_the_timeout(procs: Processes) -> None:
    listener = procs.listener("--ignore-term")
    result = run_cli(
        "kill-port", str(listener.port), "--timeout", "0.5", "--expect", r"listener\.py"
    )
    assert result.returncode == 0, result.stderr
    assert f"ended PID {listener.pid}" in result.stdout
    assert "SIGKILL" in result.stderr  # the warning reaches the user
    assert listener.wait() == -signal.SIGKILL


def test_kill_port_refuses_another_users_listener(
    procs: Processes, foreign_user: ForeignUser
) -> None:
    foreign = procs.listener(user=foreign_user)
    result = run_cli("kill-port", str(foreign.port), "--timeout", "0")
    assert result.returncode == 1
    assert "refused" in result.stderr
    assert "nobody" in result.stderr
    assert str(foreign.pid) in result.stderr
    assert foreign.alive()
