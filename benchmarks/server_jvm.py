"""The local Spark server's JVM, by default and with the options a test run can give it through
``SPARK_SUBMIT_OPTS`` (README, pytest plugin): start-up, CPU, small and large queries.

    python benchmarks/server_jvm.py [--python PYTHON] [--runs N]

Each run starts a server (``SparkConnectServer``, the fixtures' server), waits until it accepts
connections, runs 30 small queries (a group-by over 1,000 rows, as a test does) and then 3
large ones (a group-by over 30 million rows), and reads the JVM's CPU time before stopping it.
Configurations alternate run by run; medians are printed, and the ratio to the default.
``--python``: an interpreter with a PySpark client (default: one of the nox lines').
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path
from typing import Any

from _common import (
    RESULTS,
    child_env,
    describe_machine,
    discover_lines,
    machine,
    print_table,
    run_worker,
    write_json,
)

from pyspark_safestop.servers import find_spark_home

CONFIGURATIONS = {
    "default": "",
    "C1 + serial GC": "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC",
}

#: Runs in the client's interpreter; prints one JSON line.
WORKER = r"""
import json, sys, time

import psutil

from pyspark_safestop.servers import SparkConnectServer
from pyspark_safestop import connect_session

t0 = time.monotonic()
with SparkConnectServer(sys.argv[1]) as server:
    up = time.monotonic() - t0
    with connect_session(server.url) as spark:
        t = time.monotonic()
        for _ in range(30):
            spark.range(1000).selectExpr("id % 7 AS k").groupBy("k").count().collect()
        small = time.monotonic() - t
        cpu_small = sum(psutil.Process(server.pid).cpu_times()[:2])
        t = time.monotonic()
        for _ in range(3):
            spark.range(30_000_000).selectExpr("id % 1000 AS k", "id * 3 AS v").groupBy(
                "k"
            ).sum("v").collect()
        large = time.monotonic() - t
print(json.dumps({"up": up, "small": small, "large": large, "cpu_small": cpu_small}))
"""


def run(python: str, spark_home: Path, options: str) -> dict[str, Any]:
    """One server's figures, started with ``options`` in SPARK_SUBMIT_OPTS."""
    env = child_env(shim=True)
    env.pop("SPARK_SUBMIT_OPTS", None)
    if options:
        env["SPARK_SUBMIT_OPTS"] = options
    return run_worker(python, WORKER, str(spark_home), env=env, timeout=600)


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", help="a client's interpreter (default: a nox line's)")
    parser.add_argument("--runs", type=int, default=3, help="runs per configuration")
    parser.add_argument("--json", type=Path, default=RESULTS / "server_jvm.json")
    args = parser.parse_args()
    python = args.python or next(iter(discover_lines().values()), None)
    if python is None:
        parser.error("no client found: pass --python, or run nox first")
    spark_home = find_spark_home()
    if spark_home is None:
        parser.error("no Spark jars: set PYSPARK_SAFESTOP_SPARK_HOME to a pyspark 4.3 folder")
    info = machine()
    print(f"server JVM on {describe_machine(info)}", file=sys.stderr, flush=True)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in CONFIGURATIONS}
    for _ in range(args.runs):
        for name, options in CONFIGURATIONS.items():
            runs[name].append(run(python, spark_home, options))

    def median(name: str, key: str) -> float:
        return statistics.median(r[key] for r in runs[name])

    metrics = {
        "up": "accepting connections (s)",
        "cpu_small": "JVM CPU: start + 30 small queries (s)",
        "small": "30 small queries (s)",
        "large": "3 large queries (s)",
    }
    names = list(CONFIGURATIONS)
    rows = [
        [label]
        + [f"{median(name, key):.1f}" for name in names]
        + [f"{median(names[1], key) / median(names[0], key):.2f}"]
        for key, label in metrics.items()
    ]
    print_table(
        f"The local Spark server's JVM, medians of {args.runs} runs",
        ["", *names, "ratio"],
        rows,
        info,
    )
    write_json(args.json, {"machine": info, "configurations": CONFIGURATIONS, "runs": runs})


if __name__ == "__main__":
    sys.exit(main())
