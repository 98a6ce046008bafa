"""Measures stop() in one interpreter: ``python _stop_worker.py CONDITION URL ITERATIONS CAP``.

Run by ``stop_latency.py`` with a client line's interpreter, with ``PYSPARK_SAFESTOP`` set to
0 (upstream) or 1 (shim). Prints one JSON line per measured stop and a final ``done`` line. A
stop still running after CAP seconds is reported as hung and ends the measurement: up to 4.1
it holds the class lock for good, so nothing after it would mean anything.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time

import pyspark_safestop  # activation; PYSPARK_SAFESTOP=0 disables

# isort: split
from pyspark.sql.connect.session import SparkSession


def emit(**data: object) -> None:
    print(json.dumps(data), flush=True)


def main() -> None:
    condition, url, iterations, cap = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    emit(event="start", shim=pyspark_safestop.is_installed())
    for _ in range(iterations):
        session = SparkSession.builder.remote(url).create()
        session.range(10).collect()
        if condition == "exit":
            # The session is left unstopped with an RPC hung; the caller times the exit.
            emit(event="done")
            return
        started = time.perf_counter()
        stopper = threading.Thread(target=session.stop, daemon=True)
        stopper.start()
        stopper.join(cap)
        if stopper.is_alive():
            emit(event="stop", hung=True, seconds=cap)
            emit(event="done")
            sys.stdout.flush()
            # The interpreter may not be able to exit on its own: that is measured elsewhere.
            os._exit(0)
        emit(event="stop", hung=False, seconds=time.perf_counter() - started)
    emit(event="done")


if __name__ == "__main__":
    main()
