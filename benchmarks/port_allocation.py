"""Port allocation under contention: leased allocation against the usual bind-to-0-and-close.

Usage::

    python benchmarks/port_allocation.py [--processes 8] [--count 100] [--rounds 3]

Each round starts ``--processes`` worker processes, releases them at the same moment, and has
each one allocate ``--count`` ports while holding everything it got until all workers are done
(as a test suite holds the ports of the servers it is starting). It then counts the ports
handed to more than one holder at once ("duplicates"), and the ports inside the kernel's
ephemeral range, where an outgoing connection can take them before the server binds.

The baseline is what most test suites do: bind port 0, read the port, close the socket. Its
duplicates are real collisions that a suite making that many allocations in parallel would
hit; ``allocate_free_port`` must show none.

A leased allocation costs a lease-file creation, a lock and a bind test, so it is slower than
the baseline by roughly the cost of creating a file on the lease directory's file system;
that is microseconds against the seconds a Spark Connect server takes to start. With more
workers than CPUs, the p99 column mostly measures time a worker spent descheduled.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from pyspark_safestop.ports import allocate_free_port, ephemeral_port_range  # noqa: E402

METHODS = {
    "baseline": "bind(0) + close (baseline)",
    "leased": "allocate_free_port (leased)",
}


def _naive_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def worker(method: str, count: int) -> None:
    """Wait for "go", allocate ``count`` ports timing each, report, hold until stdin closes."""
    allocate = allocate_free_port if method == "leased" else _naive_port
    print("ready", flush=True)
    sys.stdin.readline()
    ports: list[int] = []
    times_ns: list[int] = []
    for _ in range(count):
        start = time.perf_counter_ns()
        ports.append(allocate())
        times_ns.append(time.perf_counter_ns() - start)
    print(json.dumps({"ports": ports, "times_ns": times_ns}), flush=True)
    sys.stdin.read()  # leases (if any) are held until the parent has everyone's ports


def run_round(method: str, processes: int, count: int) -> tuple[list[list[int]], list[int]]:
    """One contended round: the ports of each worker, and all allocation times in ns."""
    env = {**os.environ, "PYSPARK_SAFESTOP": "0"}
    workers = [
        subprocess.Popen(
            [sys.executable, __file__, "--worker", method, "--count", str(count)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(processes)
    ]
    try:
        for proc in workers:
            assert proc.stdout is not None
            if proc.stdout.readline().strip() != "ready":
                raise RuntimeError(f"worker {proc.pid} did not start")
        for proc in workers:  # release them together
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        reports = []
        for proc in workers:
            assert proc.stdout is not None
            reports.append(json.loads(proc.stdout.readline()))
    finally:
        for proc in workers:
            if proc.stdin is not None:
                proc.stdin.close()
        for proc in workers:
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()  # our own unreaped child
                proc.wait()
    held = [report["ports"] for report in reports]
    times = [t for report in reports for t in report["times_ns"]]
    return held, times


def duplicates(held: list[list[int]]) -> int:
    """Allocations that returned a port already handed out in the same round."""
    every = [port for ports in held for port in ports]
    return len(every) - len(set(every))


def percentile(values: list[int], fraction: float) -> float:
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, int(fraction * len(ordered)))])


def _whole(low: int, high: int) -> Callable[[str], int]:
    """An argparse type: a whole number in ``low``-``high``, or a usage error naming the text."""

    def parse(text: str) -> int:
        if not text.isascii() or not text.isdigit() or not low <= int(text) <= high:
            raise argparse.ArgumentTypeError(
                f"expected a whole number in {low}-{high}, got {text!r}"
            )
        return int(text)

    return parse


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--processes", type=_whole(1, 256), default=8, help="workers per round (1-256)"
    )
    parser.add_argument(
        "--count", type=_whole(1, 10_000), default=100, help="allocations per worker (1-10000)"
    )
    parser.add_argument("--rounds", type=_whole(1, 100), default=3, help="rounds (1-100)")
    parser.add_argument("--worker", choices=sorted(METHODS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.count)
        return

    low, high = ephemeral_port_range()
    print(
        f"{args.processes} processes x {args.count} allocations each, all held until the "
        f"round ends; {args.rounds} rounds; ephemeral range {low}-{high}"
    )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{os.cpu_count()} CPUs, load average {load:.1f}")
    header = (
        f"{'method':<30} {'allocations':>11} {'p50 us':>8} {'p99 us':>8} "
        f"{'duplicates':>10} {'in ephemeral':>12}"
    )
    print(header)
    print("-" * len(header))
    p50s: dict[str, float] = {}
    for method, label in METHODS.items():
        times: list[int] = []
        dupes = 0
        ephemeral = 0
        total = 0
        for _ in range(args.rounds):
            held, round_times = run_round(method, args.processes, args.count)
            times += round_times
            dupes += duplicates(held)
            ephemeral += sum(low <= port <= high for ports in held for port in ports)
            total += sum(len(ports) for ports in held)
        p50s[method] = percentile(times, 0.50) / 1000
        print(
            f"{label:<30} {total:>11} {p50s[method]:>8.1f} "
            f"{percentile(times, 0.99) / 1000:>8.1f} {dupes:>10} {ephemeral:>12}"
        )
    ratio = p50s["leased"] / p50s["baseline"]
    print(f"time per allocation, leased / baseline (p50): {ratio:.1f}x")


if __name__ == "__main__":
    main()
