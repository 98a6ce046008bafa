"""pyspark_safestop.ports: a server ended when the process that started it exits or is signalled.

Each test runs ``cleanup_target.py``, which starts a listener and registers its cleanup, and
checks from outside what became of both.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator

import psutil
import pytest

from pyspark_safestop.ports import (
    KillRefusedError,
    ProtectedProcessError,
    register_cleanup,
)
from tests.ports.helpers import (
    CLEANUP_TARGET,
    EXIT_TIMEOUT,
    Child,
    Processes,
    kill_identified,
    read_line,
    wait_gone,
)

pytestmark = [pytest.mark.usefixtures("private_port_leases"), pytest.mark.pure]


# -- register_cleanup -------------------------------------------------------------------------


@contextlib.contextmanager
def _cleanup_target(procs: Processes, *args: str) -> Iterator[tuple[Child, int, float]]:
    """Start ``cleanup_target.py``; yield it with its listener's PID and start time.

    Once the target is reaped its process group is no longer certainly ours: a listener the
    cleanup under test left running is ended here, by PID and start time.
    """
    target = procs.start([sys.executable, str(CLEANUP_TARGET), *args])
    word, _port, pid_text, created_text = read_line(target).split()
    assert word == "READY"
    pid, created = int(pid_text), float(created_text)
    try:
        yield target, pid, created
    finally:
        kill_identified(pid, created)


@pytest.mark.parametrize("scope", ["port", "pid"])
def test_cleanup_at_normal_exit(procs: Processes, scope: str) -> None:
    with _cleanup_target(procs, scope, "exit") as (target, pid, created):
        assert target.wait(timeout=EXIT_TIMEOUT) == 0
        assert wait_gone(pid, created)


@pytest.mark.parametrize("scope", ["port", "pid"])
def test_cleanup_on_sigterm_then_default_action(procs: Processes, scope: str) -> None:
    with _cleanup_target(procs, scope, "wait") as (target, pid, created):
        target.send_signal(signal.SIGTERM)
        assert target.wait(timeout=EXIT_TIMEOUT) == -signal.SIGTERM
        assert wait_gone(pid, created)


def test_cleanup_on_sigint_then_keyboard_interrupt(procs: Processes) -> None:
    with _cleanup_target(procs, "port", "wait") as (target, pid, created):
        target.send_signal(signal.SIGINT)
        target.wait(timeout=EXIT_TIMEOUT)
        assert "KeyboardInterrupt" in target.stderr_text()
        assert wait_gone(pid, created)


def test_cleanup_chains_the_previous_handler(procs: Processes) -> None:
    with _cleanup_target(procs, "pid", "wait", "--previous-handler") as (target, pid, created):
        target.send_signal(signal.SIGTERM)
        assert read_line(target) == f"previous handler called with {signal.SIGTERM.value}"
        assert target.wait(timeout=EXIT_TIMEOUT) == 3
        assert wait_gone(pid, created)


def test_an_ignored_sigterm_stays_ignored(procs: Processes) -> None:
    with _cleanup_target(procs, "port", "wait", "--ignore-term") as (target, pid, created):
        target.send_signal(signal.SIGTERM)
        with pytest.raises(subprocess.TimeoutExpired):
            target.wait(timeout=1)
        assert not wait_gone(pid, created, timeout=0.5)


def test_unregistered_cleanup_does_not_run(procs: Processes) -> None:
    with _cleanup_target(procs, "port", "exit", "--unregister") as (target, pid, created):
        assert target.wait(timeout=EXIT_TIMEOUT) == 0
        assert not wait_gone(pid, created, timeout=0.5)


def test_register_cleanup_validates() -> None:
    with pytest.raises(TypeError, match="exactly one"):
        register_cleanup()
    with pytest.raises(TypeError, match="exactly one"):
        register_cleanup(port=15002, pid=os.getpid())
    with pytest.raises(ValueError, match="70000"):
        register_cleanup(port=70000)
    with pytest.raises(ProtectedProcessError):
        register_cleanup(pid=os.getpid())
    with pytest.raises(KillRefusedError):  # protected for root, foreign for anyone else
        register_cleanup(pid=1)


def test_register_cleanup_of_a_vanished_pid(procs: Processes) -> None:
    gone = procs.start([sys.executable, "-c", "pass"])
    gone.wait(timeout=EXIT_TIMEOUT)
    # Reaped: the PID may be reused by now, but then by a process not ours to check here.
    if psutil.pid_exists(gone.pid):
        pytest.skip("the PID was reused already")
    with pytest.raises(ProcessLookupError, match=str(gone.pid)):
        register_cleanup(pid=gone.pid)
