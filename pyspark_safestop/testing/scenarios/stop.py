"""Stopping sessions and exiting while a release RPC hangs: the seed's deadlock and its
relatives."""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

from pyspark_safestop.testing.cases import (
    POOL_JOINS,
    POOL_SHUTDOWN_JOINS,
    RELEASE_SESSION_RPC,
    RT_ENV,
    STOP,
    STOP_RT,
    Case,
)
from pyspark_safestop.testing.checks import (
    EXIT_BOUND,
    RELEASE_TIMEOUT,
    STOP_BOUND,
    all_within,
    field_is,
    interrupted_promptly,
    metric_event,
    metric_exit,
    metric_max,
    metric_stop,
    next_session_works,
    stop_within,
)
from pyspark_safestop.testing.child import event, new_session, query, stop_with_cap
from pyspark_safestop.testing.scenarios._registry import scenario
from pyspark_safestop.testing.scenarios._steps import CAP, next_session, timed_stop

#: Where upstream's stop waits on the shared release pool (4.0+, then 3.5).
_POOL = (POOL_SHUTDOWN_JOINS, POOL_JOINS)


@scenario(
    seed_chain=Case(
        "the seed's fixture chain, ReleaseExecute hung",
        STOP + " (in a daemon thread, 5 s join), next session works",
        metric_stop("first"),
        (stop_within("first", STOP_BOUND), next_session_works),
        hangs_in=_POOL,
    )
)
def seed_chain(url: str) -> None:
    """The seed's fixture: stop in a daemon thread given up after 5 s, then a new session."""
    first = new_session(url)
    query(first)
    outcome = stop_with_cap(first, 5.0)
    event("stopped", label="first", returned=outcome.returned, seconds=outcome.seconds)
    next_session(url)


@scenario(
    stop_release_execute_hung=Case(
        "stop(), ReleaseExecute hung",
        STOP,
        metric_stop("first"),
        (stop_within("first", STOP_BOUND), next_session_works),
        hangs_in=_POOL,
    ),
    stop_release_session_hung=Case(
        "stop(), ReleaseSession hung",
        STOP_RT,
        metric_stop("first"),
        (stop_within("first", RELEASE_TIMEOUT + STOP_BOUND), next_session_works),
        hang=("ReleaseSession",),
        env=RT_ENV,
        upstream_passes_on=frozenset({"3.5"}),  # no ReleaseSession RPC there
        hangs_in=(RELEASE_SESSION_RPC,),
    ),
)
def plain_stop(url: str) -> None:
    """stop() with an RPC hung (ReleaseExecute or ReleaseSession, by fault), then a new
    session."""
    session = new_session(url)
    query(session)
    timed_stop(session, "first")
    next_session(url)


@scenario(
    double_stop=Case(
        "stop() twice, ReleaseExecute hung",
        STOP + " each",
        metric_max(metric_stop("first"), metric_stop("second")),
        (stop_within("first", STOP_BOUND), stop_within("second", STOP_BOUND), next_session_works),
        hangs_in=_POOL,
    )
)
def double_stop(url: str) -> None:
    """stop() twice, with ReleaseExecute hung."""
    session = new_session(url)
    query(session)
    timed_stop(session, "first")
    timed_stop(session, "second")
    next_session(url)


@scenario(
    concurrent_stops=Case(
        "16 threads stop 16 sessions, ReleaseExecute hung",
        f"all ≤ {4 * STOP_BOUND:g} s",
        metric_event("stopped"),
        (
            all_within("stopped", "seconds", 4 * STOP_BOUND),
            field_is("stopped", "returned", 16),
            next_session_works,
        ),
        hangs_in=_POOL,
    )
)
def concurrent_stops(url: str) -> None:
    """16 threads stopping 16 sessions at once."""
    sessions = [new_session(url) for _ in range(16)]
    for session in sessions:
        query(session)
    barrier = threading.Barrier(len(sessions))
    durations: list[float] = []

    def stop(session: Any) -> None:
        barrier.wait()
        started = time.monotonic()
        session.stop()
        durations.append(time.monotonic() - started)

    threads = [threading.Thread(target=stop, args=(s,), daemon=True) for s in sessions]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.0, CAP - (time.monotonic() - started)))
    event(
        "stopped",
        label="all",
        returned=sum(not t.is_alive() for t in threads),
        seconds=round(time.monotonic() - started, 3),
        slowest=round(max(durations, default=0.0), 3),
    )
    next_session(url)


@scenario(
    interrupt_during_stop=Case(
        "KeyboardInterrupt during stop() (ReleaseSession and ReleaseExecute hung)",
        "interrupt surfaces ≤ 1 s after the signal, next session works, exit ≤ 4 s",
        metric_exit,
        (interrupted_promptly, next_session_works),
        hang=("ReleaseSession", "ReleaseExecute"),
        env={"PYSPARK_SAFESTOP_RELEASE_TIMEOUT": "3"},
        hangs_in=(*_POOL, RELEASE_SESSION_RPC),
    )
)
def interrupt_during_stop(url: str) -> None:
    """KeyboardInterrupt (a real SIGINT) 0.5 s into stop(), with the releases hung; then a
    new session, and the interpreter must still exit."""
    # A shell starts background commands with SIGINT ignored, and Python then never raises
    # KeyboardInterrupt: install the handler a terminal's Ctrl-C would find.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    session = new_session(url)
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
    next_session(url)


@scenario(
    loop_100_hung=Case(
        "100 sessions created and stopped, ReleaseExecute hung throughout",
        f"each stop ≤ {STOP_BOUND:g} s, all 100 ≤ 100 s",
        metric_event("loop_done"),
        (
            all_within("loop_done", "slowest", STOP_BOUND),
            all_within("loop_done", "seconds", 100.0),
            next_session_works,
        ),
        hangs_in=_POOL,
        timeout=180.0,
        regression=False,
    )
)
def loop_100_hung(url: str) -> None:
    """100 sessions created, queried and stopped in a loop, ReleaseExecute hung throughout."""
    started = time.monotonic()
    slowest = 0.0
    for i in range(100):
        session = new_session(url)
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
    next_session(url)


@scenario(
    exit_unstopped=Case(
        "exit, unstopped session, ReleaseExecute hung",
        f"exit ≤ {EXIT_BOUND:g} s",
        metric_exit,
        (),
        # 3.5's pool threads are daemons: its exit does not wait for them.
        upstream_passes_on=frozenset({"3.5"}),
    )
)
def exit_unstopped(url: str) -> None:
    """A session left unstopped with an RPC hung, and the interpreter exits."""
    session = new_session(url)
    query(session)
    event("work_done")
