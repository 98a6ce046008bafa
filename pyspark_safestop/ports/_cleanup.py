"""Ending a server the process started when the process exits, or on SIGTERM or SIGINT."""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import re
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType

from ._checks import check_expect, check_port, check_timeout
from ._kill import end, kill_process_on_port
from ._listeners import ProcessInfo, process_info
from ._refusals import check_all

logger = logging.getLogger("pyspark_safestop")


@dataclass(frozen=True)
class _Cleanup:
    port: int | None
    process: ProcessInfo | None
    expect: str | re.Pattern[str] | None
    timeout: float


_cleanups: list[_Cleanup] = []
_cleanups_lock = threading.RLock()
_cleanup_owner = os.getpid()
_atexit_registered = False
_previous_handlers: dict[int, Callable[[int, FrameType | None], object] | int] = {}
_running_cleanups = False


def _run_cleanups() -> None:
    """Run (once each) the cleanups registered by this very process; never raise."""
    global _running_cleanups
    if os.getpid() != _cleanup_owner or _running_cleanups:
        return
    with _cleanups_lock:
        pending = list(reversed(_cleanups))  # last registered, first ended
        _cleanups.clear()
    _running_cleanups = True
    try:
        for cleanup in pending:
            try:
                if cleanup.port is not None:
                    kill_process_on_port(
                        cleanup.port, expect=cleanup.expect, timeout=cleanup.timeout
                    )
                elif cleanup.process is not None:
                    end([cleanup.process], cleanup.timeout, None)
            except Exception as error:
                # At exit or in a signal handler nobody can act on an exception: report it.
                what = (
                    f"port {cleanup.port}"
                    if cleanup.port is not None
                    else f"PID {cleanup.process.pid if cleanup.process else '?'}"
                )
                logger.warning("cleanup of %s failed: %s", what, error)
    finally:
        _running_cleanups = False


def _on_signal(signum: int, frame: FrameType | None) -> None:
    _run_cleanups()
    previous = _previous_handlers.get(signum, signal.SIG_DFL)
    if callable(previous):
        previous(signum, frame)  # e.g. default_int_handler, which raises KeyboardInterrupt
        return
    if previous == signal.SIG_DFL:
        # Die of the signal as the default action would have: the parent sees the real cause.
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


def _install_handlers() -> None:
    """Hook SIGTERM and SIGINT (main thread only), chaining the handlers found there."""
    global _atexit_registered
    if not _atexit_registered:
        atexit.register(_run_cleanups)
        _atexit_registered = True
    if threading.current_thread() is not threading.main_thread():
        logger.debug("not in the main thread: cleanup runs at normal exit only")
        return
    for signum in (signal.SIGTERM, signal.SIGINT):
        current = signal.getsignal(signum)
        if current is _on_signal:
            continue
        if current is None or current == signal.SIG_IGN:
            # Ignored: the process would not end on it, so neither must its servers. None: a
            # handler installed outside Python, which could not be chained.
            logger.debug("leaving %s alone (handler %r)", signal.Signals(signum).name, current)
            continue
        _previous_handlers[signum] = current
        signal.signal(signum, _on_signal)


def _after_fork_cleanups() -> None:
    global _cleanups_lock, _cleanup_owner, _running_cleanups
    # The child did not start the parent's servers; its inherited handlers only chain.
    _cleanups_lock = threading.RLock()
    _cleanups.clear()
    _cleanup_owner = os.getpid()
    _running_cleanups = False


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_cleanups)


def register_cleanup(
    *,
    port: int | None = None,
    pid: int | None = None,
    expect: str | re.Pattern[str] | None = None,
    timeout: float = 5.0,
) -> Callable[[], None]:
    """End a server this process started when the process exits, or on SIGTERM or SIGINT.

    Give exactly one of ``port`` (the listeners on the port are ended with
    :func:`kill_process_on_port` and its checks) or ``pid`` (that very process, identified
    now by PID and start time, is ended if it still runs). ``expect`` and ``timeout`` (0 to
    one day) are those of :func:`kill_process_on_port`. Cleanups run last-registered first,
    at most once, only in the process that registered them (not in forked children).

    On SIGTERM and SIGINT the handler installed before (Python's ``KeyboardInterrupt`` for
    SIGINT, a handler of the caller's) is called afterwards; with the default action, the
    process then dies of the signal. A signal that was ignored stays ignored. Signal handlers
    can only be installed from the main thread; elsewhere, cleanup happens at normal exit.

    Returns:
        A function that cancels this registration.

    Raises:
        TypeError, ValueError: Neither or both of ``port`` and ``pid``, or an invalid value.
        ProcessLookupError: No process ``pid`` exists.
        KillRefusedError: The process ``pid`` may not be signalled (see
            :func:`kill_process_on_port`).
    """
    expect = check_expect(expect)
    timeout = check_timeout(timeout)
    if (port is None) == (pid is None):
        raise TypeError(f"give exactly one of port and pid, got port={port!r}, pid={pid!r}")
    process: ProcessInfo | None = None
    if port is not None:
        port = check_port(port)
    else:
        if isinstance(pid, bool) or not isinstance(pid, int):
            raise TypeError(f"pid must be an int, got {pid!r}")
        if pid <= 0:
            raise ValueError(f"pid must be positive, got {pid!r}")
        process = process_info(pid)
        if process is None:
            raise ProcessLookupError(f"no running process with PID {pid}")
        check_all([process], None, expect)
    cleanup = _Cleanup(port, process, expect, timeout)
    with _cleanups_lock:
        _cleanups.append(cleanup)
        _install_handlers()

    def unregister() -> None:
        with _cleanups_lock, contextlib.suppress(ValueError):
            _cleanups.remove(cleanup)

    return unregister
