"""pyspark_safestop.ports: argument checks, ports from the environment, allocation and leases.

Leases are checked from other processes (fresh interpreters, forked children), as the users of
one lease directory see them.
"""

from __future__ import annotations

import concurrent.futures
import json
import re
import signal
import socket
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from pyspark_safestop import ports
from pyspark_safestop._settings import MAX_TIMEOUT
from pyspark_safestop.ports import (
    _allocation,
    allocate_free_port,
    ephemeral_port_range,
    kill_process_on_port,
    lease_directory,
    leased_port,
    leased_ports,
    listeners_on_port,
    port_from_env,
    register_cleanup,
    release_port,
)
from tests.ports.helpers import (
    ALLOCATOR,
    EXIT_TIMEOUT,
    FORKER,
    NO_SUCH_COMMAND,
    Child,
    Processes,
    child_env,
    read_line,
    skip_without_ipv6_loopback,
)

BAD_PORTS = [0, -1, 65536, 10**6, 1.5, 8080.0, "8080", None, True, False, [8080]]


pytestmark = [pytest.mark.usefixtures("private_port_leases"), pytest.mark.pure]


def _outside_ephemeral(port: int) -> bool:
    low, high = ephemeral_port_range()
    return not low <= port <= high


def _lease_is_free(port: int) -> bool:
    """Whether another process could lease ``port`` now (asked in a fresh interpreter)."""
    code = textwrap.dedent(
        f"""
        from pyspark_safestop.ports import _allocation, lease_directory
        lease = _allocation._try_lease(lease_directory(), {port})
        print("free" if lease is not None else "busy")
        if lease is not None:
            _allocation._drop(lease)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=EXIT_TIMEOUT,
        check=True,
    )
    return out.stdout.strip() == "free"


# -- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", BAD_PORTS)
def test_bad_ports_are_rejected_naming_the_value(bad: object) -> None:
    for function in (kill_process_on_port, release_port, listeners_on_port, ports.is_port_free):
        with pytest.raises((TypeError, ValueError)) as info:
            function(bad)  # type: ignore[arg-type]
        assert repr(bad) in str(info.value), function


@pytest.mark.parametrize(
    "bad", [-1, -0.1, float("inf"), float("nan"), "5", None, True, MAX_TIMEOUT + 1, 1e300]
)
def test_bad_timeout_is_rejected(bad: object) -> None:
    with pytest.raises(ValueError, match="timeout") as info:
        kill_process_on_port(1, timeout=bad)  # type: ignore[arg-type]
    assert repr(bad) in str(info.value)
    with pytest.raises(ValueError, match="timeout"):
        register_cleanup(port=15002, timeout=bad)  # type: ignore[arg-type]


def test_a_huge_int_timeout_is_a_value_error_not_an_overflow() -> None:
    for call in (
        kill_process_on_port,
        lambda port, timeout: register_cleanup(port=port, timeout=timeout),
    ):
        with pytest.raises(ValueError, match="timeout"):
            call(15002, timeout=10**400)


@pytest.mark.parametrize("timeout", [0, 0.0, MAX_TIMEOUT, int(MAX_TIMEOUT)])
def test_timeouts_up_to_the_maximum_are_accepted(timeout: float) -> None:
    with leased_port() as port:
        assert kill_process_on_port(port, expect=NO_SUCH_COMMAND, timeout=timeout) == []


@pytest.mark.parametrize("bad", ["", 5, b"java", re.compile(b"java")])
def test_bad_expect_is_rejected(bad: object) -> None:
    with pytest.raises((TypeError, ValueError), match="expect"):
        kill_process_on_port(1, expect=bad)  # type: ignore[arg-type]


# -- port_from_env ----------------------------------------------------------------------------


def test_port_from_env_uses_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_SPARK_PORT", " 15002 ")
    assert port_from_env("TEST_SPARK_PORT") == 15002
    assert 15002 not in leased_ports()  # chosen by the user: used as given, not leased


@pytest.mark.parametrize("bad", ["abc", "0", "65536", "-1", "1.5", "+80", "0x50", "8_080", "٨٠"])
def test_port_from_env_rejects_non_ports_naming_variable_and_value(
    monkeypatch: pytest.MonkeyPatch, bad: str
) -> None:
    monkeypatch.setenv("TEST_SPARK_PORT", bad)
    with pytest.raises(ValueError, match="TEST_SPARK_PORT") as info:
        port_from_env("TEST_SPARK_PORT")
    assert repr(bad) in str(info.value)


@pytest.mark.parametrize("value", [None, "", "  "])
def test_port_from_env_falls_back_to_default_then_allocation(
    monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    if value is None:
        monkeypatch.delenv("TEST_SPARK_PORT", raising=False)
    else:
        monkeypatch.setenv("TEST_SPARK_PORT", value)
    assert port_from_env("TEST_SPARK_PORT", default=15002) == 15002
    port = port_from_env("TEST_SPARK_PORT")
    try:
        assert port in leased_ports()
        assert _outside_ephemeral(port)
    finally:
        release_port(port)


def test_port_from_env_rejects_a_bad_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEST_SPARK_PORT", raising=False)
    with pytest.raises(ValueError, match="default"):
        port_from_env("TEST_SPARK_PORT", default=70000)


# -- allocation and leases --------------------------------------------------------------------


def test_ephemeral_range_comes_from_the_kernel() -> None:
    path = Path("/proc/sys/net/ipv4/ip_local_port_range")
    if not path.exists():
        assert ephemeral_port_range() == (49152, 65535)
        return
    low, high = (int(x) for x in path.read_text().split())
    assert ephemeral_port_range() == (low, high)


def test_allocated_port_is_free_outside_the_ephemeral_range_and_leased() -> None:
    port = allocate_free_port()
    try:
        assert _outside_ephemeral(port)
        assert 10000 <= port <= 65535
        assert port in leased_ports()
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))  # free: a server can bind it
        assert not _lease_is_free(port)
    finally:
        assert release_port(port) is True
    assert release_port(port) is False
    assert port not in leased_ports()
    assert _lease_is_free(port)


def test_allocation_skips_a_port_someone_listens_on(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        # Offer the busy port first, then a free one: the bind test must skip the busy one.
        free = allocate_free_port()
        release_port(free)
        offered = iter([taken, free])
        monkeypatch.setattr(_allocation, "_pick", lambda ranges, total: next(offered))
        assert allocate_free_port() == free
        release_port(free)


def test_leased_port_context_manager_releases() -> None:
    with leased_port() as port:
        assert port in leased_ports()
    assert port not in leased_ports()


def test_allocation_on_ipv6_loopback() -> None:
    skip_without_ipv6_loopback()
    with leased_port("::1") as port, socket.socket(socket.AF_INET6) as sock:
        sock.bind(("::1", port))


def test_unresolvable_host_is_named() -> None:
    with pytest.raises(ValueError, match=r"no-such-host\.invalid"):
        allocate_free_port("no-such-host.invalid")


def _start_allocators(procs: Processes, workers: int, count: int) -> list[Child]:
    """Start allocator processes and let them all allocate at the same moment."""
    started = [procs.start([sys.executable, str(ALLOCATOR), str(count)]) for _ in range(workers)]
    for worker in started:
        assert read_line(worker) == "ready"
    for worker in started:
        assert worker.stdin is not None
        worker.stdin.write("go\n")
        worker.stdin.flush()
    return started


def test_many_processes_never_share_a_leased_port(procs: Processes) -> None:
    workers = _start_allocators(procs, 8, 100)
    reports = [json.loads(read_line(worker, timeout=120)) for worker in workers]
    # Every worker still holds all its leases here: the 800 ports must be distinct.
    counts = Counter(port for report in reports for port in report["ports"])
    duplicates = {port: n for port, n in counts.items() if n > 1}
    assert sum(counts.values()) == 800
    assert duplicates == {}
    assert all(_outside_ephemeral(port) for port in counts)
    for worker in workers:
        assert worker.stdin is not None
        worker.stdin.close()
        assert worker.wait(timeout=EXIT_TIMEOUT) == 0


def test_threads_never_share_a_leased_port() -> None:
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        batches = list(pool.map(lambda _: [allocate_free_port() for _ in range(50)], range(8)))
    every = [port for batch in batches for port in batch]
    try:
        assert len(set(every)) == len(every) == 400
        assert set(every) <= leased_ports()
    finally:
        for port in every:
            release_port(port)


def test_normal_exit_removes_the_lease_files(procs: Processes) -> None:
    (holder,) = _start_allocators(procs, 1, 3)
    held = json.loads(read_line(holder))["ports"]
    files = [lease_directory() / f"{port}.lock" for port in held]
    assert all(path.exists() for path in files)
    assert holder.stdin is not None
    holder.stdin.close()
    assert holder.wait(timeout=EXIT_TIMEOUT) == 0
    assert not any(path.exists() for path in files)


def test_lease_ends_when_its_holder_is_sigkilled(procs: Processes) -> None:
    (holder,) = _start_allocators(procs, 1, 1)
    port = json.loads(read_line(holder))["ports"][0]
    assert not _lease_is_free(port)
    holder.kill()  # our own child, unreaped: its PID cannot belong to anyone else yet
    assert holder.wait(timeout=EXIT_TIMEOUT) == -signal.SIGKILL
    assert _lease_is_free(port)


def _forker(procs: Processes, mode: str) -> tuple[Child, dict[str, Any]]:
    proc = procs.start([sys.executable, str(FORKER), mode])
    return proc, dict(json.loads(read_line(proc)))


def _finish(proc: Child) -> None:
    assert proc.stdin is not None
    proc.stdin.close()
    assert proc.wait(timeout=EXIT_TIMEOUT) == 0


def test_forked_child_does_not_hold_or_release_the_parents_leases(procs: Processes) -> None:
    proc, report = _forker(procs, "child-exits")
    assert report["child"] == {"held": [], "released": False}
    # The child has exited (closing its copies): the parent's lease is intact.
    assert report["parent_holds"] is True
    assert not _lease_is_free(report["port"])
    _finish(proc)
    assert _lease_is_free(report["port"])


def test_a_living_forked_child_does_not_keep_a_released_lease(procs: Processes) -> None:
    proc, report = _forker(procs, "child-lives")
    assert _lease_is_free(report["port"])
    _finish(proc)
