"""Resource growth over many create/query/stop cycles, upstream vs pyspark-safestop.

    python benchmarks/resource_growth.py [--line 4.1=/path/to/python ...] [--cycles 500]

For each client line, with the shim off (upstream) and on, with a healthy server and with every
``ReleaseExecute`` hung (through the fault proxy): ``--cycles`` cycles of creating a session,
running a query and stopping the session, in one interpreter. Live Python threads, OS threads,
open file descriptors and RSS are sampled after the first cycle and every ``--every`` cycles
(after a full garbage collection: what is measured is what stays reachable).

Target: flat. After a warm-up of ``--every`` cycles, thread and descriptor growth is the
median of the samples in the second half of the run minus the median of its first half (a
sample that catches a channel while gRPC is still closing it moves neither median; a leak
grows with the cycles), and RSS growth is the last sample minus the first one after the
warm-up; "flat" means at most 2 more threads and 2 more descriptors, and less than 10 MB more
RSS. A stop still running after 15 s ends the run (``hung at cycle N``); a run still going
after its time limit ends at the cycle it reached (4.2+ upstream, with a release hung, takes
10 s per stop). Results also go to ``benchmarks/results/resource_growth.json``;
``--report JSON`` prints the tables of a saved run again, without measuring.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from _common import (
    Run,
    benchmark_parser,
    fmt_seconds,
    prepare,
    print_table,
    run_events,
    warm_up,
    write_json,
)

from pyspark_safestop.servers import SparkConnectServer
from pyspark_safestop.testing.faults import FaultProxy

WORKER = Path(__file__).resolve().parent / "_growth_worker.py"
#: A stop running longer than this is called hung.
STOP_CAP = 15.0
#: Time limits of one run: ample for the healthy and shim runs, short for upstream with a
#: release hung, whose only story is how long each stop takes.
TIME_LIMIT = 1200.0
TIME_LIMIT_UPSTREAM_HUNG = 60.0
#: "Flat": growth after the warm-up at most this.
FLAT_THREADS = 2
FLAT_FDS = 2
FLAT_RSS_MB = 10.0

CONDITIONS = {"healthy": (), "ReleaseExecute hung": ("ReleaseExecute",)}


def run_one(
    python: str, shim: bool, hang: tuple[str, ...], server_url: str, args: argparse.Namespace
) -> Run:
    """One line, one mode, one condition: the worker's samples."""
    limit = TIME_LIMIT if shim or not hang else TIME_LIMIT_UPSTREAM_HUNG
    with FaultProxy(server_url) as proxy:
        for method in hang:
            proxy.hang(method)
        return run_events(
            [
                python,
                str(WORKER),
                proxy.url,
                str(args.cycles),
                str(args.every),
                str(STOP_CAP),
                str(limit),
            ],
            shim=shim,
            timeout=limit + 2 * STOP_CAP + 60,
        )


