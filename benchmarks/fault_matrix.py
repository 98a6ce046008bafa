"""Every fault, upstream vs pyspark-safestop, on every client line, against a real server.

    python benchmarks/fault_matrix.py [--line 4.1=/path/to/python ...] [--fault NAME ...]

Without ``--line``, the client lines' interpreters are taken from the nox virtual
environments. A real Spark Connect server is started from the pyspark 4.3 jars
(``PYSPARK_SAFESTOP_SPARK_HOME`` or the installed pyspark); each run is a fresh interpreter of
one line, with the shim off (``PYSPARK_SAFESTOP=0``: upstream) or on, talking to the server
through a fault-injecting gRPC proxy, a TCP relay that can blackhole, or directly (a second
server that is restarted on its port). A run still going ``--timeout`` seconds after it
started working is called hung and killed with its process group.

Each fault has a bound; a cell reads ``12 ms ✓`` (within the bound), ``10.0 s ✗`` (outside
it) or ``hung ✗``. Every cell also requires the scenario's next session to work and the
interpreter to exit within 4 s of the scenario's end. The table is printed as Markdown; the
details (every event of every run) go to ``benchmarks/results/fault_matrix.json``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _common import (
    REPO,
    RESULTS,
    Run,
    add_line_arguments,
    describe_machine,
    fmt_seconds,
    machine,
    resolve_lines,
    run_events,
    warm_up,
    write_json,
)
from _faults import SelectiveHangProxy, TcpRelay

from pyspark_safestop._server import SparkConnectServer, find_spark_home
from tests.harness import Check, next_session_works, stop_within

CORE_SCRIPT = REPO / "tests" / "scenarios" / "run_scenario.py"
WORKER_SCRIPT = Path(__file__).resolve().parent / "_fault_worker.py"

#: The shim's release timeout in these runs (seconds); the bounds below are built on it.
RELEASE_TIMEOUT = 1.0
#: A stop that took longer than this did not "return promptly".
STOP_BOUND = 2.0
#: Seconds from a scenario's last line to its interpreter's exit.
EXIT_BOUND = 4.0


@dataclass(frozen=True)
class Fault:
    """One row of the matrix: a scenario, how its fault is made, what is measured, the bound."""

    title: str
    script: Path
    scenario: str
    bound: str
    #: The figure shown in the cell (seconds), read from the run.
    metric: Callable[[Run], float | None]
    checks: tuple[Check, ...]
    #: Methods hung by the proxy for the whole run.
    hang: tuple[str, ...] = ()
    #: "proxy" (fault proxy), "relay" (TCP relay that can blackhole) or "restart" (direct, to
    #: a server restarted at the checkpoint).
    transport: str = "proxy"
    env: dict[str, str] = field(default_factory=dict)
    #: Seconds a run may take once it has started working (its first line): past that it is
    #: hung. Generous: a shared 2-core machine can take 10 s to create a session.
    timeout: float = 60.0
    #: Not the shim's to bound (a README limitation, with the reason): a cell of this row
    #: outside its bound is marked † and does not fail the run.
    limitation: str = ""


# --- checks ------------------------------------------------------------------------------------


def _stopped(run: Run, label: str) -> float | None:
    event = run.find("stopped", label=label)
    if event is None or event.get("returned") is False:
        return None
    return float(event["seconds"])


def slowest_within(name: str, key: str, bound: float, count: int = 1) -> Check:
    """At least ``count`` events ``name``, and their ``key`` all within ``bound``."""

    def check(run: Run) -> list[str]:
        found = run.all(name)
        if len(found) < count:
            return [f"only {len(found)} of {count} '{name}' events"]
        slow = [e for e in found if e.get(key, 0) > bound or e.get("hung")]
        return [f"{name}: {key} {e.get(key)} s > {bound} s" for e in slow]

    return check


def field_is(name: str, key: str, value: Any) -> Check:
    """Event ``name`` has ``key == value``."""

    def check(run: Run) -> list[str]:
        event = run.find(name)
        if event is None:
            return [f"no '{name}' event"]
        return [] if event.get(key) == value else [f"{name}: {key} = {event.get(key)!r}"]

    return check


def interrupted_promptly(run: Run) -> list[str]:
    """The SIGINT (sent 0.5 s into stop()) surfaced as a KeyboardInterrupt within 1 s (in
    stop(), or just after it where stop() returned sooner)."""
    event = run.find("interrupted")
    if event is None:
        return ["KeyboardInterrupt never surfaced"]
    if event["seconds"] > 1.5:
        return [f"KeyboardInterrupt surfaced {event['seconds'] - 0.5:.1f} s after the signal"]
    return []


def _metric_event(name: str, key: str = "seconds") -> Callable[[Run], float | None]:
    def metric(run: Run) -> float | None:
        values = [float(e[key]) for e in run.all(name) if key in e and not e.get("hung")]
        return max(values) if values else None

    return metric


def _metric_stop(label: str) -> Callable[[Run], float | None]:
    return lambda run: _stopped(run, label)


def _metric_exit(run: Run) -> float | None:
    return run.exit_delay


_RT = {"PYSPARK_SAFESTOP_RELEASE_TIMEOUT": str(RELEASE_TIMEOUT)}
_STOP = f"stop ≤ {STOP_BOUND:.0f} s"
_STOP_RT = f"stop ≤ {RELEASE_TIMEOUT + STOP_BOUND:.0f} s (release timeout {RELEASE_TIMEOUT:.0f} s)"

FAULTS: dict[str, Fault] = {
    # The core issue's faults: the very scenarios of the regression tests.
    "seed_chain": Fault(
        "seed's fixture chain, ReleaseExecute hung",
        CORE_SCRIPT,
        "seed_chain",
        _STOP + " (in a daemon thread, 5 s join), next session works",
        _metric_stop("first"),
        (stop_within("first", STOP_BOUND), next_session_works),
        hang=("ReleaseExecute",),
    ),
    "stop_re_hung": Fault(
        "stop(), ReleaseExecute hung",
        CORE_SCRIPT,
        "plain_stop",
        _STOP,
        _metric_stop("first"),
        (stop_within("first", STOP_BOUND), next_session_works),
        hang=("ReleaseExecute",),
    ),
    "stop_rs_hung": Fault(
        "stop(), ReleaseSession hung",
        CORE_SCRIPT,
        "plain_stop",
        _STOP_RT,
        _metric_stop("first"),
        (stop_within("first", RELEASE_TIMEOUT + STOP_BOUND), next_session_works),
        hang=("ReleaseSession",),
        env=_RT,
    ),
    "gc_orphans": Fault(
        "orphaned sessions garbage-collected, ReleaseExecute hung",
        CORE_SCRIPT,
        "gc_orphans",
        f"each gc.collect() ≤ {STOP_BOUND:.0f} s",
        _metric_event("collected"),
        (slowest_within("collected", "seconds", STOP_BOUND, 3), next_session_works),
        hang=("ReleaseExecute",),
    ),
    "exit_unstopped": Fault(
        "exit, unstopped session, ReleaseExecute hung",
        CORE_SCRIPT,
        "exit_unstopped",
        f"exit ≤ {EXIT_BOUND:.0f} s",
        _metric_exit,
        (),
        hang=("ReleaseExecute",),
    ),
    "concurrent_stops": Fault(
        "16 threads stop 16 sessions, ReleaseExecute hung",
        CORE_SCRIPT,
        "concurrent_stops",
        f"all ≤ {4 * STOP_BOUND:.0f} s",
        _metric_event("stopped"),
        (
            slowest_within("stopped", "seconds", 4 * STOP_BOUND, 1),
            field_is("stopped", "returned", 16),
            next_session_works,
        ),
        hang=("ReleaseExecute",),
    ),
    "server_killed": Fault(
        "server gone before stop()",
        CORE_SCRIPT,
        "server_killed",
        _STOP_RT,
        _metric_stop("first"),
        (stop_within("first", RELEASE_TIMEOUT + STOP_BOUND),),
        env=_RT,
    ),
    "double_stop": Fault(
        "stop() twice, ReleaseExecute hung",
        CORE_SCRIPT,
        "double_stop",
        _STOP + " each",
        lambda run: max(
            (v for v in (_stopped(run, "first"), _stopped(run, "second")) if v is not None),
            default=None,
        ),
        (
            stop_within("first", STOP_BOUND),
            stop_within("second", STOP_BOUND),
            next_session_works,
        ),
        hang=("ReleaseExecute",),
    ),
    # This matrix's own faults.
    "blackhole": Fault(
        "connection blackholed (no bytes either way)",
        WORKER_SCRIPT,
        "blackhole",
        _STOP_RT + ", next session works once healed",
        _metric_stop("first"),
        (stop_within("first", RELEASE_TIMEOUT + STOP_BOUND), next_session_works),
        transport="relay",
        env=_RT,
    ),
    "iterate_during_stop": Fault(
        "stop() while another thread iterates a result",
        WORKER_SCRIPT,
        "iterate_during_stop",
        _STOP_RT + "; the iterating thread ends ≤ 5 s",
        lambda run: max(
            (
                v
                for v in (_stopped(run, "first"), _metric_event("reader_ended")(run))
                if v is not None
            ),
            default=None,
        ),
        (
            stop_within("first", RELEASE_TIMEOUT + STOP_BOUND),
            slowest_within("reader_ended", "seconds", 5.0),
            next_session_works,
        ),
        env=_RT,
    ),
    "fork_after_use": Fault(
        "os.fork() after use; the child makes its own session",
        WORKER_SCRIPT,
        "fork_after_use",
        "child done and exited ≤ 15 s (code 0); parent stop ≤ 2 s",
        _metric_event("child_ended"),
        (
            slowest_within("child_ended", "seconds", 15.0),
            field_is("child_ended", "code", 0),
            stop_within("first", STOP_BOUND),
            next_session_works,
        ),
        env=_RT,
        limitation=(
            "gRPC does not support a forked child using gRPC state inherited from its parent; "
            "the child can block at exit, with or without the shim (README: Limitations)"
        ),
    ),
    "interrupt_during_stop": Fault(
        "KeyboardInterrupt during stop() (ReleaseSession and ReleaseExecute hung)",
        CORE_SCRIPT,
        "interrupt_during_stop",
        "interrupt surfaces ≤ 1 s after the signal, next session works, exit ≤ 4 s",
        _metric_exit,
        (interrupted_promptly, next_session_works),
        hang=("ReleaseSession", "ReleaseExecute"),
        env={"PYSPARK_SAFESTOP_RELEASE_TIMEOUT": "3"},
    ),
    "restart_same_port": Fault(
        "server restarted on the same port between sessions",
        WORKER_SCRIPT,
        "restart_same_port",
        _STOP_RT + ", next session works",
        _metric_stop("first"),
        (stop_within("first", RELEASE_TIMEOUT + STOP_BOUND), next_session_works),
        transport="restart",
        env=_RT,
        # All of this row's runs start at once (one restart serves them all): on a loaded
        # 2-core machine their first sessions alone can take a minute.
        timeout=150.0,
    ),
    "loop_100_hung": Fault(
        "100 sessions created and stopped, ReleaseExecute hung throughout",
        WORKER_SCRIPT,
        "loop_100_hung",
        f"each stop ≤ {STOP_BOUND:.0f} s, all 100 ≤ 100 s",
        _metric_event("loop_done"),
        (
            slowest_within("loop_done", "slowest", STOP_BOUND),
            slowest_within("loop_done", "seconds", 100.0),
            next_session_works,
        ),
        hang=("ReleaseExecute",),
        timeout=180.0,
    ),
}


def problems(fault: Fault, run: Run) -> list[str]:
    """Everything that broke the fault's bound in this run (empty: it passed)."""
    if run.hung:
        found = [f"hung: still running {fault.timeout:.0f} s after it started working"]
    else:
        found = []
        if run.returncode != 0:
            found.append(f"exit status {run.returncode}")
        if run.find("done") is None:
            found.append("never reached the end of the scenario")
        if run.exit_delay is None or run.exit_delay > EXIT_BOUND:
            found.append(f"exit took {run.exit_delay} s > {EXIT_BOUND:.0f} s")
    for check in fault.checks:
        found += check(run)
    return found


