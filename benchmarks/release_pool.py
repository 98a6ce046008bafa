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

import sys
import tempfile
from pathlib import Path

from _common import benchmark_parser, prepare, publish

from pyspark_safestop.servers import SparkConnectServer
from pyspark_safestop.testing.pool import hold_releases


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
                run = hold_releases(
                    server.url,
                    shim=shim,
                    python=python,
                    queries=args.queries,
                    every=args.every,
                    release_timeout=args.release_timeout,
                    looks=(3 * args.release_timeout + 2,),
                    stall_after=args.stall_after,
                )
                outcome = {
                    "stalled": int(run.stalled),
                    "queries": run.queries,
                    "releases_received": run.received[-1],
                    "releases_held": run.held,
                }
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
    title = (
        f"{args.queries} queries on one session, every {args.every}th ReleaseExecute held, "
        f"counted {3 * args.release_timeout + 2:g} s after the last query (release timeout "
        f"{args.release_timeout:g} s)"
    )
    header = ["line", "run", "queries", "releases sent", "sent per query", "held at the proxy"]
    return publish(args.json, title, header=header, rows=rows, info=info, runs=results)


if __name__ == "__main__":
    raise SystemExit(main())
