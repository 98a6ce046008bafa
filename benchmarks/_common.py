"""What the evidence benchmarks share: their ``--line`` option, finding the client lines'
interpreters and the server's jars, describing the machine, running a scenario script with a hard
timeout, formatting durations and printing tables.

Nothing here imports pyspark: the benchmarks run in one interpreter and drive each client line
in its own (``--line 4.1=/path/to/python``), so every line is measured against the same server.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"

if str(REPO) not in sys.path:
    # The benchmarks are run as scripts from a clone: the package (with its fault toolkit and
    # scenario runner) is imported from the work tree, not an installed copy.
    sys.path.insert(0, str(REPO))

from pyspark_safestop.servers import find_spark_home  # noqa: E402
from pyspark_safestop.testing.catalogue import WARM_UP, run_case  # noqa: E402
from pyspark_safestop.testing.runner import Run, child_env, kill_group, run_events  # noqa: E402

__all__ = [
    "REPO",
    "RESULTS",
    "Run",
    "benchmark_parser",
    "child_env",
    "describe_machine",
    "discover_lines",
    "fmt_seconds",
    "kill_group",
    "machine",
    "prepare",
    "print_table",
    "resolve_lines",
    "run_events",
    "run_worker",
    "warm_up",
    "write_json",
]


def discover_lines() -> dict[str, str]:
    """Map each client line found in the nox virtual environments to its interpreter.

    Looks at ``.nox/lines/<line>`` (made by the ``bench`` and ``evidence`` sessions) and at
    every other ``.nox/<session>`` (the ``tests`` sessions), and asks each interpreter for its
    pyspark version: the version installed, not the folder's name, decides the line.
    """
    found: dict[str, str] = {}
    candidates = sorted(REPO.glob(".nox/lines/*/bin/python")) + sorted(
        REPO.glob(".nox/*/bin/python")
    )
    for python in candidates:
        if "_spark-server" in str(python) or "lint" in python.parent.parent.name:
            continue
        probe = subprocess.run(
            [str(python), "-c", "import pyspark.version as v; print(v.__version__)"],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        version = probe.stdout.strip()
        if probe.returncode != 0 or not version:
            continue
        line = ".".join(version.split(".")[:2])
        # The first candidate wins: .nox/lines/ holds exactly one line's client and this
        # package, nothing else.
        found.setdefault(line, str(python))
    return dict(sorted(found.items(), key=lambda item: [int(p) for p in item[0].split(".")]))


def benchmark_parser(description: str, results: str) -> argparse.ArgumentParser:
    """A benchmark's argument parser, with the options every one takes: ``--line LINE=PYTHON``
    and ``--json``, by default ``results`` in benchmarks/results/."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--json", type=Path, default=RESULTS / results, help="where to write the results"
    )
    parser.add_argument(
        "--line",
        action="append",
        default=[],
        metavar="LINE=PYTHON",
        help="a client line and the interpreter that has it (repeatable); default: the nox "
        "virtual environments",
    )
    return parser


def resolve_lines(parser: argparse.ArgumentParser, items: Sequence[str]) -> dict[str, str]:
    """The ``--line`` arguments as a mapping, or the discovered lines; exit if there are none."""
    lines: dict[str, str] = {}
    for item in items:
        line, sep, python = item.partition("=")
        if not sep or not line or not python:
            parser.error(f"--line wants LINE=PYTHON, got {item!r}")
        lines[line] = python
    if not lines:
        lines = discover_lines()
    if not lines:
        parser.error("no client line found: pass --line 4.1=/path/to/python, or run nox first")
    return lines


def prepare(
    parser: argparse.ArgumentParser, args: argparse.Namespace, what: str
) -> tuple[dict[str, str], Path, dict[str, Any]]:
    """The client lines to measure, the server's Spark jars and the machine, described on stderr
    as the one ``what`` runs on; a usage error if there are no lines or no jars."""
    lines = resolve_lines(parser, args.line)
    home = find_spark_home()
    if home is None:
        parser.error("no Spark jars: set PYSPARK_SAFESTOP_SPARK_HOME to a pyspark 4.3 folder")
    info = machine()
    print(f"{what} on {describe_machine(info)}", file=sys.stderr, flush=True)
    return lines, home, info


def print_table(
    title: str,
    header: Sequence[str],
    rows: Iterable[Sequence[str]],
    info: Mapping[str, Any] | None = None,
) -> None:
    """Print a Markdown table under its title; with ``info``, the title ends by naming the
    machine."""
    print(f"\n{title}; {describe_machine(info)}\n" if info is not None else f"\n{title}\n")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |")


def machine() -> dict[str, Any]:
    """Describe the machine the figures were measured on (printed and stored with them)."""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for text in Path("/proc/cpuinfo").read_text().splitlines():
            if text.startswith("model name"):
                cpu = text.split(":", 1)[1].strip()
                break
    memory_gib: float | None = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for text in Path("/proc/meminfo").read_text().splitlines():
            if text.startswith("MemTotal:"):
                memory_gib = round(int(text.split()[1]) / 1024 / 1024, 1)
    java = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        probe = subprocess.run(
            ["java", "-version"], capture_output=True, text=True, check=False, timeout=30
        )
        java = (
            (probe.stderr or probe.stdout).splitlines()[0] if probe.stderr or probe.stdout else ""
        )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": memory_gib,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "java": java,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
    }


def describe_machine(info: Mapping[str, Any], *, with_load: bool = True) -> str:
    """One line naming the machine, for the head of every printed table."""
    text = (
        f"{info['cores']} cores ({info['cpu']}), {info['memory_gib']} GiB, {info['os']}, "
        f"Python {info['python']}, {info['java']}"
    )
    return text + (f", load average at start {info['load_average']}" if with_load else "")


def publish(
    path: Path,
    title: str,
    *,
    header: Sequence[str],
    rows: Iterable[Sequence[str]],
    info: Mapping[str, Any],
    runs: Any,
) -> int:
    """Print the table and write the runs, with the machine, as JSON; the exit status (0)."""
    print_table(title, header, rows, info)
    write_json(path, {"machine": info, "runs": runs})
    return 0


def write_json(path: Path, payload: Any) -> None:
    """Write results as JSON, creating the folder (benchmarks/results/ is not versioned)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1, default=str))


def fmt_seconds(seconds: float | None) -> str:
    """A duration as people read it: ``3.2 ms``, ``0.41 s``, ``12 s``."""
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms" if seconds >= 0.01 else f"{seconds * 1000:.1f} ms"
    return f"{seconds:.1f} s" if seconds < 100 else f"{seconds:.0f} s"


def warm_up(python: str, url: str) -> None:
    """Run a few queries on a fresh server so that no measured run pays for its warm-up.

    With the shim on, so that its interpreter's exit cannot hang; what it shows is not used.
    """
    run_case(WARM_UP, url, shim=True, python=python)


def run_worker(
    python: str, code: str, *args: str, env: Mapping[str, str], timeout: float
) -> dict[str, Any]:
    """Run ``python -c code *args`` and return the JSON object on the last line it prints;
    exit naming the failure (the end of its stderr) if it fails."""
    proc = subprocess.run(
        [python, "-c", code, *args],
        capture_output=True,
        text=True,
        env=dict(env),
        timeout=timeout,
        check=False,
    )
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        raise SystemExit(
            f"{python} -c ... {' '.join(args)} failed (status {proc.returncode}):\n"
            f"{proc.stderr[-3000:]}"
        )
    result: dict[str, Any] = json.loads(lines[-1])
    return result
