"""The scenarios in which upstream's Spark Connect client hangs, as a program you can run.

    python -m pyspark_safestop.testing.scenario NAME URL [--watchdog SECONDS]

Runs scenario ``NAME`` against the Spark Connect server at ``URL`` (normally a
:class:`~pyspark_safestop.testing.faults.FaultProxy` making some RPC hang), printing its
progress as JSON lines (see :mod:`pyspark_safestop.testing.child`). The shim is activated as
a user's conftest does it, by importing the package first; ``PYSPARK_SAFESTOP=0`` in the
environment makes that a no-op, which gives upstream's behaviour for the same scenario.
:mod:`pyspark_safestop.testing.catalogue` says which fault each scenario is run with and
what it must show; :func:`pyspark_safestop.testing.catalogue.run_case` runs one.
"""

from __future__ import annotations

import argparse
import faulthandler
import gc
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

import pyspark_safestop
from pyspark_safestop.testing.child import (
    checkpoint,
    event,
    new_session,
    query,
    start_watchdog,
    stop_with_cap,
)

__all__ = ["SCENARIOS", "main"]

#: How long a stop, a forked child or a result-iterating thread may take before it is given
#: up on (and reported as such) inside a scenario.
CAP = 30.0

_url = ""


def _timed_stop(session: Any, label: str) -> float:
    """``stop()``, timed; the duration is printed as a ``stopped`` event."""
    started = time.monotonic()
    session.stop()
    seconds = time.monotonic() - started
    event("stopped", label=label, seconds=round(seconds, 4))
    return seconds


def _next_session_works() -> None:
    session = new_session(_url)
    query(session, 5)
    event("next_session_ok")
    _timed_stop(session, "next")


def seed_chain() -> None:
    """The seed's fixture: stop in a daemon thread given up after 5 s, then a new session."""
    first = new_session(_url)
    query(first)
    outcome = stop_with_cap(first, 5.0)
    event("stopped", label="first", returned=outcome.returned, seconds=outcome.seconds)
    _next_session_works()


def plain_stop() -> None:
    """stop() with an RPC hung (ReleaseExecute or ReleaseSession, by fault), then a new
    session."""
    session = new_session(_url)
    query(session)
    _timed_stop(session, "first")
    _next_session_works()


def gc_orphans() -> None:
    """Sessions dropped without stop() and garbage-collected, then a new session."""
    for i in range(3):
        # create() makes the new session the default and active one, orphaning the last.
        session = new_session(_url)
        query(session)
        del session
        started = time.monotonic()
        gc.collect()
        event("collected", round=i, seconds=round(time.monotonic() - started, 3))
    _next_session_works()


def exit_unstopped() -> None:
    """A session left unstopped with an RPC hung, and the interpreter exits."""
    session = new_session(_url)
    query(session)
    event("work_done")


def concurrent_stops() -> None:
    """16 threads stopping 16 sessions at once."""
    sessions = [new_session(_url) for _ in range(16)]
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
    _next_session_works()


def server_killed() -> None:
    """The server dies (the parent kills it) before stop()."""
    session = new_session(_url)
    query(session)
    checkpoint("kill-server")
    _timed_stop(session, "first")


def double_stop() -> None:
    """stop() twice, with ReleaseExecute hung."""
    session = new_session(_url)
    query(session)
    _timed_stop(session, "first")
    _timed_stop(session, "second")
    _next_session_works()


def interrupt_during_stop() -> None:
    """KeyboardInterrupt (a real SIGINT) 0.5 s into stop(), with the releases hung; then a
    new session, and the interpreter must still exit."""
    # A shell starts background commands with SIGINT ignored, and Python then never raises
    # KeyboardInterrupt: install the handler a terminal's Ctrl-C would find.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    session = new_session(_url)
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
    _next_session_works()


def blackhole() -> None:
    """The connection is blackholed after a query: stop(), then (healed) a new session."""
    session = new_session(_url)
    query(session)
    checkpoint("blackhole")
    _timed_stop(session, "first")
    checkpoint("heal")
    _next_session_works()


def iterate_during_stop() -> None:
    """stop() while another thread is in the middle of iterating a result."""
    session = new_session(_url)
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
    _timed_stop(session, "first")
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
    _next_session_works()


