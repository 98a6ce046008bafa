"""Interpreter exit: close the channels still open, then shut the release pool, promptly.

``concurrent.futures`` joins its worker threads from ``threading``'s exit hook, which runs
before ``atexit`` callbacks: a worker stuck in an RPC on a channel nobody closed never returns
and the interpreter hangs. So this runs as a ``threading`` exit hook registered after
``concurrent.futures``' own (they run last-registered first), and closes the channels of the
sessions never stopped first: closing a channel cancels its RPCs and frees those workers.
"""

from __future__ import annotations

import atexit
import concurrent.futures.thread  # noqa: F401  (registers its exit hook before ours)
import logging
import threading
import time

from ..client import _operations
from . import _reachability, _sessions
from ._release import release_and_close
from ._state import STATE

__all__ = ["register"]

logger = logging.getLogger("pyspark_safestop")

_registered = False
_registered_lock = threading.Lock()


def register() -> None:
    """Register the exit hook once per process."""
    global _registered
    with _registered_lock:
        if _registered:
            return
        _registered = True
    register_threading_atexit = getattr(threading, "_register_atexit", None)
    try:
        if register_threading_atexit is None:
            raise RuntimeError("threading._register_atexit is not available")
        register_threading_atexit(_at_exit)
    except RuntimeError:
        # Too late (already shutting down) or an interpreter without the hook: atexit is
        # the next best place; it still runs before the gRPC channels are torn down.
        logger.debug("falling back to atexit for the exit hook", exc_info=True)
        atexit.register(_at_exit)


def close_live_sessions(budget: float) -> int:
    """Close the channel of every tracked session not stopped; return how many were closed.

    Where upstream would release sessions at exit (4.2+ with
    ``SPARK_CONNECT_RELEASE_SESSION_ON_EXIT``), the release is made first, all of them within
    ``budget`` seconds in total.
    """
    deadline = time.monotonic() + budget
    closed = 0
    for session in _sessions.live():
        try:
            client = session.client
            if _operations.is_closed(client):
                continue
            remaining = deadline - time.monotonic()
            release = remaining > 0 and _operations.release_on_exit(client)
            release_and_close(client, max(remaining, 0.0), release=release)
            closed += 1
        except Exception:
            logger.debug("could not close a session at exit", exc_info=True)
    return closed


def _at_exit() -> None:
    if not STATE.installed:
        return
    try:
        _reachability.stop_waiting()
        closed = close_live_sessions(STATE.settings.release_timeout)
        layout = STATE.layout
        pool = _operations.shutdown_release_pool_nowait(layout) if layout is not None else False
        logger.debug("exit: closed %d channel(s), release pool shut down: %s", closed, pool)
    except Exception:
        logger.debug("exit hook failed", exc_info=True)
