"""The catalogue: every scenario in which upstream's Spark Connect client hangs or drags, with
the fault it is run with, the bounds pyspark-safestop keeps to, and the frames in which
upstream's threads park for good.

One table, :data:`CASES`, for the regression tests (``tests/test_regressions.py``) and the
fault matrix (``benchmarks/fault_matrix.py``) alike. :func:`run_case` runs one case in a
fresh interpreter, through the fault it needs, and :meth:`Case.problems` says what broke its
bounds. A suite of your own can run it against its server::

    from pyspark_safestop.testing.catalogue import CASES, run_case

    run = run_case(CASES["stop_release_execute_hung"], spark_connect_url, shim=True)
    assert not CASES["stop_release_execute_hung"].problems(run), run.describe()

With ``shim=False`` (upstream), a run whose thread parks in one of the case's
:attr:`Case.hangs_in` frames is ended as soon as the child's watchdog shows it, instead of
being waited out: the stack is the proof of the hang.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pyspark_safestop.testing.checks import (
    EXIT_BOUND,
    HANG_TIMEOUT,
    RELEASE_TIMEOUT,
    RUN_TIMEOUT,
    STOP_BOUND,
    WATCHDOG,
    Check,
    all_within,
    collected_within,
    field_is,
    hang_declared,
    interrupted_promptly,
    metric_event,
    metric_exit,
    metric_max,
    metric_stop,
    next_session_works,
    orphan_finalised_in_submit,
    same_session_works,
    slow_but_never_hung,
    stop_within,
)
from pyspark_safestop.testing.preloaded import Preloaded
from pyspark_safestop.testing.runner import HangSignature, Run, run_events, scenario_command

__all__ = [
    "CASES",
    "EXIT_BOUND",
    "HANG_TIMEOUT",
    "RELEASE_TIMEOUT",
    "RUN_TIMEOUT",
    "STOP_BOUND",
    "WARM_UP",
    "WATCHDOG",
    "Case",
    "Check",
    "run_case",
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
#: A call held by the proxy: the thread that made it waits in gRPC for a response that never
#: comes (nothing bounds it without the hang watchdog).
WAITS_FOR_RESPONSE: HangSignature = ("_report_hang", "grpc._channel")
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
#: 4.0+: a finaliser (a checkpointed DataFrame's cached relation) sends an RPC with no deadline
#: from inside garbage collection, and the collecting thread waits for it in gRPC.
FINALISER_WAITS: HangSignature = ("CachedRemoteRelation.__del__", "grpc._channel")
#: 4.0+: a model's finaliser deletes it from the server's ML cache with no deadline (4.0:
#: remove_ml_cache; 4.1+: _delete_ml_cache).
MODEL_FINALISER_WAITS: HangSignature = ("_ml_cache", "grpc._channel")
#: Looked for in every case: where an interpreter's exit never ends.
EXIT_HANGS = (EXIT_JOINS_WORKERS, FINAL_GC_CLOSES_CHANNEL)


@dataclass(frozen=True)
class Case:
    """One scenario under one fault, with what it must show and where upstream parks."""

    title: str
    #: The function of :mod:`pyspark_safestop.testing.scenario` that runs it.
    scenario: str
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


_RT = {"PYSPARK_SAFESTOP_RELEASE_TIMEOUT": f"{RELEASE_TIMEOUT:g}"}


def _finaliser_case(
    title: str, scenario: str, hangs_in: HangSignature, passes_on: frozenset[str] = frozenset()
) -> Case:
    """A finaliser's cleanup RPC while ``ExecutePlan`` hangs: the collection (and the drop of
    the last reference) within the release timeout, and the same session working after. 3.5
    has neither checkpoints nor ML over Spark Connect: the scenario says it cannot run; on the
    layouts ``passes_on`` the finaliser sends nothing."""
    return Case(
        title,
        scenario,
        f"collection ≤ {RELEASE_TIMEOUT + STOP_BOUND:g} s (release timeout "
        f"{RELEASE_TIMEOUT:g} s), the session works after",
        metric_event("collected"),
        (collected_within(RELEASE_TIMEOUT + STOP_BOUND), next_session_works),
        hang=(),
        env=_RT,
        upstream_passes_on=frozenset({"3.5"}) | passes_on,
        hangs_in=(hangs_in,),
    )


_STOP = f"stop ≤ {STOP_BOUND:g} s"
_STOP_RT = f"stop ≤ {RELEASE_TIMEOUT + STOP_BOUND:g} s (release timeout {RELEASE_TIMEOUT:g} s)"

#: Every case, by name.
CASES: dict[str, Case] = {
    "seed_chain": Case(
        "the seed's fixture chain, ReleaseExecute hung",
        "seed_chain",
        _STOP + " (in a daemon thread, 5 s join), next session works",
        metric_stop("first"),
        (stop_within("first", STOP_BOUND), next_session_works),
        hangs_in=(POOL_SHUTDOWN_JOINS, POOL_JOINS),
    ),
    "stop_release_execute_hung": Case(
        "stop(), ReleaseExecute hung",
        "plain_stop",
        _STOP,
        metric_stop("first"),
        (stop_within("first", STOP_BOUND), next_session_works),
        hangs_in=(POOL_SHUTDOWN_JOINS, POOL_JOINS),
    ),
    "stop_release_session_hung": Case(
        "stop(), ReleaseSession hung",
        "plain_stop",
        _STOP_RT,
        metric_stop("first"),
        (stop_within("first", RELEASE_TIMEOUT + STOP_BOUND), next_session_works),
        hang=("ReleaseSession",),
        env=_RT,
        upstream_passes_on=frozenset({"3.5"}),
        hangs_in=(RELEASE_SESSION_RPC,),
    ),
    "gc_orphans": Case(
        "orphaned sessions garbage-collected, ReleaseExecute hung",
        "gc_orphans",
        f"each gc.collect() ≤ {STOP_BOUND:g} s",
        metric_event("collected"),
        (all_within("collected", "seconds", STOP_BOUND, 3), next_session_works),
        hangs_in=(POOL_SHUTDOWN_JOINS, POOL_JOINS),
    ),
    "exit_unstopped": Case(
        "exit, unstopped session, ReleaseExecute hung",
        "exit_unstopped",
        f"exit ≤ {EXIT_BOUND:g} s",
        metric_exit,
        (),
        upstream_passes_on=frozenset({"3.5"}),
    ),
    "concurrent_stops": Case(
        "16 threads stop 16 sessions, ReleaseExecute hung",
        "concurrent_stops",
        f"all ≤ {4 * STOP_BOUND:g} s",
        metric_event("stopped"),
        (
            all_within("stopped", "seconds", 4 * STOP_BOUND),
            field_is("stopped", "returned", 16),
            next_session_works,
        ),
        hangs_in=(POOL_SHUTDOWN_JOINS, POOL_JOINS),
    ),
    "server_killed": Case(
        "server gone before stop()",
        "server_killed",
        _STOP_RT,
        metric_stop("first"),
        (stop_within("first", RELEASE_TIMEOUT + STOP_BOUND),),
        hang=(),
        env=_RT,
        # The pool's worker retries its ReleaseExecute against the dead server for minutes.
        hangs_in=(RELEASE_SESSION_RPC, RELEASE_SESSION_RETRIES, POOL_SHUTDOWN_JOINS, POOL_JOINS),
    ),
    "double_stop": Case(
        "stop() twice, ReleaseExecute hung",
        "double_stop",
        _STOP + " each",
        metric_max(metric_stop("first"), metric_stop("second")),
        (stop_within("first", STOP_BOUND), stop_within("second", STOP_BOUND), next_session_works),
        hangs_in=(POOL_SHUTDOWN_JOINS, POOL_JOINS),
    ),
    "interrupt_during_stop": Case(
        "KeyboardInterrupt during stop() (ReleaseSession and ReleaseExecute hung)",
        "interrupt_during_stop",
        "interrupt surfaces ≤ 1 s after the signal, next session works, exit ≤ 4 s",
        metric_exit,
        (interrupted_promptly, next_session_works),
        hang=("ReleaseSession", "ReleaseExecute"),
        env={"PYSPARK_SAFESTOP_RELEASE_TIMEOUT": "3"},
        hangs_in=(POOL_SHUTDOWN_JOINS, POOL_JOINS, RELEASE_SESSION_RPC),
    ),
    "blackhole": Case(
        "connection blackholed (no bytes either way)",
        "blackhole",
        _STOP_RT + ", next session works once healed",
        metric_stop("first"),
        (stop_within("first", RELEASE_TIMEOUT + STOP_BOUND), next_session_works),
        hang=(),
        transport="relay",
        env=_RT,
        hangs_in=(RELEASE_SESSION_RPC, RELEASE_SESSION_RETRIES),
        regression=False,
    ),
    "iterate_during_stop": Case(
        "stop() while another thread iterates a result",
        "iterate_during_stop",
        _STOP_RT + "; the iterating thread ends ≤ 5 s",
        metric_max(metric_stop("first"), metric_event("reader_ended")),
        (
            stop_within("first", RELEASE_TIMEOUT + STOP_BOUND),
            all_within("reader_ended", "seconds", 5.0),
            next_session_works,
        ),
        hang=(),
        env=_RT,
        regression=False,
    ),
    "fork_after_use": Case(
        "os.fork() after use; the child makes its own session",
        "fork_after_use",
        "child done and exited ≤ 15 s (code 0); parent stop ≤ 2 s",
        metric_event("child_ended"),
        (
            all_within("child_ended", "seconds", 15.0),
            field_is("child_ended", "code", 0),
            stop_within("first", STOP_BOUND),
            next_session_works,
        ),
        hang=(),
        env=_RT,
        regression=False,
        limitation=(
            "gRPC does not support a forked child using gRPC state inherited from its parent; "
            "the child can block at exit, with or without the shim (README: Limitations)"
        ),
    ),
    "restart_same_port": Case(
        "server restarted on the same port between sessions",
        "restart_same_port",
        _STOP_RT + ", next session works",
        metric_stop("first"),
        (stop_within("first", RELEASE_TIMEOUT + STOP_BOUND), next_session_works),
        hang=(),
        transport="restart",
        env=_RT,
        # All of this case's runs wait at one barrier for one restart: on a loaded 2-core
        # machine their first sessions alone can take a minute.
        timeout=150.0,
        regression=False,
    ),
    "loop_100_hung": Case(
        "100 sessions created and stopped, ReleaseExecute hung throughout",
        "loop_100_hung",
        f"each stop ≤ {STOP_BOUND:g} s, all 100 ≤ 100 s",
        metric_event("loop_done"),
        (
            all_within("loop_done", "slowest", STOP_BOUND),
            all_within("loop_done", "seconds", 100.0),
            next_session_works,
        ),
        hangs_in=(POOL_SHUTDOWN_JOINS, POOL_JOINS),
        timeout=180.0,
        regression=False,
    ),
}


_WATCHDOG_ENV = {"PYSPARK_SAFESTOP_HANG_TIMEOUT": f"{HANG_TIMEOUT:g}"}
_ALL_LINES = frozenset({"3.5", "4.0", "4.1", "4.2+"})
_MARKER = b"SAFESTOP_MARKER"
_DECLARED = f"RpcHangError ≤ {HANG_TIMEOUT + STOP_BOUND:g} s (hang timeout {HANG_TIMEOUT:g} s)"


def _held(title: str, scenario: str, method: str, where: str) -> Case:
    """A case whose one marked ``method`` call the proxy holds, with the watchdog on."""
    return Case(
        f"{title} (hang watchdog on)",
        scenario,
        f"{_DECLARED}{where}; the same session's next query works",
        metric_event("hang_raised"),
        (hang_declared(method), same_session_works),
        hang=(method,),
        marker=_MARKER,
        env=_WATCHDOG_ENV,
        hangs_in=(WAITS_FOR_RESPONSE,),
        hangs_in_shim_runs=False,
    )


CASES.update(
    {
        "hung_execute_plan": _held("a query's ExecutePlan held", "hung_query", "ExecutePlan", ""),
        "hung_analyze_plan": _held("a schema's AnalyzePlan held", "hung_schema", "AnalyzePlan", ""),
        "hung_in_thread": _held(
            "a background thread's query held",
            "hung_query_in_thread",
            "ExecutePlan",
            " in that thread, while the main thread goes on",
        ),
        "slow_stream": Case(
            f"every response held {HANG_TIMEOUT / 2:g} s (hang watchdog on)",
            "slow_stream",
            f"completes, longer than {HANG_TIMEOUT:g} s in all, never declared hung",
            metric_event("slow_query"),
            (slow_but_never_hung, same_session_works),
            hang=(),
            marker=_MARKER,
            pace=(("ExecutePlan", HANG_TIMEOUT / 2),),
            env=_WATCHDOG_ENV,
            upstream_passes_on=_ALL_LINES,
        ),
        "gc_inside_submit": Case(
            "no fault: garbage collection inside the release pool's submit()",
            "gc_inside_submit",
            "the queries finish, next session works",
            metric_stop("first"),
            (orphan_finalised_in_submit, next_session_works),
            hang=(),
            # 3.5's pool takes no lock in its submit; 4.2+ gives each iterator its own pool.
            upstream_passes_on=frozenset({"3.5", "4.2+"}),
            hangs_in=(SUBMIT_FINALISES_SESSION,),
        ),
        "gc_checkpointed": _finaliser_case(
            "garbage collection of a checkpointed DataFrame, ExecutePlan hung",
            "gc_checkpointed",
            FINALISER_WAITS,
        ),
        "gc_model": _finaliser_case(
            "a fitted model dropped, ExecutePlan hung",
            "gc_model",
            MODEL_FINALISER_WAITS,
            # 4.0 deletes a model only if this thread cached it, which a fit does not: the
            # model is deleted with the session instead.
            passes_on=frozenset({"4.0"}),
        ),
    }
)


#: Two sessions and their queries on a healthy connection: a fresh server's JVM warmed up, so
#: that the measured runs' first queries do not all pay for a cold start at once.
WARM_UP = Case("warm-up", "plain_stop", "", metric_stop("first"), (), hang=(), regression=False)


def run_case(
    case: Case,
    upstream: str,
    *,
    shim: bool,
    python: str | None = None,
    actions: Mapping[str, Callable[[], None]] | None = None,
    timeout: float | None = None,
    label: str | None = None,
    stderr_path: Path | None = None,
    preloaded: Preloaded | None = None,
) -> Run:
    """Run ``case`` once in a fresh interpreter (``python``, default this one; or a child of
    ``preloaded``, whose interpreter it then is), with the shim on or off, against the server
    at ``upstream`` (its ``sc://`` URL).

    The fault proxy or the TCP relay is put in front of the server as the case says; for a
    "restart" case the caller restarts the server through ``actions["restart-server"]``.
    """
    interpreter = preloaded.python if preloaded is not None else python or sys.executable
    mode = "shim" if shim else "upstream"
    name = label or f"{case.scenario} [{mode}; {', '.join(case.hang) or case.transport}]"

    def go(url: str, steps: Mapping[str, Callable[[], None]]) -> Run:
        return run_events(
            scenario_command(interpreter, case.scenario, url, watchdog=WATCHDOG),
            shim=shim,
            timeout=timeout or case.timeout,
            env=case.env,
            on_checkpoint={**steps, **(actions or {})},
            hangs_in=(*(case.hangs_in if case.hangs_in_shim_runs or not shim else ()), *EXIT_HANGS),
            label=name,
            stderr_path=stderr_path,
            preloaded=preloaded,
        )

    if case.transport == "relay":
        from pyspark_safestop.testing.relay import TcpRelay

        with TcpRelay(upstream) as relay:
            return go(relay.url, {"blackhole": relay.blackhole, "heal": relay.heal})
    if case.transport == "restart":
        return go(upstream, {})
    from pyspark_safestop.testing.faults import FaultProxy  # needs grpcio

    with FaultProxy(upstream) as proxy:
        for method in case.hang:
            proxy.hang(method, marker=case.marker)
        for method, seconds in case.pace:
            proxy.pace(method, seconds, marker=case.marker)
        steps = {
            "kill-server": proxy.kill,
            "hang-execute": lambda: proxy.hang("ExecutePlan"),
            "clear-faults": proxy.clear,
        }
        return go(proxy.url, steps)
