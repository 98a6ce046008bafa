"""pyspark_safestop.ports with real sockets and real processes.

Listeners run in subprocesses (one as ``nobody`` where the tests run as root); every process a
test starts is ended at teardown through its own process group, never by name or port.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from pyspark_safestop import ports
from pyspark_safestop._settings import MAX_TIMEOUT, SafestopWarning
from pyspark_safestop.ports import (
    ForeignProcessError,
    KillRefusedError,
    LeaseDirectoryError,
    ProcessInfo,
    ProtectedProcessError,
    UnexpectedProcessError,
    _allocation,
    _kill,
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
from tests.foreign_user import ForeignUser
from tests.ports_helpers import (
    ALLOCATOR,
    CLEANUP_TARGET,
    EXIT_TIMEOUT,
    FORKER,
    LISTENER,
    Child,
    Processes,
    child_env,
    kill_identified,
    read_line,
    wait_gone,
)

#: Every kill in these tests names the listener's script: if anything else ever listened on a
#: test's port, the call would refuse instead of ending it.
OURS = str(LISTENER)
#: For calls on ports where nothing should listen at all.
NO_SUCH_COMMAND = "no process has this in its command line 7f3c9e"

BAD_PORTS = [0, -1, 65536, 10**6, 1.5, 8080.0, "8080", None, True, False, [8080]]


pytestmark = pytest.mark.usefixtures("private_port_leases")


@pytest.fixture
def lease_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private lease directory, so a test can inspect and break it without side effects."""
    path = tmp_path / "leases"
    monkeypatch.setenv(ports.ENV_LEASE_DIR, str(path))
    return path


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


def _skip_without_ipv6_loopback() -> None:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError as error:
        pytest.skip(f"no IPv6 loopback: {error}")


def test_allocation_on_ipv6_loopback() -> None:
    _skip_without_ipv6_loopback()
    with leased_port("::1") as port, socket.socket(socket.AF_INET6) as sock:
        sock.bind(("::1", port))


def test_unresolvable_host_is_named() -> None:
    with pytest.raises(ValueError, match=r"no-such-host\.invalid"):
        allocate_free_port("no-such-host.invalid")


#: The uid of ``nobody``: what a squatter on a shared machine looks like.
NOBODY = 65534


def _squat(path: Path, mode: int = 0o755) -> None:
    """Create ``path`` owned by ``nobody``, as another user would before we get there."""
    if os.geteuid() != 0:
        pytest.skip("creating a directory owned by another user needs root")
    path.mkdir(mode=mode)
    os.chown(path, NOBODY, NOBODY)