def summarise(run: Run, every: int) -> dict[str, Any]:
    """Samples, growth after the warm-up, stop times and a verdict for one run."""
    samples = run.all("sample")
    stops = sorted(e["stop"] for e in run.all("cycle"))
    hung = run.find("hung")
    limited = run.find("time_limit")
    cycles = max((e["cycle"] for e in run.all("cycle")), default=0)
    # Threads and descriptors: the median of the second half of the run minus the median of
    # the first half (after the warm-up). A sample that catches a channel while gRPC is still
    # closing it (its threads and descriptors go a moment later) moves neither median; a leak,
    # which grows with the cycles, moves the second. RSS has no such blips: its growth is the
    # last sample minus the one after the warm-up.
    post = [s for s in samples if s["cycle"] >= every]
    growth: dict[str, float] | None = None
    if len(post) >= 2:
        first, second = post[: len(post) // 2], post[len(post) // 2 :]
        growth = {
            key: round(
                statistics.median(s[key] for s in second)
                - statistics.median(s[key] for s in first),
                1,
            )
            for key in ("threads", "os_threads", "fds")
        }
        growth["rss_mb"] = round(post[-1]["rss_mb"] - post[0]["rss_mb"], 1)
    if hung is not None:
        verdict = f"hung at cycle {hung['cycle']}"
    elif run.hung or run.find("done") is None:
        verdict = "did not finish"
    elif growth is None:
        median = stops[len(stops) // 2] if stops else None
        verdict = f"{cycles} cycles in the time limit ({fmt_seconds(median)} per stop)"
        if limited is None:
            verdict = f"{cycles} cycles: too few to measure growth"
    else:
        flat = (
            growth["os_threads"] <= FLAT_THREADS
            and growth["threads"] <= FLAT_THREADS
            and growth["fds"] <= FLAT_FDS
            and growth["rss_mb"] < FLAT_RSS_MB
        )
        verdict = "flat" if flat else "grows"
    return {
        "cycles": cycles,
        "samples": samples,
        "growth": growth,
        "stop_median": stops[len(stops) // 2] if stops else None,
        "stop_max": stops[-1] if stops else None,
        "verdict": verdict,
    }


def summarise_saved(entry: dict[str, Any], every: int) -> dict[str, Any]:
    """:func:`summarise` again, from a saved summary (its samples and stop times)."""
    run = Run("saved", returncode=0)
    run.events = [{"event": "sample", **sample} for sample in entry["samples"]]
    run.events.append({"event": "done"})
    summary = summarise(run, every)
    # What the samples alone do not tell is kept as it was measured.
    for key in ("cycles", "stop_median", "stop_max"):
        summary[key] = entry[key]
    if not entry["verdict"].startswith(("flat", "grows")):
        summary["verdict"] = entry["verdict"]
    return summary


def main() -> int:
    """Run every line, print the tables, write the JSON."""
    parser = benchmark_parser(__doc__.splitlines()[0], "resource_growth.json")
    parser.add_argument("--cycles", type=int, default=500)
    parser.add_argument("--every", type=int, default=50, help="sample every N cycles")
    parser.add_argument("--jobs", type=int, default=2, help="runs at once")
    parser.add_argument(
        "--mode", choices=("both", "upstream", "shim"), default="both", help="which runs"
    )
    parser.add_argument("--report", type=Path, help="print the tables of a saved run; no run")
    args = parser.parse_args()
    if args.report is not None:
        saved = json.loads(args.report.read_text())
        args.cycles, args.every = saved["cycles"], saved["every"]
        print_tables(
            {
                line: {
                    cond: {m: summarise_saved(entry, args.every) for m, entry in modes.items()}
                    for cond, modes in conds.items()
                }
                for line, conds in saved["results"].items()
            },
            args,
            saved["machine"],
        )
        return 0
    lines, home, info = prepare(parser, args, "resource growth")
    modes = {"both": (False, True), "upstream": (False,), "shim": (True,)}[args.mode]
    plan = [(line, shim, cond) for line in lines for cond in CONDITIONS for shim in modes]
    runs: dict[tuple[str, bool, str], Run] = {}
    with tempfile.TemporaryDirectory(prefix="safestop-growth-") as tmp:
        server = SparkConnectServer(home, log_path=Path(tmp) / "server.log")
        server.start()
        warm_up(next(iter(lines.values())), server.url)
        try:
            with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
                futures = {
                    pool.submit(run_one, lines[line], shim, CONDITIONS[cond], server.url, args): (
                        line,
                        shim,
                        cond,
                    )
                    for line, shim, cond in plan
                }
                for future in concurrent.futures.as_completed(futures):
                    key = futures[future]
                    runs[key] = future.result()
                    mode = "shim" if key[1] else "upstream"
                    print(
                        f"  done {key[0]} {mode} {key[2]}: {runs[key].elapsed:.0f} s",
                        file=sys.stderr,
                        flush=True,
                    )
        finally:
            server.stop()

    results: dict[str, Any] = {}
    for line, shim, cond in plan:
        mode = "shim" if shim else "upstream"
        results.setdefault(line, {}).setdefault(cond, {})[mode] = summarise(
            runs[line, shim, cond], args.every
        )
    print_tables(results, args, info)
    write_json(
        args.json,
        {"machine": info, "cycles": args.cycles, "every": args.every, "results": results},
    )
    print(f"\nJSON: {args.json}")
    bad = [
        (line, cond)
        for line, conds in results.items()
        for cond, modes_ in conds.items()
        if "shim" in modes_ and modes_["shim"]["verdict"] != "flat"
    ]
    return 1 if bad else 0


def _trio(summary: dict[str, Any], key: str, every: int) -> str:
    """``first → after warm-up → last`` for one resource."""
    samples = summary["samples"]
    if not samples:
        return "-"
    warm = next((s for s in samples if s["cycle"] >= every), None)
    picked = [samples[0]]
    for sample in (warm, samples[-1]):
        if sample is not None and sample is not picked[-1]:
            picked.append(sample)
    return " → ".join(f"{s[key]:g}" for s in picked)


def print_tables(results: dict[str, Any], args: argparse.Namespace, info: dict[str, Any]) -> None:
    """The summary table, then every sample, both as Markdown."""
    header = [
        "line",
        "condition",
        "client",
        "cycles",
        "Python threads",
        "OS threads",
        "open fds",
        "RSS MB",
        "growth (OS threads, fds, RSS)",
        "stop p50 / max",
        "verdict",
    ]
    rows: list[list[str]] = []
    for line, conds in results.items():
        for cond, modes in conds.items():
            for mode, s in modes.items():
                g = s["growth"]
                growth = f"{g['os_threads']:+g}, {g['fds']:+g}, {g['rss_mb']:+.1f} MB" if g else "-"
                stops = f"{fmt_seconds(s['stop_median'])} / {fmt_seconds(s['stop_max'])}"
                rows.append(
                    [
                        line,
                        cond,
                        mode,
                        str(s["cycles"]),
                        _trio(s, "threads", args.every),
                        _trio(s, "os_threads", args.every),
                        _trio(s, "fds", args.every),
                        _trio(s, "rss_mb", args.every),
                        growth,
                        stops,
                        s["verdict"],
                    ]
                )
    print_table(f"Resource growth, {args.cycles} create/query/stop cycles", header, rows, info)
    print(
        f"\nColumns show cycle 1 → cycle {args.every} → last cycle. Growth of threads and fds: "
        f"the median sample of the run's second half minus the median of its first half (from "
        f"cycle {args.every}); of RSS: last sample minus cycle {args.every}'s. Flat: at most "
        f"{FLAT_THREADS} threads and {FLAT_FDS} descriptors more, and < {FLAT_RSS_MB:g} MB RSS "
        "more."
    )
    cycles = sorted(
        {
            s["cycle"]
            for conds in results.values()
            for modes in conds.values()
            for m in modes.values()
            for s in m["samples"]
        }
    )
    samples: list[list[str]] = []
    for line, conds in results.items():
        for cond, modes in conds.items():
            for mode, s in modes.items():
                by_cycle = {x["cycle"]: x for x in s["samples"]}
                cells = [
                    f"{by_cycle[c]['os_threads']}/{by_cycle[c]['fds']}/{by_cycle[c]['rss_mb']:.0f}"
                    if c in by_cycle
                    else ""
                    for c in cycles
                ]
                samples.append([line, cond, mode, *cells])
    header = ["line", "condition", "client", *map(str, cycles)]
    print_table("Every sample (OS threads / open fds / RSS MB):", header, samples)


if __name__ == "__main__":
    raise SystemExit(main())
