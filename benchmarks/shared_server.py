"""One server for the whole xdist run against one per worker: what ``--safestop-shared-server``
saves on a small suite under ``pytest -n 4``.

Each run is a real pytest run of a generated suite (every test opens a session through the
``spark`` fixture and runs one query). Measured from outside: servers started (their
launchers, one per server, seen in the run's process tree), time from the run's start to the
first test body, wall time, and the peak resident memory of the whole tree (pytest, its
workers, launchers and servers), sampled every 0.1 s. Printed side by side, with the shared
run as a ratio of the per-worker one.

    python benchmarks/shared_server.py [--python .nox/tests-line-4-1/bin/python] [--workers 4]
        [--tests 16] [--engine spark|sail]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil
from _common import REPO, RESULTS, describe_machine, machine, write_json

SUITE = """
import json, os, time
from pathlib import Path

import pytest

OUT = Path(os.environ["BENCH_RECORDS"])


@pytest.mark.parametrize("n", range({tests}))
def test_query(n, spark, spark_connect_server):
    started = time.time()
    assert spark.range(n + 10).count() == n + 10
    record = {{"started": started, "server": spark_connect_server.pid}}
    (OUT / f"{{os.getpid()}}-{{n}}.json").write_text(json.dumps(record))
"""

ENGINES = ("spark", "sail")


@dataclass
class Measured:
    """One run, as seen from outside."""

    servers_started: int
    first_test_seconds: float
    wall_seconds: float
    peak_rss_mb: float
    passed: bool


def _tree(root: psutil.Process) -> list[psutil.Process]:
    try:
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def measure(python: str, folder: Path, workers: int, engine: str, shared: bool) -> Measured:
    """Run the suite in ``folder`` once and measure it."""
    records = Path(tempfile.mkdtemp(prefix="bench-records-"))
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO)
    env["BENCH_RECORDS"] = str(records)
    argv = [python, "-m", "pytest", "-q", "-p", "pyspark_safestop.plugin", "-p", "no:cacheprovider"]
    argv += ["-n", str(workers), "--safestop-engine", engine]
    argv += ["--safestop-shared-server"] if shared else []
    servers: set[int] = set()
    peak = 0
    done = threading.Event()
    start_wall = time.time()
    t0 = time.monotonic()
    proc = subprocess.Popen(
        argv, cwd=folder, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    root = psutil.Process(proc.pid)

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            total = 0
            for process in _tree(root):
                try:
                    total += process.memory_info().rss
                    # One launcher per server, whatever the engine (spark-submit runs two JVMs).
                    if any(part.endswith("_launcher.py") for part in process.cmdline()):
                        servers.add(process.pid)
                except psutil.Error:
                    continue
            peak = max(peak, total)
            done.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    code = proc.wait(timeout=900)
    wall = time.monotonic() - t0
    done.set()
    sampler.join()
    started = [json.loads(path.read_text())["started"] for path in records.glob("*.json")]
    return Measured(
        servers_started=len(servers),
        first_test_seconds=min(started) - start_wall if started else float("nan"),
        wall_seconds=wall,
        peak_rss_mb=peak / 2**20,
        passed=code == 0,
    )


def main() -> int:
    """Run the suite per worker and shared; print both and their ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--python", default=str(REPO / ".nox" / "tests-line-4-1" / "bin" / "python")
    )
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--tests", type=int, default=16)
    parser.add_argument("--engine", choices=ENGINES, default="spark")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-shared-server-") as tmp:
        folder = Path(tmp)
        (folder / "test_suite.py").write_text(textwrap.dedent(SUITE.format(tests=args.tests)))
        runs = {
            "per worker": measure(args.python, folder, args.workers, args.engine, shared=False),
            "shared": measure(args.python, folder, args.workers, args.engine, shared=True),
        }
    info = machine()
    print(describe_machine(info))
    print(f"pytest -n {args.workers}, {args.tests} tests, engine {args.engine}, {args.python}")
    per, shared = runs["per worker"], runs["shared"]
    rows = [
        ("servers started", per.servers_started, shared.servers_started, "{:.0f}"),
        ("time to first test", per.first_test_seconds, shared.first_test_seconds, "{:.2f} s"),
        ("wall time", per.wall_seconds, shared.wall_seconds, "{:.2f} s"),
        ("peak RSS", per.peak_rss_mb, shared.peak_rss_mb, "{:.0f} MB"),
    ]
    print(f"{'':20} {'per worker':>12} {'shared':>12} {'shared/per':>11}")
    for name, a, b, shown in rows:
        ratio = b / a if a else float("nan")
        print(f"{name:20} {shown.format(a):>12} {shown.format(b):>12} {ratio:>10.2f}x")
    if not (per.passed and shared.passed):
        print("a run failed: " + ", ".join(k for k, v in runs.items() if not v.passed))
    payload = {"machine": info, "args": vars(args), "runs": {k: asdict(v) for k, v in runs.items()}}
    write_json(RESULTS / f"shared_server_{args.engine}.json", payload)
    return 0 if per.passed and shared.passed else 1


if __name__ == "__main__":
    sys.exit(main())
