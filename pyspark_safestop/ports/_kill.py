"""Ending the processes that listen on a port: checked first, then SIGTERM, then SIGKILL.

psutil recognises a process across PID reuse by its start time, and waits for it. What is
added here: every listener is checked before any is signalled, each signal goes through a
pidfd (Linux 5.3+) opened before the last identity check, so it reaches exactly the process
checked, and a process is never reaped (it may be the caller's child, whose exit status is
its parent's to collect).
"""

from __future__ import annotations

import logging
import os
import re
import signal
import time
from collections.abc import Callable

import psutil

from ._checks import check_expect, check_port, check_timeout
from ._listeners import ProcessInfo, listening_pids, process_info
from ._refusals import ForeignProcessError, check_all

logger = logging.getLogger("pyspark_safestop")

#: Seconds to wait for a SIGKILLed process to disappear before reporting it as still alive.
_KILL_WAIT = 5.0


def _handle(target: ProcessInfo) -> psutil.Process | None:
    """A psutil handle on the very process ``target`` describes; ``None`` once it is gone."""
    try:
        proc = psutil.Process(target.pid)
        # The handle compares this start time whenever it is used: a reused PID is not it.
        return proc if proc.create_time() == target.create_time else None
    except psutil.NoSuchProcess:
        return None


def _still_ours(proc: psutil.Process, target: ProcessInfo) -> bool:
    """Whether ``proc`` still runs (not a zombie) under the uids ``target`` was checked with."""
    try:
        if not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE:
            return False
        uids = proc.uids()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False  # gone, or no longer verifiable: not signalled
    if (uids.real, uids.effective) != (target.uid, target.euid):
        logger.warning(
            "PID %d changed owner to uid %d since it was checked; not signalling it",
            target.pid,
            uids.real,
        )
        return False
    return True


def _open_pidfd(pid: int) -> int | None:
    """A pidfd for ``pid``, or ``None`` where the kernel or Python has none."""
    pidfd_open: Callable[[int], int] | None = getattr(os, "pidfd_open", None)
    if pidfd_open is None or not hasattr(signal, "pidfd_send_signal"):
        return None
    try:
        return pidfd_open(pid)
    except ProcessLookupError:
        raise
    except OSError:  # ENOSYS on old kernels, EPERM under some seccomp filters
        return None


def _send(proc: psutil.Process, target: ProcessInfo, sig: signal.Signals) -> bool:
    """Send ``sig`` to ``proc`` if it is still the process checked; return whether it was sent.

    With a pidfd, the identity check runs after the pidfd is opened, so the signal reaches the
    very process that was checked even if its PID is reused a moment later. Without one,
    psutil checks the start time again immediately before ``kill()``.
    """
    try:
        pidfd = _open_pidfd(target.pid)
    except ProcessLookupError:
        return False
    try:
        if not _still_ours(proc, target):
            return False
        if pidfd is not None:
            signal.pidfd_send_signal(pidfd, sig)
        else:
            proc.send_signal(sig)
    except (ProcessLookupError, psutil.NoSuchProcess):
        return False
    finally:
        if pidfd is not None:
            os.close(pidfd)
    return True


def _wait_gone(
    procs: list[tuple[psutil.Process, ProcessInfo]], timeout: float
) -> list[tuple[psutil.Process, ProcessInfo]]:
    """Wait up to ``timeout`` s for ``procs`` to exit; return those still alive."""
    # Polled, not psutil.wait_procs(): that reaps the caller's own children, taking the exit
    # status its subprocess.Popen objects are waiting for.
    deadline = time.monotonic() + timeout
    delay = 0.01
    alive = [pair for pair in procs if _still_ours(*pair)]
    while alive and time.monotonic() < deadline:
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, 0.1)
        alive = [pair for pair in alive if _still_ours(*pair)]
    return alive


def end(targets: list[ProcessInfo], timeout: float, port: int | None) -> list[int]:
    """SIGTERM ``targets``, SIGKILL those alive after ``timeout`` s; return the PIDs ended.

    A target that is no longer the process it describes (it exited, its PID was reused) is
    left alone.
    """
    where = f" on port {port}" if port is not None else ""
    signalled: list[tuple[psutil.Process, ProcessInfo]] = []
    for target in targets:
        proc = _handle(target)
        logger.info("sending SIGTERM to PID %d%s: %s", target.pid, where, target.command[:200])
        if proc is not None and _send(proc, target, signal.SIGTERM):
            signalled.append((proc, target))
        else:
            logger.debug("PID %d was gone before SIGTERM", target.pid)
    survivors = _wait_gone(signalled, timeout)
    for proc, target in survivors:
        logger.warning(
            "PID %d%s still running %.1fs after SIGTERM; sending SIGKILL",
            target.pid,
            where,
            timeout,
        )
        _send(proc, target, signal.SIGKILL)
    unkillable = {target.pid for _, target in _wait_gone(survivors, _KILL_WAIT)}
    for pid in sorted(unkillable):
        logger.warning("PID %d%s is still alive %.0fs after SIGKILL", pid, where, _KILL_WAIT)
    return sorted(target.pid for _, target in signalled if target.pid not in unkillable)


def kill_process_on_port(
    port: int,
    *,
    expect: str | re.Pattern[str] | None = None,
    timeout: float = 5.0,
    dry_run: bool = False,
) -> list[int]:
    """End the processes listening on TCP ``port``: SIGTERM, ``timeout`` s, then SIGKILL.

    Every listener is checked before any is signalled; if one fails a check, the call raises
    and signals nothing at all. Just before each signal the process's identity (PID and start
    time) and owner are checked again, so a PID reused in the meantime is never hit.

    Args:
        port: The TCP port (1-65535).
        expect: A ``str`` the command line must contain, or a compiled pattern it must match
            (``re.search``); for example ``"SparkConnectServer"``.
        timeout: Seconds between SIGTERM and SIGKILL, from 0 (SIGKILL right away if still
            alive) to ``MAX_TIMEOUT`` of :mod:`pyspark_safestop._settings` (one day).
        dry_run: Run every check, signal nothing, and return the PIDs that would be ended.

    Returns:
        The sorted PIDs ended (or, with ``dry_run``, that would be ended); ``[]`` if nothing
        listens on the port. A process that exits on its own before the first signal is not
        included, nor one still alive (in uninterruptible sleep) long after SIGKILL, which is
        logged as a warning.

    Raises:
        TypeError, ValueError: ``port``, ``expect`` or ``timeout`` is invalid (a ``timeout``
            beyond the maximum included).
        ForeignProcessError: A listener belongs to another user (also when running as root),
            or is invisible to this user.
        ProtectedProcessError: A listener is PID 1 or lower, this process or an ancestor.
        UnexpectedProcessError: A listener's command line does not match ``expect``.
    """
    port = check_port(port)
    expect = check_expect(expect)
    timeout = check_timeout(timeout)
    if not isinstance(dry_run, bool):
        raise TypeError(f"dry_run must be a bool, got {dry_run!r}")

    pids, hidden_owners = listening_pids(port)
    if hidden_owners:
        raise ForeignProcessError(
            f"refusing to clear port {port}: a process this user cannot inspect listens on it "
            f"(owner {', '.join(hidden_owners)}); nothing was signalled",
            pid=None,
            owner=", ".join(hidden_owners),
            port=port,
        )
    infos = [info for info in (process_info(pid) for pid in sorted(pids)) if info is not None]
    if not infos:
        logger.debug("nothing listens on port %d", port)
        return []
    check_all(infos, port, expect)
    if dry_run:
        return [info.pid for info in infos]
    return end(infos, timeout, port)
