"""Measures stop() in one interpreter: ``python _stop_worker.py CONDITION URL ITERATIONS CAP``.

Run by ``stop_latency.py`` with a client line's interpreter, with ``PYSPARK_SAFESTOP`` set to
0 (upstream) or 1 (shim). Prints one JSON line per measured stop and a final ``done`` line. A
stop still running after CAP seconds is reported as hung and ends the measurement: up to 4.1
it holds the class lock for good, so nothing after it would mean anything.
"""

from __future__ import annotations

import os
import sys

import pyspark_safestop  # activation; PYSPARK_SAFESTOP=0 disables

# isort: split
from pyspark_safestop.testing.child import event, new_session, query, stop_with_cap


def main() -> None:
    """Create, query and stop sessions, timing each stop."""
    condition, url, iterations, cap = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    event("start", shim=pyspark_safestop.is_installed())
    for _ in range(iterations):
        session = new_session(url)
        query(session)
        if condition == "exit":
            # The session is left unstopped with an RPC hung; the caller times the exit.
            event("done")
            return
        outcome = stop_with_cap(session, cap)
        event("stop", hung=not outcome.returned, seconds=outcome.seconds)
        if not outcome.returned:
            event("done")
            # The interpreter may not be able to exit on its own: that is measured elsewhere.
            os._exit(0)
    event("done")


if __name__ == "__main__":
    main()