@pytest.fixture
def default_location(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No lease directory setting and no ``XDG_RUNTIME_DIR``; a private temporary folder."""
    monkeypatch.delenv(ports.ENV_LEASE_DIR)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    temp = tmp_path / "tmp"
    temp.mkdir()
    temp.chmod(0o1777)  # like /tmp: world-writable and sticky
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    return temp


def _assert_private(*paths: Path) -> None:
    for path in paths:
        info = path.lstat()
        assert info.st_uid == os.getuid()
        assert info.st_mode & 0o777 == 0o700


def test_default_lease_directory_in_the_temporary_folder(default_location: Path) -> None:
    expected = default_location / f"pyspark-safestop-{os.getuid()}" / "ports"
    assert lease_directory() == expected
    _assert_private(expected, expected.parent)
    with leased_port() as port:
        assert (expected / f"{port}.lock").exists()


@pytest.fixture
def runtime_dir(default_location: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private ``XDG_RUNTIME_DIR``, as a login session provides (``/run/user/<uid>``)."""
    runtime = tmp_path / "run-user"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    return runtime


def test_default_lease_directory_prefers_a_private_runtime_dir(runtime_dir: Path) -> None:
    expected = runtime_dir / "pyspark-safestop" / "ports"
    assert lease_directory() == expected
    _assert_private(expected, expected.parent)


@pytest.mark.parametrize("problem", ["open", "foreign", "relative", "missing"])
def test_an_unusable_runtime_dir_is_passed_over(
    default_location: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, problem: str
) -> None:
    runtime = tmp_path / "run-user"
    if problem == "open":
        runtime.mkdir()
        runtime.chmod(0o755)
    elif problem == "foreign":
        _squat(runtime, 0o700)
    elif problem == "relative":
        runtime = Path("run-user")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    expected = default_location / f"pyspark-safestop-{os.getuid()}" / "ports"
    assert lease_directory() == expected


def test_a_relative_lease_directory_setting_warns_once_and_is_ignored(
    default_location: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ports.ENV_LEASE_DIR, "relative/leases")
    expected = default_location / f"pyspark-safestop-{os.getuid()}" / "ports"
    with pytest.warns(SafestopWarning, match=ports.ENV_LEASE_DIR):
        assert lease_directory() == expected
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert lease_directory() == expected


def _assert_refused(path: Path, *words: str) -> None:
    with pytest.raises(LeaseDirectoryError) as info:
        allocate_free_port()
    message = str(info.value)
    assert isinstance(info.value, PermissionError)
    assert str(path) in message
    assert ports.ENV_LEASE_DIR in message  # how to pick another one
    for word in words:
        assert word in message


def test_squatted_default_directory_is_refused(default_location: Path) -> None:
    squatted = default_location / f"pyspark-safestop-{os.getuid()}"
    _squat(squatted)
    _assert_refused(squatted, f"uid {NOBODY}")


def test_squatted_directory_in_the_runtime_dir_is_refused(runtime_dir: Path) -> None:
    _squat(runtime_dir / "pyspark-safestop")
    _assert_refused(runtime_dir / "pyspark-safestop", f"uid {NOBODY}")


def test_lease_directory_of_another_user_is_refused(lease_dir: Path) -> None:
    _squat(lease_dir, 0o700)
    _assert_refused(lease_dir, f"uid {NOBODY}")


@pytest.mark.parametrize("mode", [0o770, 0o707, 0o1777])
def test_lease_directory_writable_by_others_is_refused(lease_dir: Path, mode: int) -> None:
    lease_dir.mkdir()
    lease_dir.chmod(mode)
    _assert_refused(lease_dir, "writable by others")
    assert lease_dir.stat().st_mode & 0o7777 == mode  # refused, not silently repaired


def test_lease_directory_readable_by_others_is_tightened(lease_dir: Path) -> None:
    assert lease_directory() == lease_dir
    _assert_private(lease_dir)
    lease_dir.chmod(0o755)
    lease_directory()
    _assert_private(lease_dir)


def test_lease_directory_symlink_is_refused(lease_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    lease_dir.symlink_to(tmp_path / "elsewhere")
    _assert_refused(lease_dir, "symlink")


@pytest.mark.parametrize("mode", [0o777, 0o775])
def test_lease_directory_in_a_folder_writable_by_others_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: int
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(mode)  # not sticky: anyone could rename our directory and put theirs there
    monkeypatch.setenv(ports.ENV_LEASE_DIR, str(shared / "leases"))
    _assert_refused(shared / "leases", str(shared), "not sticky")


def test_lease_directory_in_a_sticky_shared_folder_is_accepted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    monkeypatch.setenv(ports.ENV_LEASE_DIR, str(shared / "leases"))
    assert lease_directory() == shared / "leases"
    _assert_private(shared / "leases")


def test_lease_directory_in_a_folder_of_another_user_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    theirs = tmp_path / "theirs"
    _squat(theirs)
    monkeypatch.setenv(ports.ENV_LEASE_DIR, str(theirs / "leases"))
    _assert_refused(theirs / "leases", str(theirs), f"uid {NOBODY}")


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
    _skip_without_ipv6_loopback()
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
