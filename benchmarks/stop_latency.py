"""stop() latency and exit time, upstream vs pyspark-safestop, on every client line, in one run.

    python benchmarks/stop_latency.py [--line 4.1=/path/to/venv/bin/python ...] [--quick]

Without ``--line``, the client lines' interpreters are taken from the nox virtual
environments (``.nox/lines/<line>``, made by ``nox -s bench``, then the ``tests`` sessions').
A real Spark Connect server is started from the pyspark 4.3 jars
(``PYSPARK_SAFESTOP_SPARK_HOME`` or the installed pyspark), and each measurement goes
through a fault-injecting proxy in front of it. Conditions:

- healthy: no fault;
- ReleaseExecute hung: every ReleaseExecute hangs until cancelled;
- ReleaseSession hung: ReleaseSession hangs, release timeout 1 s;
- exit: an unstopped session with a ReleaseExecute hung; the time from the end of the work to
  the interpreter's exit.

A stop or exit still running after the cap (15 s) is shown as ``hung``. Targets for the shim:
healthy stop no slower than upstream; hung ReleaseExecute p99 <= 50 ms; hung ReleaseSession
<= timeout + 100 ms; exit <= 1 s. Results are also written as JSON to benchmarks/results/.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from _common import benchmark_parser, prepare, run_events

from pyspark_safestop.servers import SparkConnectServer
from pyspark_safestop.testing.faults import FaultProxy

WORKER = Path(__file__).parent / "_stop_worker.py"
CAP = 15.0
RELEASE_TIMEOUT = 1.0

# (name, faults, iterations for the shim, iterations for upstream)
CONDITIONS = [
    ("healthy", (), 30, 30),
    ("ReleaseExecute hung", ("ReleaseExecute",), 30, 2),
    ("ReleaseSession hung (timeout 1 s)", ("ReleaseSession",), 5, 1),
    ("exit, RPC in flight", ("ReleaseExecute",), 1, 1),
]


@dataclass
class Measure:
    seconds: list[float] = field(default_factory=list)
    hung: bool = False
    error: str = ""

    def pct(self, q: float) -> float | None:
        if not self.seconds:
            return None
        ordered = sorted(self.seconds)
        return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run_worker(python: str, condition: str, url: str, iterations: int, shim: bool) -> Measure:
    """Run the worker once; its stop times, or the time its interpreter took to exit."""
    mode = "exit" if condition.startswith("exit") else "stop"
    with tempfile.TemporaryDirectory() as tmp:
        run = run_events(
            [python, str(WORKER), mode, url, str(iterations), str(CAP)],
            shim=shim,
            # Exit: the session's work plus CAP for the exit; stop: every stop within its cap.
            timeout=2 * CAP if mode == "exit" else 120,
            env={"PYSPARK_SAFESTOP_RELEASE_TIMEOUT": str(RELEASE_TIMEOUT)},
            label=f"{condition} ({'shim' if shim else 'upstream'})",
            stderr_path=Path(tmp) / "stderr",
        )
    measure = Measure()
    for event in run.all("stop"):
        measure.hung = measure.hung or event["hung"]
        if not event["hung"]:
            measure.seconds.append(event["seconds"])
    if mode == "exit" and run.find("done") is not None and run.exit_delay is not None:
        measure.seconds.append(run.exit_delay)
    measure.hung = measure.hung or run.hung
    if run.returncode not in (0, None) and not measure.seconds and not measure.hung:
        measure.error = run.stderr_tail[-500:]
    return measure


def fmt(seconds: float | None, hung: bool) -> str:
    if hung and seconds is None:
        return f"hung >{CAP:.0f} s"
    if seconds is None:
        return "-"
    text = f"{seconds * 1000:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"
    return text + (" (then hung)" if hung else "")


def ratio(upstream: Measure, shim: Measure) -> str:
    up, ours = upstream.pct(0.99), shim.pct(0.99)
    if ours is None or ours <= 0:
        return "-"
    if up is None:
        return f">{CAP / ours:,.0f}x" if upstream.hung else "-"
    text = f"{up / ours:,.1f}x"
    return (">" + text) if upstream.hung else text


def main() -> int:
    parser = benchmark_parser(__doc__.splitlines()[0], "stop_latency.json")
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    args = parser.parse_args()
    lines, home, _ = prepare(parser, args, "stop latency")
    results: dict[str, dict[str, dict[str, object]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        server = SparkConnectServer(home, log_path=Path(tmp) / "server.log")
        server.start()
        try:
            for line, python in lines.items():
                results[line] = {}
                for name, faults, n_shim, n_up in CONDITIONS:
                    row: dict[str, object] = {}
                    for mode, planned in (("upstream", n_up), ("shim", n_shim)):
                        n = max(1, planned // 5) if args.quick else planned
                        with FaultProxy(server.url) as proxy:
                            for method in faults:
                                proxy.hang(method)
                            row[mode] = run_worker(python, name, proxy.url, n, mode == "shim")
                    results[line][name] = row
                    print(f"  measured {line:4} {name}", file=sys.stderr, flush=True)
        finally:
            server.stop()

    header = f"{'line':5} {'condition':34} {'upstream p50':>14} {'upstream p99':>18} "
    header += f"{'shim p50':>10} {'shim p99':>10} {'p99 ratio':>10}"
    print(f"\nstop() latency and exit time, {os.cpu_count()} cores, server pyspark 4.3\n")
    print(header)
    print("-" * len(header))
    for line, rows in results.items():
        for name, row in rows.items():
            up, ours = row["upstream"], row["shim"]
            assert isinstance(up, Measure)
            assert isinstance(ours, Measure)
            cells = [
                f"{fmt(up.pct(0.5), up.hung):>14}",
                f"{fmt(up.pct(0.99), up.hung):>18}",
                f"{fmt(ours.pct(0.5), ours.hung):>10}",
                f"{fmt(ours.pct(0.99), ours.hung):>10}",
                f"{ratio(up, ours):>10}",
            ]
            print(f"{line:5} {name:34} " + " ".join(cells))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {
                line: {name: {m: asdict(v) for m, v in row.items()} for name, row in rows.items()}
                for line, rows in results.items()
            },
            indent=1,
        )
    )
    print(f"\nratio = upstream / shim (higher is better for the shim); JSON: {args.json}")
    # A run that broke (an interpreter without pyspark, a crash) measured nothing: say so, and
    # fail, rather than leave a row of dashes that reads like a result.
    broken = [
        (line, name, mode, measure.error)
        for line, rows in results.items()
        for name, row in rows.items()
        for mode, measure in row.items()
        if isinstance(measure, Measure) and measure.error
    ]
    for line, name, mode, error in broken:
        tail = error.strip().splitlines()[-1] if error.strip() else "no output"
        print(f"error: {line} {name} ({mode}): {tail}", file=sys.stderr)
    return 1 if broken else 0


if __name__ == "__main__":
    raise SystemExit(main())
