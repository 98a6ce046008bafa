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

import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import (
    benchmark_parser,
    child_env,
    fmt_seconds,
    prepare,
    print_table,
    warm_up,
    write_json,
)
from suite_shaped import TEST_TIMEOUT, generate, pyspark_folder, run_suite

from pyspark_safestop.servers import SparkConnectServer

LATENCY_WORKER = Path(__file__).with_name("_latency_worker.py")
TARGET = 1.02


def main() -> int:
    """Run both parts on every line; print the tables; write the JSON."""
    parser = benchmark_parser(__doc__.splitlines()[0], "watchdog.json")
    parser.add_argument("--tests", type=int, default=300, help="tests in the suite")
    parser.add_argument("--per-class", type=int, default=10, help="tests per class (session)")
    parser.add_argument("--fraction", type=float, default=0.01, help="ExecutePlan calls hung")
    parser.add_argument("--hang-timeout", type=float, default=5.0, help="the watchdog's seconds")
    parser.add_argument("--queries", type=int, default=300, help="queries per latency sample")
    args = parser.parse_args()
    lines, home, info = prepare(parser, args, "watchdog benchmark")
    every = max(1, round(1 / args.fraction))
    timeout = max(120.0, 60 + args.tests * 0.9)

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

    title = (
        f"A suite of {total} tests ({args.per_class} a class, one session each), every "
        f"{every}th ExecutePlan call hung, per-test timeout {TEST_TIMEOUT:g} s"
    )
    rows: list[list[str]] = []
    for row in suites:
        healthy = next(r for r in suites if r["line"] == row["line"] and r["run"] == "healthy")
        expected = (
            fmt_seconds(float(healthy["wall"]) + int(row["hung_calls"]) * args.hang_timeout)
            if str(row["run"]).startswith("watchdog")
            else "-"
        )
        wall = f"> {timeout:.0f} s (killed)" if row["hung"] else fmt_seconds(float(row["wall"]))
        cells = [row["line"], row["run"], row["hung_calls"], f"{row['passed']}/{total}"]
        rows.append([*map(str, cells), str(row["failed"]), wall, expected])
    header = ["line", "run", "hung calls", "tests passed", "failed", "wall time", "expected"]
    print_table(title, header, rows, info)
    ratios = {line: medians["on"] / medians["off"] for line, medians in latencies.items()}
    worst = max([0.0, *ratios.values()])
    print_table(
        f"Healthy query latency (median of {args.queries}), watchdog on against off:",
        ["line", "off", "on", "ratio"],
        [
            [line, *(f"{medians[k] * 1000:.2f} ms" for k in ("off", "on")), f"{ratios[line]:.3f}"]
            for line, medians in latencies.items()
        ],
    )
    print(f"\ntarget: ratio ≤ {TARGET}; worst {worst:.3f}")
    write_json(args.json, {"machine": info, "suite": suites, "latency": latencies})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
