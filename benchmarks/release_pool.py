"""Hung ReleaseExecute calls against the release pool: releases sent, held, stalled.

    python benchmarks/release_pool.py [--line 4.1=/path/to/python ...] [--queries 200]
        [--every 10] [--release-timeout 1] [--stall-after 120]

One session runs ``--queries`` queries through the fault proxy, which holds every ``--every``-th
ReleaseExecute call (each query sends one when it ends). With the session still open, some
release timeouts after the last query, the proxy counts the releases it received and the ones
it holds at that moment. Upstream (``PYSPARK_SAFESTOP=0``) sends a release with no deadline:
a held one keeps its release-pool worker until the session stops, and once every worker is
held the releases queued behind them are never sent. The package gives each the release
timeout: the client gives up on a held release (the proxy still holds its side) and the worker
goes on; a release that met its deadline may be sent again by the client's retry policy, so
more than one per query can arrive. A run whose queries have not all run after
``--stall-after`` seconds is counted as it stands and marked stalled.
"""

from __future__ import annotations

import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import benchmark_parser, child_env, prepare, print_table, write_json

from pyspark_safestop.servers import SparkConnectServer
from pyspark_safestop.testing.faults import FaultProxy

CHILD = """
import sys
import pyspark_safestop  # a no-op with PYSPARK_SAFESTOP=0
from pyspark_safestop import connect_session

with connect_session(sys.argv[1]) as spark:
    for i in range(int(sys.argv[2])):
        spark.range(i % 7).collect()
    print("queried", flush=True)
    sys.stdin.readline()  # the session stays open until the parent has looked
"""


def measure(
    python: str,
    url: str,
    *,
    shim: bool,
    queries: int,
    every: int,
    release_timeout: float,
    spark_home: Path,
    stall_after: float,
) -> dict[str, int]:
    """One run: queries sent, releases received by the proxy, and releases held at the end;
    ``stalled`` when the queries had not all run after ``stall_after`` seconds."""
    env = child_env(shim=shim)
    # pyspark-client 4.2+ exits under `python -c` without a Spark home.
    env.setdefault("SPARK_HOME", str(spark_home))
    env["PYSPARK_SAFESTOP_RELEASE_TIMEOUT"] = f"{release_timeout:g}"
    with FaultProxy(url) as proxy:
        proxy.hang("ReleaseExecute", every=every)
        child = subprocess.Popen(
            [python, "-c", CHILD, proxy.url, str(queries)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert child.stdin is not None
        assert child.stdout is not None
        try:
            ready, _, _ = select.select([child.stdout], [], [], stall_after)
            stalled = not ready
            if ready and child.stdout.readline().strip() != "queried":
                raise SystemExit(f"{python}: the client failed:\n{child.communicate()[1][-3000:]}")
            if not stalled:
                time.sleep(3 * release_timeout + 2)
            result = {
                "stalled": int(stalled),
                "queries": proxy.calls("ExecutePlan"),
                "releases_received": proxy.calls("ReleaseExecute"),
                "releases_held": proxy.hung_now("ReleaseExecute"),
            }
            proxy.clear()  # the session stops promptly either way
            child.stdin.write("done\n")
            child.stdin.flush()
            child.wait(120)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
    return result


def main() -> int:
    """Measure upstream and the package on every line; print the table; write the JSON."""
    parser = benchmark_parser(__doc__.splitlines()[0], "release_pool.json")
    parser.add_argument("--queries", type=int, default=200, help="queries on the session")
    parser.add_argument("--every", type=int, default=10, help="every k-th release is held")
    parser.add_argument("--release-timeout", type=float, default=1.0, help="seconds")
    parser.add_argument(
        "--stall-after", type=float, default=120.0, help="seconds the queries may take"
    )
    args = parser.parse_args()
    lines, home, info = prepare(parser, args, "release-pool benchmark")
    work = Path(tempfile.mkdtemp(prefix="safestop-release-pool-"))
    results = []
    server = SparkConnectServer(home, log_path=work / "server.log")
    server.start()
    try:
        for line, python in lines.items():
            for name, shim in (("upstream", False), ("pyspark-safestop", True)):
                outcome = measure(
                    python,
                    server.url,
                    shim=shim,
                    queries=args.queries,
                    every=args.every,
                    release_timeout=args.release_timeout,
                    spark_home=home,
                    stall_after=args.stall_after,
                )
                results.append({"line": line, "run": name, **outcome})
                print(f"  {line} {name}: {outcome}", file=sys.stderr, flush=True)
    finally:
        server.stop()
    rows = [
        [
            row["line"],
            row["run"],
            f"{row['queries']}" + (" (stalled)" if row["stalled"] else ""),
            str(row["releases_received"]),
            f"{row['releases_received'] / max(1, row['queries']):.2f}",
            str(row["releases_held"]),
        ]
        for row in results
    ]
    print_table(
        f"{args.queries} queries on one session, every {args.every}th ReleaseExecute held, "
        f"counted {3 * args.release_timeout + 2:g} s after the last query (release timeout "
        f"{args.release_timeout:g} s)",
        ["line", "run", "queries", "releases sent", "sent per query", "held at the proxy"],
        rows,
        info,
    )
    write_json(args.json, {"machine": info, "runs": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
