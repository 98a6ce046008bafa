"""The catalogue: every scenario in which upstream's Spark Connect client hangs or drags, with
the fault it is run with, the bounds pyspark-safestop keeps to, and the frames in which
upstream's threads park for good.

One table, :data:`CASES`, for the regression tests (``tests/shim/test_regressions.py``) and
the fault matrix (``benchmarks/fault_matrix.py``) alike; each case is written beside the
scenario function it runs (:mod:`pyspark_safestop.testing.scenarios`). :func:`run_case` runs
one case in a fresh interpreter, through the fault it needs, and :meth:`Case.problems` says
what broke its bounds. A suite of your own can run it against its server::

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
from pathlib import Path

from pyspark_safestop.testing.cases import EXIT_HANGS, Case
from pyspark_safestop.testing.checks import (
    EXIT_BOUND,
    HANG_TIMEOUT,
    RELEASE_TIMEOUT,
    RUN_TIMEOUT,
    STOP_BOUND,
    WATCHDOG,
    Check,
    metric_stop,
)
from pyspark_safestop.testing.preloaded import Preloaded
from pyspark_safestop.testing.runner import Run, run_events, scenario_command
from pyspark_safestop.testing.scenarios import CASES

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


#: Two sessions and their queries on a healthy connection: a fresh server's JVM warmed up, so
#: that the measured runs' first queries do not all pay for a cold start at once.
WARM_UP = Case(
    "warm-up", "", metric_stop("first"), (), hang=(), regression=False, scenario="plain_stop"
)


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
