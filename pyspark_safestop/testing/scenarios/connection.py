"""A connection or a server that goes away: a dead server, a blackholed connection, a server
restarted on the same port; and a stop while another thread reads, a fork after use."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from typing import Any

from pyspark_safestop.testing.cases import (
    POOL_JOINS,
    POOL_SHUTDOWN_JOINS,
    RELEASE_SESSION_RETRIES,
    RELEASE_SESSION_RPC,
    RT_ENV,
    STOP_RT,
    Case,
)
from pyspark_safestop.testing.checks import (
    RELEASE_TIMEOUT,
    STOP_BOUND,
    all_within,
    field_is,
    metric_event,
    metric_max,
    metric_stop,
    next_session_works,
    stop_within,
)
from pyspark_safestop.testing.child import checkpoint, event, new_session, query
from pyspark_safestop.testing.scenarios._registry import scenario
from pyspark_safestop.testing.scenarios._steps import CAP, next_session, timed_stop

_STOP_RT_WITHIN = stop_within("first", RELEASE_TIMEOUT + STOP_BOUND)


@scenario(
    server_killed=Case(
        "server gone before stop()",
        STOP_RT,
        metric_stop("first"),
        (_STOP_RT_WITHIN,),
        hang=(),
        env=RT_ENV,
        # The pool's worker retries its ReleaseExecute against the dead server for minutes.
        hangs_in=(RELEASE_SESSION_RPC, RELEASE_SESSION_RETRIES, POOL_SHUTDOWN_JOINS, POOL_JOINS),
    )
)
def server_killed(url: str) -> None:
    """The server dies (the parent kills it) before stop()."""
    session = new_session(url)
    query(session)
    checkpoint("kill-server")
    timed_stop(session, "first")


@scenario(
    blackhole=Case(
        "connection blackholed (no bytes either way)",
        STOP_RT + ", next session works once healed",
        metric_stop("first"),
        (_STOP_RT_WITHIN, next_session_works),
        hang=(),
        transport="relay",
        env=RT_ENV,
        hangs_in=(RELEASE_SESSION_RPC, RELEASE_SESSION_RETRIES),
        regression=False,
    )
)
def blackhole(url: str) -> None:
    """The connection is blackholed after a query: stop(), then (healed) a new session."""
    session = new_session(url)
    query(session)
    checkpoint("blackhole")
    timed_stop(session, "first")
    checkpoint("heal")
    next_session(url)


@scenario(
    restart_same_port=Case(
        "server restarted on the same port between sessions",
        STOP_RT + ", next session works",
        metric_stop("first"),
        (_STOP_RT_WITHIN, next_session_works),
        hang=(),
        transport="restart",
        env=RT_ENV,
        # All of this case's runs wait at one barrier for one restart: on a loaded 2-core
        # machine their first sessions alone can take a minute.
        timeout=150.0,
        regression=False,
    )
)
def restart_same_port(url: str) -> None:
    """The server is restarted on the same port between two sessions: stop the old one, then
    a new session on the same address must work."""
    session = new_session(url)
    query(session)
    checkpoint("restart-server")
    timed_stop(session, "first")
    next_session(url)


@scenario(
    iterate_during_stop=Case(
        "stop() while another thread iterates a result",
        STOP_RT + "; the iterating thread ends ≤ 5 s",
        metric_max(metric_stop("first"), metric_event("reader_ended")),
        (_STOP_RT_WITHIN, all_within("reader_ended", "seconds", 5.0), next_session_works),
        hang=(),
        env=RT_ENV,
        regression=False,
    )
)
def iterate_during_stop(url: str) -> None:
    """stop() while another thread is in the middle of iterating a result."""
    session = new_session(url)
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
    if not reading.wait(CAP):
        event("reader_never_started")
        return
    stop_started = time.monotonic()
    timed_stop(session, "first")
    reader.join(CAP)
    if reader.is_alive():
        event("reader_ended", hung=True, seconds=CAP)
    else:
        event(
            "reader_ended",
            hung=False,
            how=ended.get("how"),
            rows=ended.get("rows"),
            seconds=round(max(0.0, ended["at"] - stop_started), 4),
        )
    next_session(url)


@scenario(
    fork_after_use=Case(
        "os.fork() after use; the child makes its own session",
        "child done and exited ≤ 15 s (code 0); parent stop ≤ 2 s",
        metric_event("child_ended"),
        (
            all_within("child_ended", "seconds", 15.0),
            field_is("child_ended", "code", 0),
            stop_within("first", STOP_BOUND),
            next_session_works,
        ),
        hang=(),
        env=RT_ENV,
        regression=False,
        limitation=(
            "gRPC does not support a forked child using gRPC state inherited from its parent; "
            "the child can block at exit, with or without the shim (README: Limitations)"
        ),
    )
)
def fork_after_use(url: str) -> None:
    """os.fork() after a session was used: the child makes its own session and exits; the
    parent then stops its session and makes a new one. Neither may hang."""
    session = new_session(url)
    query(session)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        # The child: its own session, a query, a stop, and a normal interpreter exit (the
        # exit path runs: that is part of what is measured).
        try:
            child = new_session(url)
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
    while time.monotonic() - started < CAP:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        status = None
        time.sleep(0.05)
    if status is None:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        event("child_ended", hung=True, seconds=CAP)
    else:
        event(
            "child_ended",
            hung=False,
            code=os.waitstatus_to_exitcode(status),
            seconds=round(time.monotonic() - started, 3),
        )
    timed_stop(session, "first")
    next_session(url)
