"""The live Spark Connect sessions created while the shim is active.

A weak set: tracking must never keep a session (and its channel) alive. The exit path closes
the channels of the sessions still here, and ``status()`` counts them.
"""

from __future__ import annotations

import os
import threading
import weakref
from typing import Any

__all__ = ["add", "discard", "live", "mark_stopped", "was_stopped"]

_lock = threading.Lock()
_live: weakref.WeakSet[Any] = weakref.WeakSet()
# Sessions whose stop() went through the shim; kept weakly so a stopped session can be
# collected. A second stop() consults it to be a no-op.
_stopped: weakref.WeakSet[Any] = weakref.WeakSet()


def _forget_after_fork() -> None:
    # A child made by os.fork() inherits the parent's sessions, but not the threads that serve
    # their channels: closing them from the child's exit hook can block on gRPC state owned by
    # the parent. The child's sessions are only those it creates itself. The lock may have been
    # held by another parent thread at the fork: replace it rather than acquire it.
    global _lock, _live, _stopped
    _lock = threading.Lock()
    _live = weakref.WeakSet()
    _stopped = weakref.WeakSet()


if hasattr(os, "register_at_fork"):  # not on Windows
    os.register_at_fork(after_in_child=_forget_after_fork)


def add(session: Any) -> None:
    """Track ``session`` until it is stopped or collected."""
    with _lock:
        _live.add(session)


def discard(session: Any) -> None:
    """Stop tracking ``session``."""
    with _lock:
        _live.discard(session)


def live() -> list[Any]:
    """Return a snapshot of the tracked sessions (strong references: drop it soon)."""
    with _lock:
        return list(_live)


def mark_stopped(session: Any) -> bool:
    """Mark ``session`` stopped; return ``False`` if it already was (atomically)."""
    with _lock:
        if session in _stopped:
            return False
        _stopped.add(session)
        _live.discard(session)
        return True


def was_stopped(session: Any) -> bool:
    """Return whether ``session`` was stopped through the shim."""
    with _lock:
        return session in _stopped