def cell(fault: Fault, run: Run, found: list[str]) -> str:
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
        self.server = SparkConnectServer(
            self._home,
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
    fault: Fault,
    python: str,
    *,
    shim: bool,
    server_port: int,
    workdir: Path,
    restarter: Restarter | None,
    label: str,
) -> Run:
    """One fault on one line, with or without the shim."""
    stderr = workdir / f"{label.replace(' ', '_').replace('/', '-')}.stderr"
    env = dict(fault.env)
    if fault.transport == "relay":
        with TcpRelay("127.0.0.1", server_port) as relay:
            actions = {"blackhole": relay.blackhole, "heal": relay.heal}
            return run_events(
                python,
                fault.script,
                [fault.scenario, relay.url],
                shim=shim,
                timeout=fault.timeout,
                env=env,
                on_checkpoint=actions,
                label=label,
                stderr_path=stderr,
            )
    if fault.transport == "restart":
        assert restarter is not None
        return run_events(
            python,
            fault.script,
            [fault.scenario, restarter.server.url],
            shim=shim,
            timeout=fault.timeout,
            env=env,
            on_checkpoint={"restart-server": restarter.at_checkpoint},
            label=label,
            stderr_path=stderr,
        )
    with SelectiveHangProxy(f"127.0.0.1:{server_port}") as proxy:
        for method in fault.hang:
            proxy.hang(method)
        return run_events(
            python,
            fault.script,
            [fault.scenario, proxy.url],
            shim=shim,
            timeout=fault.timeout,
            env=env,
            on_checkpoint={"kill-server": proxy.kill},
            label=label,
            stderr_path=stderr,
        )


