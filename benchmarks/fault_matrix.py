"""Every fault, upstream vs pyspark-safestop, on every client line, against a real server.

    python benchmarks/fault_matrix.py [--line 4.1=/path/to/python ...] [--fault NAME ...]

Without ``--line``, the client lines' interpreters are taken from the nox virtual
environments. A real Spark Connect server is started from the pyspark 4.3 jars
(``PYSPARK_SAFESTOP_SPARK_HOME`` or the installed pyspark); each run is a fresh interpreter of
one line, with the shim off (``PYSPARK_SAFESTOP=0``: upstream) or on, talking to the server
through a fault-injecting gRPC proxy, a TCP relay that can blackhole, or directly (a second
server that is restarted on its port). The faults, their bounds and the frames where
upstream parks for good are the catalogue's (:mod:`pyspark_safestop.testing.catalogue`), the
same table the regression tests use. A run is called hung, and killed with its process group,
as soon as the child's stack shows a thread parked in one of those frames, or when it is still
going at its case's hard timeout.

Each fault has a bound; a cell reads ``12 ms ✓`` (within the bound), ``10.0 s ✗`` (outside
it) or ``hung ✗``. Every cell also requires the scenario's next session to work and the
interpreter to exit within 4 s of the scenario's end. The table is printed as Markdown; the
details (every event of every run) go to ``benchmarks/results/fault_matrix.json``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from _common import (
    Run,
    benchmark_parser,
    fmt_seconds,
    prepare,
    print_table,
    warm_up,
    write_json,
)

from pyspark_safestop.servers import SparkConnectServer
from pyspark_safestop.testing.catalogue import CASES, EXIT_BOUND, RELEASE_TIMEOUT, Case, run_case


def cell(fault: Case, run: Run, found: list[str]) -> str:
    """The table cell: the measured figure and whether it is within the bound."""
    if run.hung:
        progress = run.all("progress")
        # A loop still going at the timeout is shown with how far it got: 4.2+ upstream is
        # not stuck but takes 10 s per stop.
        done = progress[-1]["done"] if progress else 0
        return f"{done}/100 in {fault.timeout:.0f} s ✗" if done else "hung ✗"
    value = fault.metric(run)
    text = fmt_seconds(value) if value is not None else "-"
    if not found:
        return f"{text} ✓"
    mark = " †" if fault.limitation else ""
    if value is None and run.returncode not in (0, None):
        return f"error ✗{mark}"
    return f"{text} ✗{mark}"


class _SameTokenServer(SparkConnectServer):
    """The same server coming back: it checks the token its clients already hold, where a
    new server would make a new one."""

    def __init__(self, home: Path, token: str, **options: Any) -> None:
        super().__init__(home, **options)
        self._kept_token = token

    @property
    def token(self) -> str:
        """The token of the server it stands for."""
        return self._kept_token


class Restarter:
    """Restarts one server on its own port once every run of a phase has reached the
    checkpoint (a barrier), so that one restart serves them all."""

    def __init__(self, server: SparkConnectServer, home: Path, log_dir: Path, parties: int):
        """Prepare a barrier for ``parties`` runs around ``server``."""
        self.server = server
        self._home = home
        self._log_dir = log_dir
        self._barrier = threading.Barrier(parties, action=self._restart)
        self.restarted = False

    def _restart(self) -> None:
        port = self.server.port
        self.server.stop()
        self.server = _SameTokenServer(
            self._home,
            self.server.token,
            log_path=self._log_dir / "restart-server-2.log",
            extra_conf={"spark.connect.grpc.binding.port": str(port)},
        )
        self.server.start()
        self.restarted = self.server.port == port

    def at_checkpoint(self) -> None:
        """Wait for the other runs (a run that died early breaks the barrier after 180 s)."""
        with contextlib.suppress(threading.BrokenBarrierError):
            self._barrier.wait(timeout=180)


def run_one(
    fault: Case,
    python: str,
    *,
    shim: bool,
    server_url: str,
    workdir: Path,
    restarter: Restarter | None,
    label: str,
) -> Run:
    """One fault on one line, with or without the shim."""
    stderr = workdir / f"{label.replace(' ', '_').replace('/', '-')}.stderr"
    if fault.transport == "restart":
        assert restarter is not None
        return run_case(
            fault,
            restarter.server.url,
            shim=shim,
            python=python,
            actions={"restart-server": restarter.at_checkpoint},
            label=label,
            stderr_path=stderr,
        )
    return run_case(fault, server_url, shim=shim, python=python, label=label, stderr_path=stderr)


def _label(name: str, line: str, shim: bool) -> str:
    return f"{name} {line} {'shim' if shim else 'upstream'}"


def run_plan(
    plan: list[tuple[str, str, bool]],
    faults: dict[str, Case],
    lines: dict[str, str],
    *,
    jobs: int,
    server_url: str,
    workdir: Path,
    restarter: Restarter | None,
) -> dict[tuple[str, str, bool], Run]:
    """Run every (fault, line, shim) of ``plan``, ``jobs`` at a time."""
    runs: dict[tuple[str, str, bool], Run] = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = {
            pool.submit(
                run_one,
                faults[name],
                lines[line],
                shim=shim,
                server_url=server_url,
                workdir=workdir,
                restarter=restarter,
                label=_label(name, line, shim),
            ): (name, line, shim)
            for name, line, shim in plan
        }
        for future in concurrent.futures.as_completed(futures):
            key = futures[future]
            runs[key] = future.result()
            print(f"  done {_label(*key)}: {runs[key].elapsed:.1f} s", file=sys.stderr)
    return runs


def main() -> int:
    """Run the matrix, print the table, write the JSON."""
    parser = benchmark_parser(__doc__.splitlines()[0], "fault_matrix.json")
    parser.add_argument(
        "--fault", action="append", default=[], choices=list(CASES), help="only these faults"
    )
    parser.add_argument(
        "--mode", choices=("both", "upstream", "shim"), default="both", help="which column(s)"
    )
    parser.add_argument("--jobs", type=int, default=4, help="runs at once (most of them wait)")
    parser.add_argument("--keep", type=Path, help="keep the runs' stderr and server logs here")
    args = parser.parse_args()
    lines, home, info = prepare(parser, args, "fault matrix")
    faults = {name: CASES[name] for name in (args.fault or list(CASES))}
    modes = {"both": (False, True), "upstream": (False,), "shim": (True,)}[args.mode]

    tmp = tempfile.TemporaryDirectory(prefix="safestop-faults-")
    workdir = args.keep or Path(tmp.name)
    workdir.mkdir(parents=True, exist_ok=True)
    runs: dict[tuple[str, str, bool], Run] = {}
    plan = [(f, line, shim) for f in faults for line in lines for shim in modes]
    main_plan = [p for p in plan if faults[p[0]].transport != "restart"]
    restart_plan = [p for p in plan if faults[p[0]].transport == "restart"]

    server = SparkConnectServer(home, log_path=workdir / "server.log")
    server.start()
    warm_up(next(iter(lines.values())), server.url)
    try:
        runs.update(
            run_plan(
                main_plan,
                faults,
                lines,
                jobs=args.jobs,
                server_url=server.url,
                workdir=workdir,
                restarter=None,
            )
        )
    finally:
        server.stop()

    if restart_plan:
        # Its own server, restarted once when every run has used its first session.
        second = SparkConnectServer(home, log_path=workdir / "restart-server-1.log")
        second.start()
        warm_up(next(iter(lines.values())), second.url)
        restarter = Restarter(second, home, workdir, len(restart_plan))
        try:
            # All at once: the restart waits until every run has used its first session.
            runs.update(
                run_plan(
                    restart_plan,
                    faults,
                    lines,
                    jobs=len(restart_plan),
                    server_url="",
                    workdir=workdir,
                    restarter=restarter,
                )
            )
        finally:
            restarter.server.stop()
        if not restarter.restarted:
            print("warning: the server did not come back on its port", file=sys.stderr)

    results: dict[str, Any] = {}
    for name, fault in faults.items():
        results[name] = {
            "title": fault.title,
            "bound": fault.bound,
            "limitation": fault.limitation,
            "lines": {},
        }
        for line in lines:
            row: dict[str, Any] = {}
            for shim in modes:
                run = runs[name, line, shim]
                found = fault.problems(run)
                row["shim" if shim else "upstream"] = {
                    "cell": cell(fault, run, found),
                    "seconds": fault.metric(run),
                    "ok": not found,
                    "problems": found,
                    "hung": run.hung,
                    "how_it_hung": run.how_it_hung(),
                    "returncode": run.returncode,
                    "elapsed": run.elapsed,
                    "exit_delay": run.exit_delay,
                    "events": run.events,
                    "stderr_tail": run.stderr_tail if found else "",
                }
            results[name]["lines"][line] = row
    print_matrix(results, list(lines), modes, info)
    write_json(
        args.json,
        {
            "machine": info,
            "release_timeout": RELEASE_TIMEOUT,
            "faults": results,
        },
    )
    print(f"\nJSON: {args.json}")
    tmp.cleanup()
    failed_shim = [
        (name, line)
        for name, result in results.items()
        for line, row in result["lines"].items()
        if "shim" in row and not row["shim"]["ok"] and not result["limitation"]
    ]
    return 1 if failed_shim else 0


def print_matrix(
    results: dict[str, Any], lines: list[str], modes: tuple[bool, ...], info: dict[str, Any]
) -> None:
    """The matrix as a Markdown table, then every shim cell outside its bound, explained."""
    names = ["upstream" if not shim else "shim" for shim in modes]
    header = ["fault", "bound"] + [f"{line} {name}" for line in lines for name in names]
    rows = [
        [result["title"], result["bound"]]
        + [result["lines"][line][name]["cell"] for line in lines for name in names]
        for result in results.values()
    ]
    print_table("Fault matrix, server pyspark 4.3", header, rows, info)
    print(
        "\n✓ within the bound, ✗ outside it; hung = a thread parked where upstream never "
        "returns (seen in its stack), or still running at the hard timeout. Every cell also "
        f"needs the run to end normally and the interpreter to exit ≤ {EXIT_BOUND:.0f} s."
    )
    for result in results.values():
        if result["limitation"]:
            print(f"† {result['title']}: {result['limitation']}")
    for result in results.values():
        for line in lines:
            for name in names:
                entry = result["lines"][line][name]
                if entry["problems"]:
                    print(f"  {result['title']} / {line} {name}: {'; '.join(entry['problems'])}")


if __name__ == "__main__":
    raise SystemExit(main())
