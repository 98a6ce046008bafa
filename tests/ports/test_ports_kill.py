"""pyspark_safestop.ports: ending the listeners of a port, and the refusals that protect others.

Listeners run in subprocesses (some as ``nobody`` where the tests run as root); every process a
test starts is ended at teardown through its own process group, never by name or port.
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import socket
import sys
import textwrap

import psutil
import pytest

from pyspark_safestop.ports import (
    ForeignProcessError,
    KillRefusedError,
    ProcessInfo,
    ProtectedProcessError,
    UnexpectedProcessError,
    _kill,
    kill_process_on_port,
    leased_port,
    listeners_on_port,
)
from tests.foreign_user import ForeignUser
from tests.ports.helpers import (
    EXIT_TIMEOUT,
    NO_SUCH_COMMAND,
    OURS,
    Processes,
    child_env,
    kill_identified,
    read_line,
    skip_without_ipv6_loopback,
    wait_gone,
)

pytestmark = [pytest.mark.usefixtures("private_port_leases"), pytest.mark.pure]


# -- kill_process_on_port ---------------------------------------------------------------------


def test_a_port_nobody_listens_on_returns_empty() -> None:
    with leased_port() as port:
        assert kill_process_on_port(port, expect=NO_SUCH_COMMAND) == []


def test_kills_our_listener(procs: Processes) -> None:
    listener = procs.listener()
    assert [info.pid for info in listeners_on_port(listener.port)] == [listener.pid]
    assert kill_process_on_port(listener.port, expect=OURS, timeout=EXIT_TIMEOUT) == [listener.pid]
    assert listener.wait() == -signal.SIGTERM
    assert kill_process_on_port(listener.port, expect=OURS) == []


def test_kills_an_ipv6_listener(procs: Processes) -> None:
    skip_without_ipv6_loopback()
    listener = procs.listener(host="::1")
    assert kill_process_on_port(listener.port, expect=OURS, timeout=EXIT_TIMEOUT) == [listener.pid]
    assert listener.wait() == -signal.SIGTERM


def test_kills_every_process_sharing_the_socket(procs: Processes) -> None:
    listener = procs.listener("--fork")
    child_pid = int(read_line(listener.proc).split()[1])
    child_created = psutil.Process(child_pid).create_time()
    try:
        ended = kill_process_on_port(listener.port, expect=OURS, timeout=EXIT_TIMEOUT)
        assert ended == sorted([listener.pid, child_pid])
        assert wait_gone(child_pid, child_created)
    finally:
        kill_identified(child_pid, child_created)


def test_dry_run_signals_nothing(procs: Processes) -> None:
    listener = procs.listener()
    assert kill_process_on_port(listener.port, dry_run=True) == [listener.pid]
    assert listener.alive()


@pytest.mark.parametrize("expect", ["listener.py", re.compile(r"listener\.py --host")])
def test_expect_match_allows_the_kill(procs: Processes, expect: str | re.Pattern[str]) -> None:
    listener = procs.listener()
    assert kill_process_on_port(listener.port, expect=expect, timeout=EXIT_TIMEOUT) == [
        listener.pid
    ]
    assert listener.wait() == -signal.SIGTERM


@pytest.mark.parametrize("expect", ["SparkConnectServer", re.compile(r"^java ")])
def test_expect_mismatch_refuses(procs: Processes, expect: str | re.Pattern[str]) -> None:
    listener = procs.listener()
    with pytest.raises(UnexpectedProcessError) as info:
        kill_process_on_port(listener.port, expect=expect)
    assert info.value.pid == listener.pid
    assert str(listener.pid) in str(info.value)
    assert "nothing was signalled" in str(info.value)
    assert isinstance(info.value, PermissionError)
    assert listener.alive()


def test_sigterm_ignored_gets_sigkill_after_the_timeout(procs: Processes) -> None:
    listener = procs.listener("--ignore-term")
    assert kill_process_on_port(listener.port, expect=OURS, timeout=0.5) == [listener.pid]
    assert listener.wait() == -signal.SIGKILL


def test_refuses_the_calling_process() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(ProtectedProcessError, match="calling process") as info:
            kill_process_on_port(port, timeout=0)
        assert info.value.pid == os.getpid()


def test_refuses_an_ancestor(procs: Processes) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        code = textwrap.dedent(
            f"""
            from pyspark_safestop.ports import kill_process_on_port, ProtectedProcessError
            try:
                kill_process_on_port({port}, timeout=0)
            except ProtectedProcessError as error:
                print("PROTECTED", error.pid, error)
            else:
                print("SIGNALLED")
            """
        )
        child = procs.start([sys.executable, "-c", code])
        line = read_line(child)
        assert line.startswith(f"PROTECTED {os.getpid()} "), line
        assert "ancestor" in line


def test_refuses_pid_1_and_signals_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    init = ProcessInfo(1, 0.0, os.getuid(), os.getuid(), "us", ("/sbin/init",))
    monkeypatch.setattr(_kill, "listening_pids", lambda port: ({1}, []))
    monkeypatch.setattr(_kill, "process_info", lambda pid: init)

    def no_signals(*args: object) -> bool:
        raise AssertionError("a signal was about to be sent")

    monkeypatch.setattr(_kill, "_send", no_signals)
    with pytest.raises(ProtectedProcessError, match="PID 1 or lower"):
        kill_process_on_port(12345)


def test_a_reused_pid_is_never_signalled(procs: Processes) -> None:
    listener = procs.listener()
    (info,) = listeners_on_port(listener.port)
    # The same PID with another start time: what a recycled PID looks like.
    stale = dataclasses.replace(info, create_time=info.create_time - 100)
    assert _kill._handle(stale) is None
    assert _kill.end([stale], 0.1, listener.port) == []
    assert listener.alive()


def test_a_process_gone_since_it_was_checked_is_not_signalled(procs: Processes) -> None:
    listener = procs.listener()
    (info,) = listeners_on_port(listener.port)
    handle = _kill._handle(info)
    assert handle is not None
    listener.proc.kill()  # our own unreaped child: its PID is still ours to signal
    assert listener.wait() == -signal.SIGKILL
    # Reaped: its PID is free, or another process's, whose start time differs.
    assert _kill._send(handle, info, signal.SIGTERM) is False


def test_refuses_another_users_listener(procs: Processes, foreign_user: ForeignUser) -> None:
    foreign = procs.listener(user=foreign_user)
    with pytest.raises(ForeignProcessError) as info:
        kill_process_on_port(foreign.port, timeout=0)
    assert info.value.pid == foreign.pid
    assert "nobody" in str(info.value)
    assert str(foreign.pid) in str(info.value)
    assert foreign.alive()
    with pytest.raises(ForeignProcessError):
        kill_process_on_port(foreign.port, dry_run=True)


def test_one_foreign_listener_means_nothing_is_signalled(
    procs: Processes, foreign_user: ForeignUser
) -> None:
    ours = procs.listener()
    # Same port on another loopback address, owned by someone else.
    try:
        foreign = procs.listener(host="127.0.0.2", port=ours.port, user=foreign_user)
    except AssertionError as error:
        pytest.skip(f"could not listen on 127.0.0.2:{ours.port}: {error}")
    with pytest.raises(ForeignProcessError) as info:
        kill_process_on_port(ours.port, timeout=0)
    assert info.value.pid == foreign.pid
    assert ours.alive()
    assert foreign.alive()


def test_listener_invisible_to_a_non_root_user_is_refused(
    procs: Processes, foreign_user: ForeignUser
) -> None:
    ours = procs.listener()  # owned by root; nobody cannot see which process has the socket
    code = textwrap.dedent(
        f"""
        from pyspark_safestop.ports import kill_process_on_port, ForeignProcessError
        try:
            kill_process_on_port({ours.port}, timeout=0)
        except ForeignProcessError as error:
            print("FOREIGN", error.pid, error)
        else:
            print("SIGNALLED")
        """
    )
    env = foreign_user.env(child_env(), path=[foreign_user.package()])
    child = procs.start(foreign_user.command([foreign_user.python, "-c", code]), env=env)
    line = read_line(child)
    assert line.startswith("FOREIGN None "), line
    assert "root" in line
    assert ours.alive()


def test_refusals_are_permission_errors() -> None:
    for kind in (ForeignProcessError, ProtectedProcessError, UnexpectedProcessError):
        assert issubclass(kind, KillRefusedError)
        assert issubclass(kind, PermissionError)
