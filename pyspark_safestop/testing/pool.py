"""Hung ``ReleaseExecute`` calls against the release pool: what a session sends while it is open.

:func:`hold_releases` runs queries on one session in a child interpreter, through the fault
proxy, which holds every ``every``-th ``ReleaseExecute`` (each query sends one when it ends).
With the session still open, the proxy counts the releases it has received at each of
``looks`` (seconds after the last query) and those it holds at the last one. Upstream sends a
release with no deadline: a held one keeps its release-pool worker until the session stops,
and once every worker is held the releases queued behind them are never sent, so the count
stands still. The shim gives each the release timeout: the count goes on. The regression test
and ``benchmarks/release_pool.py`` both run it.
"""

from __future__ import annotations

import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pyspark_safestop.testing.faults import FaultProxy
from pyspark_safestop.testing.runner import child_env

__all__ = ["PoolRun", "hold_releases"]

_CHILD = """
import faulthandler
import signal
import sys

faulthandler.register(signal.SIGUSR1, all_threads=True)  # the parent asks when the child is late

import pyspark_safestop  # a no-op with PYSPARK_SAFESTOP=0
from pyspark_safestop import connect_session

with connect_session(sys.argv[1]) as spark:
    for i in range(int(sys.argv[2])):
        spark.range(i % 7).collect()
    print("queried", flush=True)
    sys.stdin.readline()  # the session stays open until the parent has looked
"""


@dataclass(frozen=True)
class PoolRun:
    """What the proxy saw of one session."""

    #: ``ExecutePlan`` calls received (one per query).
    queries: int
    #: ``ReleaseExecute`` calls received, at each look.
    received: tuple[int, ...]
    #: ``ReleaseExecute`` calls the proxy still held at the last look.
    held: int
    #: Whether the queries had not all run after ``stall_after`` seconds (then counted as
    #: they stood, with no look).
    stalled: bool


def hold_releases(
    url: str,
    *,
    shim: bool,
    python: str = sys.executable,
    queries: int = 10,
    every: int = 1,
    release_timeout: float = 1.0,
    looks: Sequence[float] = (3.0,),
    stall_after: float = 120.0,
    extra_env: Mapping[str, str] | None = None,
) -> PoolRun:
    """Run ``queries`` queries on one session of ``python`` (with the shim or upstream) through
    a proxy in front of ``url`` that holds every ``every``-th release; count as described above.

    Raises ``RuntimeError`` with the child's stderr when the client fails.
    """
    env = child_env(
        shim=shim,
        extra={"PYSPARK_SAFESTOP_RELEASE_TIMEOUT": f"{release_timeout:g}", **(extra_env or {})},
    )
    # A file, not `python -c`: pyspark-client 4.2+ exits under -c without a Spark home.
    with tempfile.TemporaryDirectory(prefix="safestop-pool-") as folder, FaultProxy(url) as proxy:
        script = Path(folder) / "client.py"
        script.write_text(_CHILD)
        # A file, not a pipe: the client's warnings about the held releases can outgrow a pipe
        # nobody reads until the end, and the child would block writing them.
        errors_path = Path(folder) / "stderr"
        errors = errors_path.open("w")
        proxy.hang("ReleaseExecute", every=every)
        child = subprocess.Popen(
            [python, str(script), proxy.url, str(queries)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=errors,
            text=True,
        )
        assert child.stdin is not None
        assert child.stdout is not None
        try:
            ready, _, _ = select.select([child.stdout], [], [], stall_after)
            if ready and child.stdout.readline().strip() != "queried":
                child.wait(60)
                raise RuntimeError(f"the client failed:\n{_tail(errors_path)}")
            received: list[int] = []
            started = time.monotonic()
            for look in looks if ready else ():
                time.sleep(max(0.0, started + look - time.monotonic()))
                received.append(proxy.calls("ReleaseExecute"))
            run = PoolRun(
                queries=proxy.calls("ExecutePlan"),
                received=tuple(received) or (proxy.calls("ReleaseExecute"),),
                held=proxy.hung_now("ReleaseExecute"),
                stalled=not ready,
            )
            proxy.clear()  # the session stops promptly, with or without the shim
            child.stdin.write("done\n")
            child.stdin.flush()
            try:
                child.wait(120)
            except subprocess.TimeoutExpired:
                child.send_signal(signal.SIGUSR1)
                time.sleep(2.0)
                raise RuntimeError(
                    "the client did not exit within 120 s of being told to stop; its threads:\n"
                    + _tail(errors_path)
                ) from None
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
            errors.close()
    return run


def _tail(path: Path, chars: int = 6000) -> str:
    return path.read_text(errors="replace")[-chars:]
