"""The fault matrix's own scenarios, each run in a fresh interpreter of one client line:
``python _fault_worker.py NAME URL``.

Same protocol as the regression scenarios (``tests/scenarios/run_scenario.py``): the shim is
activated by importing the package at the top, as in a user's conftest (``PYSPARK_SAFESTOP=0``
makes that a no-op: upstream's behaviour); progress is one JSON object per line; at a
``checkpoint`` the harness acts (blackholes the connection, restarts the server) and says go.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

import pyspark_safestop  # activation, as at the top of a conftest; PYSPARK_SAFESTOP=0 disables

# isort: split

# The regression scenarios' protocol and helpers (the repository root is on PYTHONPATH).
from tests.scenarios.run_scenario import (
    checkpoint,
    event,
    new_session,
    next_session_works,
    query,
    timed_stop,
)

#: How long a forked child or a result-iterating thread may take before it is called hung.
CHILD_CAP = 30.0


def blackhole() -> None:
    """The connection is blackholed after a query: stop(), then (healed) a new session."""
    session = new_session()
    query(session)
    checkpoint("blackhole")
    timed_stop(session, "first")
    checkpoint("heal")
    next_session_works()


def iterate_during_stop() -> None:
    """stop() while another thread is in the middle of iterating a result."""
    session = new_session()
    query(session)
    reading = threading.Event()
    ended: dict[str, Any] = {}

    def iterate() -> None:
        rows = 0
        try:
            # Read slowly enough (about 10 s for the whole result) that the stop interrupts
            # it; small enough that the server, which buffers the results it has not yet been
            # told are consumed, never runs short of memory.
            for _ in session.range(5_000_000).toLocalIterator():
                rows += 1
                if rows == 1000:
                    reading.set()
                if rows % 1000 == 0:
                    time.sleep(0.002)
            ended["how"] = "finished"
        except Exception as error:
            ended["how"] = type(error).__name__
        finally:
            ended["rows"] = rows
            ended["at"] = time.monotonic()
            reading.set()

    reader = threading.Thread(target=iterate, daemon=True)
    reader.start()
    if not reading.wait(CHILD_CAP):
        event("reader_never_started")
        return
    stop_started = time.monotonic()
    timed_stop(session, "first")
    reader.join(CHILD_CAP)
    if reader.is_alive():
        event("reader_ended", hung=True, seconds=CHILD_CAP)
    else:
        event(
            "reader_ended",
            hung=False,
            how=ended.get("how"),
            rows=ended.get("rows"),
            seconds=round(max(0.0, ended["at"] - stop_started), 4),
        )
    next_session_works()


def fork_after_use() -> None:
    """os.fork() after a session was used: the child makes its own session and exits; the
    parent then stops its session and makes a new one. Neither may hang."""
    session = new_session()
    query(session)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        # The child: its own session, a query, a stop, and a normal interpreter exit (the
        # exit path runs: that is part of what is measured).
        try:
            child = new_session()
            query(child, 7)
            event("child_query_ok")
            timed_stop(child, "child")
        except BaseException as error:
            event("child_error", error=f"{type(error).__name__}: {error}"[:300])
            sys.stdout.flush()
            os._exit(3)
        event("child_exiting")
        sys.exit(0)
    started = time.monotonic()
    status = None
    while time.monotonic() - started < CHILD_CAP:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        status = None
        time.sleep(0.05)
    if status is None:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        event("child_ended", hung=True, seconds=CHILD_CAP)
    else:
        event(
            "child_ended",
            hung=False,
            code=os.waitstatus_to_exitcode(status),
            seconds=round(time.monotonic() - started, 3),
        )
    timed_stop(session, "first")
    next_session_works()


def restart_same_port() -> None:
    """The server is restarted on the same port between two sessions: stop the old one, then a
    new session on the same address must work."""
    session = new_session()
    query(session)
    checkpoint("restart-server")
    timed_stop(session, "first")
    next_session_works()


def loop_100_hung() -> None:
    """100 sessions created, queried and stopped in a loop, ReleaseExecute hung throughout."""
    started = time.monotonic()
    slowest = 0.0
    for i in range(100):
        session = new_session()
        query(session)
        took = time.monotonic()
        session.stop()
        slowest = max(slowest, time.monotonic() - took)
        if (i + 1) % 10 == 0:
            event("progress", done=i + 1, slowest=round(slowest, 4))
    event(
        "loop_done",
        sessions=100,
        seconds=round(time.monotonic() - started, 3),
        slowest=round(slowest, 4),
        threads=threading.active_count(),
    )
    next_session_works()


SCENARIOS: dict[str, Callable[[], None]] = {
    "blackhole": blackhole,
    "iterate_during_stop": iterate_during_stop,
    "fork_after_use": fork_after_use,
    "restart_same_port": restart_same_port,
    "loop_100_hung": loop_100_hung,
}

if __name__ == "__main__":
    event("start", shim=pyspark_safestop.is_installed())
    SCENARIOS[sys.argv[1]]()
    event("done")