def fork_after_use() -> None:
    """os.fork() after a session was used: the child makes its own session and exits; the
    parent then stops its session and makes a new one. Neither may hang."""
    session = new_session(_url)
    query(session)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        # The child: its own session, a query, a stop, and a normal interpreter exit (the
        # exit path runs: that is part of what is measured).
        try:
            child = new_session(_url)
            query(child, 7)
            event("child_query_ok")
            _timed_stop(child, "child")
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
    _timed_stop(session, "first")
    _next_session_works()


def restart_same_port() -> None:
    """The server is restarted on the same port between two sessions: stop the old one, then
    a new session on the same address must work."""
    session = new_session(_url)
    query(session)
    checkpoint("restart-server")
    _timed_stop(session, "first")
    _next_session_works()


def loop_100_hung() -> None:
    """100 sessions created, queried and stopped in a loop, ReleaseExecute hung throughout."""
    started = time.monotonic()
    slowest = 0.0
    for i in range(100):
        session = new_session(_url)
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
    _next_session_works()


# -- hung calls and the hang watchdog ------------------------------------------------------------

#: The text the fault proxy looks for in the calls it holds (see the catalogue's ``marker``).
MARKER = "SAFESTOP_MARKER"


def _report_hang(label: str, call: Callable[[], object]) -> None:
    started = time.monotonic()
    try:
        call()
        error, message = None, ""
    except Exception as caught:
        error, message = type(caught).__name__, str(caught).splitlines()[0][:500]
    event(
        "hang_raised",
        label=label,
        error=error,
        message=message,
        seconds=round(time.monotonic() - started, 3),
    )


def _same_session_works(session: Any) -> None:
    query(session, 5)
    event("same_session_ok")
    _timed_stop(session, "first")


def hung_query() -> None:
    """A query whose ExecutePlan call is held (its SQL carries the marker), then the same
    session's next query."""
    session = new_session(_url)
    query(session)
    _report_hang("ExecutePlan", lambda: session.sql(f"SELECT '{MARKER}' AS m").collect())
    _same_session_works(session)


def hung_schema() -> None:
    """The schema of a marked plan, whose AnalyzePlan call is held, then the same session's
    next query."""
    session = new_session(_url)
    query(session)
    frame = session.sql(f"SELECT '{MARKER}' AS m")
    _report_hang("AnalyzePlan", lambda: frame.schema)
    _same_session_works(session)


def hung_query_in_thread() -> None:
    """The held query runs in a background thread; then the main thread uses the session."""
    session = new_session(_url)
    query(session)
    worker = threading.Thread(
        target=_report_hang,
        args=("ExecutePlan", lambda: session.sql(f"SELECT '{MARKER}' AS m").collect()),
        name="query-thread",
        daemon=True,
    )
    worker.start()
    worker.join(CAP)
    _same_session_works(session)


def slow_stream() -> None:
    """A query whose responses come slowly (each one held by the proxy), but keep coming."""
    session = new_session(_url)
    query(session)
    started = time.monotonic()
    # One call carries the marker (sql() would send it twice: its command, then the query).
    rows = session.range(5).selectExpr("id", f"'{MARKER}' AS m").collect()
    event("slow_query", rows=len(rows), seconds=round(time.monotonic() - started, 3))
    _same_session_works(session)


def gc_inside_submit() -> None:
    """No fault at all: garbage collection runs inside the release pool's ``submit()``, which
    holds the pool's non-reentrant lock, and finalises an orphaned session, whose ``close()``
    shuts that very pool down (4.0, 4.1: a thread deadlocked on a lock it holds)."""
    from pyspark.sql.connect.client.reattach import ExecutePlanResponseReattachableIterator

    session = new_session(_url)  # the default and active session: the next one is not
    query(session)
    orphans = [new_session(_url)]  # referenced by this list only
    query(orphans[0])
    pool = getattr(ExecutePlanResponseReattachableIterator, "_release_thread_pool_instance", None)
    lock = getattr(pool, "_shutdown_lock", None)
    event("armed", shared_pool=lock is not None)

    def inside_submit() -> bool:
        frame: FrameType | None = sys._getframe(2)
        while frame is not None:
            if frame.f_code.co_name == "submit" and frame.f_locals.get("self") is pool:
                return True
            frame = frame.f_back
        return False

    def collect_inside_submit(phase: str, info: dict[str, Any]) -> None:
        # A collection that starts inside submit(), on the thread holding the pool's lock,
        # drops the orphan's last reference, as a real collection of an orphaned cycle would.
        if phase == "start" and orphans and lock is not None and lock.locked() and inside_submit():
            orphans.clear()

    thresholds = gc.get_threshold()
    gc.callbacks.append(collect_inside_submit)
    gc.set_threshold(1)  # a collection at nearly every allocation, those inside submit() too
    try:
        for _ in range(3):
            query(session)
    finally:
        gc.set_threshold(*thresholds)
        gc.callbacks.remove(collect_inside_submit)
    event("queries_done", orphan_collected=not orphans)
    orphans.clear()
    _timed_stop(session, "first")
    _next_session_works()


