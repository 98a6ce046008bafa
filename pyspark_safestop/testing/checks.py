"""What a run of a catalogue case must show: the one table of bounds, the checks that read a
run against them, and the figures a cell of the fault matrix shows.

Shared by the regression tests, the fault matrix and the examples through
:mod:`pyspark_safestop.testing.catalogue`, which builds its cases from these.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pyspark_safestop.testing.runner import Run

#: The shim's release timeout in these runs (seconds); the bounds are built on it.
RELEASE_TIMEOUT = 1.0
#: A stop that took longer than this did not "return promptly". Generous: the benchmarks
#: measure the real figures; this only separates prompt from upstream's waits and hangs.
STOP_BOUND = 2.0
#: Seconds from a scenario's last event to its interpreter's exit.
EXIT_BOUND = 4.0
#: The hard backstop: a run still going this long after its first event is called hung. A
#: longer one can only make a slow machine pass; it never lets an upstream run pass. Only runs
#: that are slow without parking for good reach it (4.2+ upstream: 10 s per stop, in turn).
RUN_TIMEOUT = 60.0
#: Seconds without progress after which the child prints every thread's stack.
WATCHDOG = 3.0
#: The hang watchdog's timeout in the runs of its cases (seconds).
HANG_TIMEOUT = 3.0

#: A check reads a run and returns what is wrong with it (nothing: it passed).
Check = Callable[[Run], list[str]]


# -- checks -------------------------------------------------------------------------------------


def stopped(run: Run, label: str) -> float | None:
    """Seconds the stop labelled ``label`` took, ``None`` when it never returned."""
    event = run.find("stopped", label=label)
    if event is None or event.get("returned") is False:
        return None
    return float(event["seconds"])


def stop_within(label: str, bound: float) -> Check:
    """The stop labelled ``label`` returned within ``bound`` seconds."""

    def check(run: Run) -> list[str]:
        event = run.find("stopped", label=label)
        if event is None:
            return [f"stop ({label}) never returned"]
        if event.get("returned") is False:
            return [f"stop ({label}) still running after {event['seconds']} s"]
        if event["seconds"] > bound:
            return [f"stop ({label}) took {event['seconds']} s > {bound} s"]
        return []

    return check


def next_session_works(run: Run) -> list[str]:
    """The scenario's last new session ran its first query."""
    return [] if run.find("next_session_ok") else ["the next session's first query never ran"]


def all_within(name: str, key: str, bound: float, count: int = 1) -> Check:
    """At least ``count`` events ``name``, none hung, their ``key`` all within ``bound``."""

    def check(run: Run) -> list[str]:
        found = run.all(name)
        if len(found) < count:
            return [f"only {len(found)} of {count} '{name}' events"]
        slow = [e for e in found if e.get(key, 0) > bound or e.get("hung")]
        return [f"{name}: {key} {e.get(key)} s > {bound} s" for e in slow]

    return check


def collected_within(bound: float) -> Check:
    """The collection returned within ``bound`` seconds, where the line has what it collects."""
    within = all_within("collected", "seconds", bound)
    return lambda run: [] if run.find("unsupported") else within(run)


def field_is(name: str, key: str, value: Any) -> Check:
    """Event ``name`` has ``key == value``."""

    def check(run: Run) -> list[str]:
        event = run.find(name)
        if event is None:
            return [f"no '{name}' event"]
        return [] if event.get(key) == value else [f"{name}: {key} = {event.get(key)!r}"]

    return check


def interrupted_promptly(run: Run) -> list[str]:
    """The SIGINT (sent 0.5 s into stop()) surfaced as a KeyboardInterrupt within 1 s (in
    stop(), or just after it where stop() returned sooner)."""
    event = run.find("interrupted")
    if event is None:
        return ["the KeyboardInterrupt never surfaced"]
    if event["seconds"] > 1.5:
        return [f"the KeyboardInterrupt surfaced {event['seconds'] - 0.5:.1f} s after the signal"]
    return []


def hang_declared(method: str) -> Check:
    """The held call raised RpcHangError naming ``method`` once the hang timeout had passed."""

    def check(run: Run) -> list[str]:
        event = run.find("hang_raised")
        if event is None:
            return ["the held call never returned"]
        if event["error"] != "RpcHangError":
            return [f"the held call ended with {event['error'] or 'a result'}, not RpcHangError"]
        if f"RPC {method} hung" not in event["message"]:
            return [f"the error does not name {method}: {event['message']}"]
        if not HANG_TIMEOUT <= event["seconds"] <= HANG_TIMEOUT + STOP_BOUND:
            return [f"declared after {event['seconds']} s, not about {HANG_TIMEOUT:g} s"]
        return []

    return check


def same_session_works(run: Run) -> list[str]:
    """The session whose call was declared hung ran its next query."""
    return [] if run.find("same_session_ok") else ["the same session's next query never ran"]


def slow_but_never_hung(run: Run) -> list[str]:
    """The slow stream outlasted the hang timeout, whole, and was never declared hung."""
    event = run.find("slow_query")
    if event is None:
        return ["the slow query never finished"]
    if event["seconds"] <= HANG_TIMEOUT:
        return [f"the stream took {event['seconds']} s: not longer than the hang timeout"]
    return []


def orphan_finalised_in_submit(run: Run) -> list[str]:
    """Where the line has a shared release pool, the orphan was finalised inside submit()."""
    armed = run.find("armed")
    if armed is not None and not armed["shared_pool"]:
        return []  # nothing to arm on this line: no pool shared by the sessions
    return field_is("queries_done", "orphan_collected", True)(run)


# -- what a cell of the matrix shows ------------------------------------------------------------


def metric_stop(label: str) -> Callable[[Run], float | None]:
    """A cell of the matrix: the seconds of the stop labelled ``label``."""
    return lambda run: stopped(run, label)


def metric_event(name: str, key: str = "seconds") -> Callable[[Run], float | None]:
    """A cell of the matrix: the largest ``key`` of the events ``name`` that did not hang."""

    def metric(run: Run) -> float | None:
        values = [float(e[key]) for e in run.all(name) if key in e and not e.get("hung")]
        return max(values) if values else None

    return metric


def metric_exit(run: Run) -> float | None:
    """A cell of the matrix: seconds from the last event to the interpreter's exit."""
    return run.exit_delay


def metric_max(*metrics: Callable[[Run], float | None]) -> Callable[[Run], float | None]:
    """A cell of the matrix: the largest of ``metrics``."""

    def metric(run: Run) -> float | None:
        values = [v for v in (m(run) for m in metrics) if v is not None]
        return max(values, default=None)

    return metric
