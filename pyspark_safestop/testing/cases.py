"""What a scenario is held to: :class:`Case` (the fault it runs under, its bounds, the frames
in which upstream's threads park for good), and those frames.

The cases themselves sit next to the scenario functions they run
(:mod:`pyspark_safestop.testing.scenarios`); :mod:`pyspark_safestop.testing.catalogue` runs
them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from pyspark_safestop.testing.checks import (
    EXIT_BOUND,
    RELEASE_TIMEOUT,
    RUN_TIMEOUT,
    STOP_BOUND,
    Check,
)
from pyspark_safestop.testing.runner import HangSignature, Run

__all__ = [
    "ALL_LAYOUTS",
    "EXIT_HANGS",
    "EXIT_JOINS_WORKERS",
    "FINAL_GC_CLOSES_CHANNEL",
    "POOL_JOINS",
    "POOL_SHUTDOWN_JOINS",
    "RELEASE_SESSION_RETRIES",
    "RELEASE_SESSION_RPC",
    "RT_ENV",
    "STOP",
    "STOP_RT",
    "SUBMIT_FINALISES_SESSION",
    "Case",
    "HangSignature",
]

# -- where upstream parks for good --------------------------------------------------------------

#: 4.0 and 4.1: close() shuts the shared release pool down waiting, joining a worker stuck in
#: a ReleaseExecute that never ends.
POOL_SHUTDOWN_JOINS: HangSignature = ("ThreadPoolExecutor.shutdown", "Thread.join")
#: 3.5: the same with multiprocessing's ThreadPool.
POOL_JOINS: HangSignature = ("ExecutePlanResponseReattachableIterator.shutdown", "Pool.join")
#: 4.x: stop() waits, under SparkSession's class-level lock, on a ReleaseSession RPC without
#: a deadline (4.3: ten minutes).
RELEASE_SESSION_RPC: HangSignature = ("SparkConnectClient.release_session", "grpc._channel")
#: 4.0+: stop() retries ReleaseSession against a server that is gone, for minutes.
RELEASE_SESSION_RETRIES: HangSignature = ("SparkConnectClient.release_session", "Retrying")
#: 4.0, 4.1: garbage collection inside the release pool's submit(), which holds the pool's
#: lock, finalises an orphaned session whose close() shuts the same pool down.
SUBMIT_FINALISES_SESSION: HangSignature = (
    "ThreadPoolExecutor.submit",
    "SparkSession.__del__",
    "ThreadPoolExecutor.shutdown",
)
#: 4.0+: at exit, threading's hook joins the release pool's workers, one stuck in an RPC on a
#: channel nobody closed.
EXIT_JOINS_WORKERS: HangSignature = ("threading._shutdown", "_python_exit", "Thread.join")


#: 3.5: at exit, the interpreter's final garbage collection runs an unstopped session's
#: __del__, which closes its channel and waits for gRPC's threads, which no longer run.
FINAL_GC_CLOSES_CHANNEL: HangSignature = ("__del__", "grpc._channel", "_close")
#: Looked for in every case: where an interpreter's exit never ends.
EXIT_HANGS = (EXIT_JOINS_WORKERS, FINAL_GC_CLOSES_CHANNEL)


@dataclass(frozen=True)
class Case:
    """One scenario under one fault, with what it must show and where upstream parks."""

    title: str
    #: The bound in words (the fault matrix's "bound" column).
    bound: str
    #: The figure a cell shows (seconds), read from the run.
    metric: Callable[[Run], float | None]
    checks: tuple[Check, ...]
    #: Methods the fault proxy hangs for the whole run.
    hang: tuple[str, ...] = ("ReleaseExecute",)
    #: Only the calls whose first request holds these bytes are hung or paced (None: all).
    marker: bytes | None = None
    #: Methods whose every response the fault proxy holds this many seconds.
    pace: tuple[tuple[str, float], ...] = ()
    #: "proxy" (the fault proxy; its "kill-server" checkpoint kills it), "relay" (the TCP
    #: relay: "blackhole" and "heal"), or "restart" (straight to a server the caller
    #: restarts at the "restart-server" checkpoint).
    transport: Literal["proxy", "relay", "restart"] = "proxy"
    env: Mapping[str, str] = field(default_factory=dict)
    #: Client layouts on which upstream is not broken by this fault.
    upstream_passes_on: frozenset[str] = frozenset()
    #: Frames that prove upstream's hang: a thread parked in one of them never comes back.
    #: Where an exit hangs (:data:`EXIT_HANGS`) is looked for in every case.
    hangs_in: tuple[HangSignature, ...] = ()
    #: Whether a run with the shim parked in :attr:`hangs_in` is a hang too. False where those
    #: frames are also a healthy wait that the shim bounds (a call waiting for its response).
    hangs_in_shim_runs: bool = True
    #: The hard backstop for this case (seconds after the run's first event).
    timeout: float = RUN_TIMEOUT
    #: Part of the regression tests (the others need a server restart or take minutes).
    regression: bool = True
    #: Not the shim's to bound (with the reason): outside its bound is not the shim's failure.
    limitation: str = ""
    #: The function of :mod:`pyspark_safestop.testing.scenarios` that runs it: set where the
    #: function registers its cases (:func:`~pyspark_safestop.testing.scenarios.scenario`).
    scenario: str = ""

    def problems(self, run: Run) -> list[str]:
        """Everything that broke the case's bounds in ``run`` (empty: it passed)."""
        if run.hung:
            found = [run.how_it_hung()]
        else:
            found = []
            if run.returncode != 0:
                found.append(f"exit status {run.returncode}")
            if run.find("done") is None:
                found.append("never reached the end of the scenario")
            if run.exit_delay is None or run.exit_delay > EXIT_BOUND:
                found.append(f"exit took {run.exit_delay} s > {EXIT_BOUND:g} s after the work")
        for check in self.checks:
            found += check(run)
        return found


# -- what the cases share ---------------------------------------------------------------------

#: The release timeout of the cases whose stop waits on it.
RT_ENV: Mapping[str, str] = {"PYSPARK_SAFESTOP_RELEASE_TIMEOUT": f"{RELEASE_TIMEOUT:g}"}
#: A stop's bound, in words: with nothing to wait for, and waiting out the release timeout.
STOP = f"stop ≤ {STOP_BOUND:g} s"
STOP_RT = f"stop ≤ {RELEASE_TIMEOUT + STOP_BOUND:g} s (release timeout {RELEASE_TIMEOUT:g} s)"
#: Every client layout (for :attr:`Case.upstream_passes_on`).
ALL_LAYOUTS = frozenset({"3.5", "4.0", "4.1", "4.2+"})
