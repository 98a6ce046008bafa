"""One regression scenario, run in its own interpreter: ``python run_scenario.py NAME URL``.

The shim is activated the way a user's conftest does it, by importing the package at the
top; ``PYSPARK_SAFESTOP=0`` in the environment turns that import into a no-op, which gives
upstream's behaviour for the same script. Progress is printed as one JSON object per line;
the test harness reads the lines as they come, so a run that hangs still shows how far it
got. A ``checkpoint`` waits for the harness to act (e.g. kill the server) and say go.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pyspark_safestop  # activation, as at the top of a conftest; PYSPARK_SAFESTOP=0 disables

# isort: split
from pyspark.sql.connect.session import SparkSession

URL = sys.argv[2] if len(sys.argv) > 2 else ""
T0 = time.monotonic()


def event(kind: str, **data: Any) -> None:
    """Print one progress event (flushed: the harness reads them as they come)."""
    print(
        json.dumps(
            {"event": kind, "t": round(time.monotonic() - T0, 3), "pid": os.getpid(), **data}
        ),
        flush=True,
    )


def checkpoint(name: str) -> None:
    event("checkpoint", name=name)
    sys.stdin.readline()


def new_session() -> SparkSession:
    return SparkSession.builder.remote(URL).create()


def query(session: SparkSession, n: int = 10) -> None:
    # collect() consumes a reattachable result stream: ReleaseExecute RPCs go to the pool.
    rows = session.range(n).collect()
    assert len(rows) == n, rows


def timed_stop(session: SparkSession, label: str) -> float:
    """``stop()``, timed; the duration is printed as a ``stopped`` event."""
    started = time.monotonic()
    session.stop()
    seconds = time.monotonic() - started
    event("stopped", label=label, seconds=round(seconds, 4))
    return seconds


def next_session_works() -> None:
    session = new_session()
    query(session, 5)
    event("next_session_ok")
    timed_stop(session, "next")


def seed_chain() -> None:
    """The seed's fixture: stop in a daemon thread with a 5 s timeout, then a new session."""
    first = new_session()
    query(first)
    started = time.monotonic()
    stopper = threading.Thread(target=first.stop, daemon=True)
    stopper.start()
    stopper.join(5)
    event(
        "stopped",
        label="first",
        returned=not stopper.is_alive(),
        seconds=round(time.monotonic() - started, 3),
    )
    next_session_works()


def plain_stop() -> None:
    """stop() with ReleaseExecute (or ReleaseSession, by fault) hung, then a new session."""
    session = new_session()
    query(session)
    timed_stop(session, "first")
    next_session_works()


def gc_orphans() -> None:
    """Sessions dropped without stop() and garbage-collected, then a new session."""
    for i in range(3):
        # create() makes the new session the default and active one, orphaning the last.
        session = new_session()
        query(session)
        del session
        started = time.monotonic()
        gc.collect()
        event("collected", round=i, seconds=round(time.monotonic() - started, 3))
    next_session_works()


def exit_unstopped() -> None:
    """Leave a session unstopped with an RPC hung and let the interpreter exit."""
    session = new_session()
    query(session)
    event("work_done")


def concurrent_stops() -> None:
    """16 threads stopping 16 sessions at once."""
    sessions = [new_session() for _ in range(16)]
    for session in sessions:
        query(session)
    barrier = threading.Barrier(len(sessions))
    durations: list[float] = []

    def stop(session: SparkSession) -> None:
        barrier.wait()
        started = time.monotonic()
        session.stop()
        durations.append(time.monotonic() - started)

    threads = [threading.Thread(target=stop, args=(s,), daemon=True) for s in sessions]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, 60 - (time.monotonic() - started)))
    event(
        "stopped",
        label="all",
        returned=sum(not t.is_alive() for t in threads),
        seconds=round(time.monotonic() - started, 3),
        slowest=round(max(durations, default=0.0), 3),
    )
    next_session_works()


def server_killed() -> None:
    """The server dies (the harness kills it) before stop()."""
    session = new_session()
    query(session)
    checkpoint("kill-server")
    timed_stop(session, "first")


def double_stop() -> None:
    """stop() twice, with ReleaseExecute hung."""
    session = new_session()
    query(session)
    timed_stop(session, "first")
    timed_stop(session, "second")
    next_session_works()


def interrupt_during_stop() -> None:
    """KeyboardInterrupt (a real SIGINT) 0.5 s into stop(), with ReleaseExecute and
    ReleaseSession hung; then a new session, and the interpreter must still exit."""
    # A shell starts background commands with SIGINT ignored, and Python then never raises
    # KeyboardInterrupt: install the handler a terminal's Ctrl-C would find.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    session = new_session()
    query(session)
    started = time.monotonic()
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    returned = False
    try:
        session.stop()
        returned = True
        event("stopped", label="first", seconds=round(time.monotonic() - started, 3))
        time.sleep(2)  # a stop quicker than the signal: the interrupt lands here instead
    except KeyboardInterrupt:
        event(
            "interrupted",
            during="after stop" if returned else "stop",
            seconds=round(time.monotonic() - started, 3),
        )
    next_session_works()


SCENARIOS: dict[str, Callable[[], None]] = {
    "seed_chain": seed_chain,
    "plain_stop": plain_stop,
    "gc_orphans": gc_orphans,
    "exit_unstopped": exit_unstopped,
    "concurrent_stops": concurrent_stops,
    "server_killed": server_killed,
    "double_stop": double_stop,
    "interrupt_during_stop": interrupt_during_stop,
}

if __name__ == "__main__":
    event("start", shim=pyspark_safestop.is_installed())
    SCENARIOS[sys.argv[1]]()
    event("done")
