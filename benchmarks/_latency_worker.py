"""Healthy query latency with the hang watchdog on and off, in one interpreter.

    python benchmarks/_latency_worker.py URL QUERIES HANG_TIMEOUT

Two sessions on the same server: one created while the watchdog is off (its RPCs go straight
to gRPC), one while it is on (they go through the watchdog, which stays on). Their queries
alternate (on, off, off, on, ...) so that a drift of the machine's speed hits both alike.
Prints one JSON object with every latency.
"""

from __future__ import annotations

import json
import sys
import time

import pyspark_safestop
from pyspark_safestop.testing.child import new_session


def main() -> None:
    """Measure and print."""
    url, queries, hang = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    # The watchdog covers the sessions created while it is on, and reads its timeout at each
    # call: the plain session is made first, and the watchdog stays on for the measurement.
    pyspark_safestop.install(hang_timeout=0)
    plain = new_session(url)
    pyspark_safestop.install(hang_timeout=hang)
    watched = new_session(url)
    for session in (watched, plain):  # warm-up
        for _ in range(20):
            session.range(10).collect()
    latencies: dict[str, list[float]] = {"on": [], "off": []}
    for i in range(queries):
        order = (
            (("on", watched), ("off", plain)) if i % 2 == 0 else (("off", plain), ("on", watched))
        )
        for name, session in order:
            started = time.perf_counter()
            session.range(10).collect()
            latencies[name].append(time.perf_counter() - started)
    watched.stop()
    plain.stop()
    print(json.dumps(latencies))


if __name__ == "__main__":
    main()
