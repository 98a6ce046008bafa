"""The hang watchdog: a suite with hung queries, and what it costs a healthy query.

    python benchmarks/watchdog.py [--line 4.1=/path/to/python ...] [--tests 300]
        [--fraction 0.01] [--hang-timeout 5] [--queries 300]

1. The seed-shaped suite of ``suite_shaped.py`` (class-scoped sessions, one query a test),
   through the fault proxy, which hangs a fraction of the ``ExecutePlan`` calls (every k-th
   one). Runs: healthy (no fault), upstream (``PYSPARK_SAFESTOP=0``: a hung test is failed
   only by the suite's own per-test timeout, as pytest-timeout's signal method would), and
   the shim with the watchdog on. Printed: tests completed, failures, wall time, and the wall
   time expected of the watchdog run, healthy + hung calls x hang timeout.
2. Healthy query latency, watchdog on against off, in one interpreter per line
   (``_latency_worker.py``): medians and their ratio. Target: at most 1.02.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import (
    RESULTS,
    add_line_arguments,
    child_env,
    describe_machine,
    fmt_seconds,
    machine,
    resolve_lines,
    warm_up,
    write_json,
)
from suite_shaped import TEST_TIMEOUT, generate, pyspark_folder, run_suite

from pyspark_safestop._server import SparkConnectServer, find_spark_home

LATENCY_WORKER = Path(__file__).with_name("_latency_worker.py")
TARGET = 1.02


def main() -> int:
    """Run both parts on every line; print the tables; write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_line_arguments(parser)
    parser.add_argument("--tests", type=int, default=300, help="tests in the suite")
    parser.add_argument("--per-class", type=int, default=10, help="tests per class (session)")
    parser.add_argument("--fraction", type=float, default=0.01, help="ExecutePlan calls hung")
    parser.add_argument("--hang-timeout", type=float, default=5.0, help="the watchdog's seconds")
    parser.add_argument("--queries", type=int, default=300, help="queries per latency sample")
    parser.add_argument("--json", type=Path, default=RESULTS / "watchdog.json")
    args = parser.parse_args()
    lines = resolve_lines(parser, args.line)
    home = find_spark_home()
    if home is None:
        parser.error("no Spark jars: set PYSPARK_SAFESTOP_SPARK_HOME to a pyspark 4.3 folder")
    every = max(1, round(1 / args.fraction))
    timeout = max(120.0, 60 + args.tests * 0.9)
    info = machine()
    print(f"watchdog benchmark on {describe_machine(info)}", file=sys.stderr, flush=True)

    work = Path(tempfile.mkdtemp(prefix="safestop-watchdog-"))
    suite = work / "suite"
    total = generate(suite, args.tests, args.per_class)
    watchdog_env = {"PYSPARK_SAFESTOP_HANG_TIMEOUT": f"{args.hang_timeout:g}"}
    runs = (
        ("healthy", True, 0, {}),
        ("upstream", False, every, {}),
        (f"watchdog {args.hang_timeout:g} s", True, every, watchdog_env),
    )
    suites: list[dict[str, object]] = []
    latencies: dict[str, dict[str, float]] = {}
    server = SparkConnectServer(home, log_path=work / "server.log")
    server.start()
    try:
        for line, python in lines.items():
            warm_up(python, server.url)
            for name, shim, k, env in runs:
                run = run_suite(
                    python,
                    suite,
                    server.url,
                    shim=shim,
                    every=k,
                    stop="plain",
                    timeout=timeout,
                    total=total,
                    work=work,
                    tag=f"{line}-{name.split()[0]}",
                    spark_home=pyspark_folder(python),
                    method="ExecutePlan",
                    env=env,
                )
                suites.append({"line": line, "run": name, **vars(run)})
                print(f"  {line} {name}: {run.wall:.0f} s", file=sys.stderr, flush=True)
            sample = subprocess.run(
                [
                    python,
                    str(LATENCY_WORKER),
                    server.url,
                    str(args.queries),
                    f"{args.hang_timeout}",
                ],
                env=child_env(shim=True),
                capture_output=True,
                text=True,
                check=True,
            )
            measured = json.loads(sample.stdout.strip().splitlines()[-1])
            latencies[line] = {name: statistics.median(values) for name, values in measured.items()}
    finally:
        server.stop()

    print(
        f"\nA suite of {total} tests ({args.per_class} a class, one session each), every "
        f"{every}th ExecutePlan call hung, per-test timeout {TEST_TIMEOUT:g} s; "
        f"{describe_machine(info)}\n"
    )
    print("| line | run | hung calls | tests passed | failed | wall time | expected |")
    print("|---|---|---|---|---|---|---|")
    for row in suites:
        healthy = next(r for r in suites if r["line"] == row["line"] and r["run"] == "healthy")
        expected = (
            fmt_seconds(float(healthy["wall"]) + int(row["hung_calls"]) * args.hang_timeout)
            if str(row["run"]).startswith("watchdog")
            else "-"
        )
        wall = f"> {timeout:.0f} s (killed)" if row["hung"] else fmt_seconds(float(row["wall"]))
        print(
            f"| {row['line']} | {row['run']} | {row['hung_calls']} | {row['passed']}/{total} | "
            f"{row['failed']} | {wall} | {expected} |"
        )
    print(f"\nHealthy query latency (median of {args.queries}), watchdog on against off:\n")
    print("| line | off | on | ratio |")
    print("|---|---|---|---|")
    worst = 0.0
    for line, medians in latencies.items():
        ratio = medians["on"] / medians["off"]
        worst = max(worst, ratio)
        print(
            f"| {line} | {medians['off'] * 1000:.2f} ms | {medians['on'] * 1000:.2f} ms | "
            f"{ratio:.3f} |"
        )
    print(f"\ntarget: ratio ≤ {TARGET}; worst {worst:.3f}")
    write_json(args.json, {"machine": info, "suite": suites, "latency": latencies})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
