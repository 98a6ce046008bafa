"""The side of a scenario that runs in the child interpreter: its protocol and its steps.

A scenario process prints its progress as one JSON object per line (:func:`event`), which
the parent (:mod:`pyspark_safestop.testing.runner`) reads as it comes, so that a run that
hangs still shows how far it got. At a :func:`checkpoint` it waits for the parent to act
(kill the server, blackhole the connection) and say go.

A watchdog thread (:func:`start_watchdog`) prints a ``stacks`` event, the stack of every
thread, whenever the process has printed nothing for a few seconds: the parent recognises
from it a thread parked where upstream hangs for good, and need not wait for a timeout.

Nothing here imports pyspark before a session is asked for: the process activates the shim
first (or not), as a user's conftest does.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from dataclasses import dataclass
from types import FrameType
from typing import Any

__all__ = [
    "StopOutcome",
    "checkpoint",
    "event",
    "new_session",
    "query",
    "start_watchdog",
    "stop_with_cap",
    "thread_stacks",
]

_T0 = time.monotonic()
_last_event = _T0
_print_lock = threading.Lock()


def event(kind: str, **data: Any) -> None:
    """Print one progress event (flushed at once: the parent reads them as they come)."""
    global _last_event
    line = json.dumps(
        {"event": kind, "t": round(time.monotonic() - _T0, 3), "pid": os.getpid(), **data}
    )
    with _print_lock:
        print(line, flush=True)
        if kind != "stacks":  # the watchdog's own output is not progress
            _last_event = time.monotonic()


def checkpoint(name: str) -> None:
    """Ask the parent to run its action ``name`` and wait until it says go."""
    event("checkpoint", name=name)
    sys.stdin.readline()


def _frame_name(frame: FrameType) -> str:
    code = frame.f_code
    name: str | None = getattr(code, "co_qualname", None)  # Python 3.11+
    if name is None:
        # Before 3.11: the class from the method's self or cls, as co_qualname would name it.
        owner = frame.f_locals.get("self", frame.f_locals.get("cls"))
        kind = owner if isinstance(owner, type) else type(owner)
        name = code.co_name if owner is None else f"{kind.__name__}.{code.co_name}"
    return f"{frame.f_globals.get('__name__', '?')}.{name}:{frame.f_lineno}"


def thread_stacks() -> list[dict[str, Any]]:
    """Every thread's stack, outermost frame first, as ``module.qualname:line`` strings."""
    names = {t.ident: t for t in threading.enumerate()}
    stacks = []
    for ident, top in sys._current_frames().items():
        frames: list[str] = []
        frame: FrameType | None = top
        while frame is not None:
            frames.append(_frame_name(frame))
            frame = frame.f_back
        thread = names.get(ident)
        stacks.append(
            {
                "thread": thread.name if thread else str(ident),
                "daemon": bool(thread and thread.daemon),
                "frames": frames[::-1],
            }
        )
    return stacks


def start_watchdog(quiet: float) -> None:
    """Print a ``stacks`` event each time the process has been quiet for ``quiet`` seconds.

    A daemon thread: it keeps watching through the interpreter's exit (``threading``'s exit
    hook, which joins worker threads, runs before daemon threads stop).
    """
    if not quiet > 0:
        raise ValueError(f"quiet must be > 0 seconds, got {quiet!r}")

    def watch() -> None:
        dumped = 0.0
        while True:
            time.sleep(min(0.2, quiet / 4))
            now = time.monotonic()
            if now - _last_event >= quiet and now - dumped >= quiet:
                dumped = now
                stacks = [s for s in thread_stacks() if s["thread"] != "safestop-watchdog"]
                event("stacks", quiet=round(now - _last_event, 3), threads=stacks)

    threading.Thread(target=watch, name="safestop-watchdog", daemon=True).start()


def new_session(url: str) -> Any:
    """A new Spark Connect session on ``url`` (``create()``: it becomes the default one); a
    ``;token=`` in the URL is sent on every client line."""
    from pyspark_safestop.client import session_builder

    return session_builder(url).create()


def query(session: Any, n: int = 10) -> None:
    """A small query whose result is a reattachable stream: its release goes to the pool."""
    rows = session.range(n).collect()
    assert len(rows) == n, rows


@dataclass(frozen=True)
class StopOutcome:
    """How a :func:`stop_with_cap` went."""

    returned: bool
    seconds: float


def stop_with_cap(session: Any, cap: float) -> StopOutcome:
    """``session.stop()`` in a daemon thread, given up after ``cap`` seconds.

    The way many suites stop a session so that a hung stop cannot take the suite down; what
    is left behind when it is given up is the point of several scenarios.
    """
    started = time.monotonic()
    stopper = threading.Thread(target=session.stop, name="stopper", daemon=True)
    stopper.start()
    stopper.join(cap)
    return StopOutcome(not stopper.is_alive(), round(time.monotonic() - started, 6))
