"""Create/query/stop cycles in one interpreter, sampling its resources:
``python _growth_worker.py URL CYCLES EVERY CAP TIME_LIMIT``.

Run by ``resource_growth.py`` with a client line's interpreter, with ``PYSPARK_SAFESTOP`` 0
(upstream) or 1 (shim). Prints a ``sample`` line (live Python threads, OS threads, open file
descriptors, RSS) after the first cycle and every EVERY cycles, then ``done``. A stop still
running after CAP seconds ends the run (``hung``): up to 4.1 it holds the release pool's class
lock for good, so later cycles would only measure the hang. TIME_LIMIT seconds end it too
(``time_limit``): 4.2+ upstream takes 10 s per stop with a release hung.
"""

from __future__ import annotations

import gc
import os
import sys
import threading
import time

import psutil

import pyspark_safestop  # activation, as at the top of a conftest; PYSPARK_SAFESTOP=0 disables

# isort: split
from pyspark_safestop.testing.child import event, new_session, stop_with_cap


def sample(process: psutil.Process, cycle: int, started: float) -> None:
    """Print the process's resources after ``cycle`` cycles.

    A full collection first: sessions dropped by the loop are garbage until the collector
    runs, and what is measured is what stays reachable, not when the collector happens to run.
    """
    gc.collect()
    event(
        "sample",
        cycle=cycle,
        seconds=round(time.monotonic() - started, 2),
        threads=threading.active_count(),
        os_threads=process.num_threads(),
        fds=process.num_fds(),
        rss_mb=round(process.memory_info().rss / 2**20, 1),
    )


def main() -> None:
    """Run the cycles."""
    url, cycles, every = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    cap, time_limit = float(sys.argv[4]), float(sys.argv[5])
    process = psutil.Process()
    event("start", shim=pyspark_safestop.is_installed())
    started = time.monotonic()
    for cycle in range(1, cycles + 1):
        session = new_session(url)
        rows = session.range(10).collect()
        assert len(rows) == 10
        # Stopped with a cap so that a hung stop can be reported, not waited on.
        outcome = stop_with_cap(session, cap)
        if not outcome.returned:
            event("hung", cycle=cycle, seconds=cap)
            # The interpreter may not be able to exit on its own: exit times are measured by
            # the fault matrix, not here.
            os._exit(0)
        event("cycle", cycle=cycle, stop=round(outcome.seconds, 4))
        del session, rows
        if cycle == 1 or cycle % every == 0:
            sample(process, cycle, started)
        if time.monotonic() - started > time_limit:
            event("time_limit", cycle=cycle)
            break
    event("done")
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
