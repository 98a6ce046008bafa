"""``serve``: run a local server (Spark or Sail) until Ctrl-C or SIGTERM, then stop it cleanly.

The server runs in a session of its own (so a Ctrl-C in the terminal reaches this process, not
the server); this process stops it on SIGINT, SIGTERM or SIGHUP, also while it is still starting.
Killed outright, this process still leaves no server behind: its launcher stops it (see
:mod:`._local_server`).
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType

from ..servers._local import LocalServer

__all__ = ["STOP_SIGNALS", "Interrupted", "serve"]

logger = logging.getLogger("pyspark_safestop")

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
#: How often the wait checks that the server is still alive.
_POLL_SECONDS = 0.5
#: Log lines quoted when a server with a temporary log exits by itself.
_TAIL_LINES = 40


class Interrupted(BaseException):
    """A stop signal arrived (a BaseException, so that it also interrupts a starting server)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise(signum: int, frame: FrameType | None) -> None:
    raise Interrupted(signum)


@contextmanager
def _signals_raise() -> Iterator[None]:
    previous = {sig: signal.signal(sig, _raise) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def serve(server: LocalServer, on_ready: Callable[[LocalServer], None]) -> int:
    """Start ``server``, call ``on_ready``, and wait for a stop signal; then stop it.

    Returns 0 when a signal stopped it, 1 when the server exited by itself. Raises
    ``RuntimeError`` when it cannot start. Must run in the main thread (signal handlers).
    """
    stopped_by: int | None = None
    exit_report = ""
    try:
        with _signals_raise():
            server.start()  # interrupted by a signal, it stops what it started and re-raises
            on_ready(server)
            idle = threading.Event()  # never set: a wait a signal handler can interrupt
            while server.running:
                idle.wait(_POLL_SECONDS)
            # Read now: a temporary log is removed with the server's folder at stop.
            exit_report = (
                f"the end of its log:\n{server.log_tail(_TAIL_LINES)}"
                if server.log_is_temporary
                else f"see {server.log_path}"
            )
    except Interrupted as interrupted:
        stopped_by = interrupted.signum
    finally:
        # Stopping is bounded (SIGTERM, then SIGKILL after a grace period): a second Ctrl-C
        # must not abandon the server half-way.
        previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in STOP_SIGNALS}
        try:
            server.stop()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    if stopped_by is None:
        logger.warning("the %s server exited by itself; %s", server.engine, exit_report)
        return 1
    logger.info("stopped on %s", signal.Signals(stopped_by).name)
    return 0