def _finalised_while_execute_hangs(session: Any, held: list[Any]) -> None:
    """Drop the last reference to what ``held`` holds while ``ExecutePlan`` hangs, and time its
    finaliser (and a collection); then clear the fault: the same session must work."""
    checkpoint("hang-execute")
    started = time.monotonic()
    held.clear()  # the finaliser runs here, or in the collection below
    gc.collect()
    event("collected", seconds=round(time.monotonic() - started, 3))
    checkpoint("clear-faults")
    query(session, 5)
    event("next_session_ok")
    _timed_stop(session, "first")


def _unsupported(error: Exception) -> None:
    event("unsupported", error=type(error).__name__)
    event("next_session_ok")


def gc_checkpointed() -> None:
    """A DataFrame from ``localCheckpoint()`` garbage-collected while ``ExecutePlan`` hangs:
    its finaliser sends the server an ``ExecutePlan`` that removes the cached relation (4.0+;
    upstream gives it no deadline)."""
    session = new_session(_url)
    try:
        frame = session.range(10).localCheckpoint()
    except Exception as error:  # 3.5: no checkpoints over Spark Connect
        _unsupported(error)
        return
    assert frame.count() == 10
    held = [frame]
    del frame
    _finalised_while_execute_hangs(session, held)


def gc_model() -> None:
    """A fitted model dropped while ``ExecutePlan`` hangs: its finaliser deletes the model from
    the server's ML cache with an ``ExecutePlan`` (4.0+; upstream gives it no deadline)."""
    session = new_session(_url)
    try:
        import pyspark.ml.util
        from pyspark.ml.classification import LogisticRegression
        from pyspark.ml.feature import VectorAssembler

        if not hasattr(pyspark.ml.util, "try_remote_fit"):
            raise NotImplementedError("this client's pyspark.ml does not run over Connect")
        rows = [(float(x), float(x > 2)) for x in range(6)]
        frame = session.createDataFrame(rows, ["x", "label"])
        features = VectorAssembler(inputCols=["x"], outputCol="features").transform(frame)
        model = LogisticRegression(maxIter=3).fit(features)
    except Exception as error:  # 3.5, Databricks Connect 16.1: no ML over Spark Connect
        _unsupported(error)
        return
    held = [model]
    del model, features, frame
    _finalised_while_execute_hangs(session, held)


#: Every scenario by name.
SCENARIOS: dict[str, Callable[[], None]] = {
    f.__name__: f
    for f in (
        seed_chain,
        plain_stop,
        gc_orphans,
        exit_unstopped,
        concurrent_stops,
        server_killed,
        double_stop,
        interrupt_during_stop,
        blackhole,
        iterate_during_stop,
        fork_after_use,
        restart_same_port,
        loop_100_hung,
        hung_query,
        hung_schema,
        hung_query_in_thread,
        slow_stream,
        gc_inside_submit,
        gc_checkpointed,
        gc_model,
    )
}


def main(argv: list[str] | None = None) -> None:
    """Run one scenario (see the module's docstring for the arguments)."""
    global _url
    parser = argparse.ArgumentParser(prog="python -m pyspark_safestop.testing.scenario")
    parser.add_argument("name", choices=sorted(SCENARIOS))
    parser.add_argument("url")
    parser.add_argument(
        "--watchdog",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="print every thread's stack after this long without progress (0: never)",
    )
    args = parser.parse_args(argv)
    _url = args.url
    if args.watchdog > 0:
        start_watchdog(args.watchdog)
    event("start", shim=pyspark_safestop.is_installed())
    try:
        SCENARIOS[args.name]()
        event("done")
    finally:
        if args.watchdog > 0:
            # The exit may hang where no Python thread runs any more (its final garbage
            # collection): faulthandler's own thread still dumps the stacks, with the events.
            faulthandler.dump_traceback_later(args.watchdog, repeat=True, file=sys.stdout)


if __name__ == "__main__":
    main()
