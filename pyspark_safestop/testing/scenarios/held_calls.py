"""Calls the server never answers, or answers slowly, with the hang watchdog on: a query, a
schema, a query in a background thread, a stream that is slow but keeps coming."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from pyspark_safestop.testing.cases import ALL_LAYOUTS, Case, HangSignature
from pyspark_safestop.testing.checks import (
    HANG_TIMEOUT,
    STOP_BOUND,
    hang_declared,
    metric_event,
    same_session_works,
    slow_but_never_hung,
)
from pyspark_safestop.testing.child import event, new_session, query
from pyspark_safestop.testing.scenarios._registry import scenario
from pyspark_safestop.testing.scenarios._steps import CAP, timed_stop

#: The text the fault proxy looks for in the calls it holds (:attr:`Case.marker`).
MARKER = "SAFESTOP_MARKER"
#: A call held by the proxy: the thread that made it waits in gRPC for a response that never
#: comes (nothing bounds it without the hang watchdog).
WAITS_FOR_RESPONSE: HangSignature = ("_report_hang", "grpc._channel")

_WATCHDOG_ENV = {"PYSPARK_SAFESTOP_HANG_TIMEOUT": f"{HANG_TIMEOUT:g}"}
_DECLARED = f"RpcHangError ≤ {HANG_TIMEOUT + STOP_BOUND:g} s (hang timeout {HANG_TIMEOUT:g} s)"


def _held(title: str, method: str, where: str = "") -> Case:
    """A case whose one marked ``method`` call the proxy holds, with the watchdog on."""
    return Case(
        f"{title} (hang watchdog on)",
        f"{_DECLARED}{where}; the same session's next query works",
        metric_event("hang_raised"),
        (hang_declared(method), same_session_works),
        hang=(method,),
        marker=MARKER.encode(),
        env=_WATCHDOG_ENV,
        hangs_in=(WAITS_FOR_RESPONSE,),
        hangs_in_shim_runs=False,  # also where a healthy call waits, which the shim bounds
    )


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
    timed_stop(session, "first")


@scenario(hung_execute_plan=_held("a query's ExecutePlan held", "ExecutePlan"))
def hung_query(url: str) -> None:
    """A query whose ExecutePlan call is held (its SQL carries the marker), then the same
    session's next query."""
    session = new_session(url)
    query(session)
    _report_hang("ExecutePlan", lambda: session.sql(f"SELECT '{MARKER}' AS m").collect())
    _same_session_works(session)


@scenario(hung_analyze_plan=_held("a schema's AnalyzePlan held", "AnalyzePlan"))
def hung_schema(url: str) -> None:
    """The schema of a marked plan, whose AnalyzePlan call is held, then the same session's
    next query."""
    session = new_session(url)
    query(session)
    frame = session.sql(f"SELECT '{MARKER}' AS m")
    _report_hang("AnalyzePlan", lambda: frame.schema)
    _same_session_works(session)


@scenario(
    hung_in_thread=_held(
        "a background thread's query held",
        "ExecutePlan",
        " in that thread, while the main thread goes on",
    )
)
def hung_query_in_thread(url: str) -> None:
    """The held query runs in a background thread; then the main thread uses the session."""
    session = new_session(url)
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


@scenario(
    slow_stream=Case(
        f"every response held {HANG_TIMEOUT / 2:g} s (hang watchdog on)",
        f"completes, longer than {HANG_TIMEOUT:g} s in all, never declared hung",
        metric_event("slow_query"),
        (slow_but_never_hung, same_session_works),
        hang=(),
        marker=MARKER.encode(),
        pace=(("ExecutePlan", HANG_TIMEOUT / 2),),
        env=_WATCHDOG_ENV,
        upstream_passes_on=ALL_LAYOUTS,
    )
)
def slow_stream(url: str) -> None:
    """A query whose responses come slowly (each one held by the proxy), but keep coming."""
    session = new_session(url)
    query(session)
    started = time.monotonic()
    # One call carries the marker (sql() would send it twice: its command, then the query).
    rows = session.range(5).selectExpr("id", f"'{MARKER}' AS m").collect()
    event("slow_query", rows=len(rows), seconds=round(time.monotonic() - started, 3))
    _same_session_works(session)