def _label(name: str, line: str, shim: bool) -> str:
    return f"{name} {line} {'shim' if shim else 'upstream'}"


def run_plan(
    plan: list[tuple[str, str, bool]],
    faults: dict[str, Fault],
    lines: dict[str, str],
    *,
    jobs: int,
    server_port: int,
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
                server_port=server_port,
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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_line_arguments(parser)
    parser.add_argument(
        "--fault", action="append", default=[], choices=list(FAULTS), help="only these faults"
    )
    parser.add_argument(
        "--mode", choices=("both", "upstream", "shim"), default="both", help="which column(s)"
    )
    parser.add_argument("--jobs", type=int, default=4, help="runs at once (most of them wait)")
    parser.add_argument("--json", type=Path, default=RESULTS / "fault_matrix.json")
    parser.add_argument("--keep", type=Path, help="keep the runs' stderr and server logs here")
    args = parser.parse_args()
    lines = resolve_lines(parser, args.line)
    home = find_spark_home()
    if home is None:
        parser.error("no Spark jars: set PYSPARK_SAFESTOP_SPARK_HOME to a pyspark 4.3 folder")
    faults = {name: FAULTS[name] for name in (args.fault or list(FAULTS))}
    modes = {"both": (False, True), "upstream": (False,), "shim": (True,)}[args.mode]
    info = machine()
    print(f"fault matrix on {describe_machine(info)}", file=sys.stderr, flush=True)

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
                server_port=server.port,
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
                    server_port=0,
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
                found = problems(fault, run)
                row["shim" if shim else "upstream"] = {
                    "cell": cell(fault, run, found),
                    "seconds": fault.metric(run),
                    "ok": not found,
                    "problems": found,
                    "hung": run.hung,
                    "returncode": run.returncode,
                    "elapsed": run.elapsed,
                    "exit_delay": run.exit_delay,
                    "events": run.events,
                    "stderr_tail": run.stderr_tail if found else "",
                }
            results[name]["lines"][line] = row
    print_table(results, list(lines), modes, info)
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


def print_table(
    results: dict[str, Any], lines: list[str], modes: tuple[bool, ...], info: dict[str, Any]
) -> None:
    """The matrix as a Markdown table, then every shim cell outside its bound, explained."""
    print(f"\nFault matrix, {describe_machine(info)}; server pyspark 4.3\n")
    names = ["upstream" if not shim else "shim" for shim in modes]
    header = ["fault", "bound"] + [f"{line} {name}" for line in lines for name in names]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for result in results.values():
        cells = [result["title"], result["bound"]]
        cells += [result["lines"][line][name]["cell"] for line in lines for name in names]
        print("| " + " | ".join(cells) + " |")
    print(
        "\n✓ within the bound, ✗ outside it; hung = still running when killed. Every cell also "
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
