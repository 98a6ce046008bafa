"""What the evidence benchmarks share: finding the client lines' interpreters, describing the
machine, running a scenario script with a hard timeout, and formatting durations.

Nothing here imports pyspark: the benchmarks run in one interpreter and drive each client line
in its own (``--line 4.1=/path/to/python``), so every line is measured against the same server.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"

if str(REPO) not in sys.path:
    # The benchmarks are run as scripts from a clone: the package and the test helpers (the
    # fault proxy) are imported from the work tree, not from an installed copy.
    sys.path.insert(0, str(REPO))

__all__ = [
    "REPO",
    "RESULTS",
    "Run",
    "add_line_arguments",
    "child_env",
    "describe_machine",
    "discover_lines",
    "fmt_seconds",
    "kill_group",
    "machine",
    "resolve_lines",
    "run_events",
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


def add_line_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``--line LINE=PYTHON`` option every benchmark takes."""
    parser.add_argument(
        "--line",
        action="append",
        default=[],
        metavar="LINE=PYTHON",
        help="a client line and the interpreter that has it (repeatable); default: the nox "
        "virtual environments",
    )


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


def child_env(*, shim: bool, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a measured interpreter: the work tree importable, the shim on or off.

    ``PYSPARK_SAFESTOP=0`` turns the ``import pyspark_safestop`` at the top of every worker
    (as at the top of a user's conftest) into a no-op, which gives upstream's behaviour.
    """
    env = dict(os.environ)
    env.update(extra or {})
    env["PYSPARK_SAFESTOP"] = "1" if shim else "0"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def kill_group(proc: subprocess.Popen[Any]) -> None:
    """Kill a child started with ``start_new_session`` and everything it started, then reap it.

    The child leads its own process group, so this reaches its children (a forked copy, a
    pytest-xdist worker) and nothing that is not ours.
    """
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@dataclass
class Run:
    """One scenario run: the events it printed (with arrival times) and how it ended."""

    label: str
    #: The exit status, or None when it was still running at the timeout (and was killed).
    returncode: int | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    elapsed: float = 0.0
    #: Seconds from the last event to the process's exit (None if it never exited).
    exit_delay: float | None = None
    stderr_tail: str = ""

    @property
    def hung(self) -> bool:
        """Whether the run was still going at its timeout."""
        return self.returncode is None

    def find(self, name: str, **match: Any) -> dict[str, Any] | None:
        """The first event called ``name`` whose fields equal ``match``."""
        for event in self.events:
            if event.get("event") == name and all(event.get(k) == v for k, v in match.items()):
                return event
        return None

    def all(self, name: str) -> list[dict[str, Any]]:
        """Every event called ``name``."""
        return [event for event in self.events if event.get("event") == name]


def run_events(
    python: str,
    script: Path,
    args: Sequence[str],
    *,
    shim: bool,
    timeout: float,
    startup_timeout: float = 120.0,
    env: Mapping[str, str] | None = None,
    on_checkpoint: Mapping[str, Callable[[], None]] | None = None,
    label: str = "",
    stderr_path: Path | None = None,
) -> Run:
    """Run ``python script *args``, reading one JSON event per line as it is printed.

    The script may take ``startup_timeout`` seconds to print its first line (importing
    pyspark on a loaded machine is slow), then ``timeout`` seconds more, not counting the time
    the actions run at its checkpoints take; past that it is called hung and its process group
    is killed. A ``checkpoint`` event runs the action of that name, then writes ``go`` to the
    script's standard input.
    """
    run = Run(label or f"{script.name} {' '.join(args)}")
    lines: queue.Queue[tuple[float, str | None]] = queue.Queue()
    started = time.monotonic()
    with open(stderr_path or os.devnull, "w") as err:
        proc = subprocess.Popen(
            [python, str(script), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=child_env(shim=shim, extra=env),
            start_new_session=True,
        )

        def read() -> None:
            assert proc.stdout is not None
            for text in proc.stdout:
                lines.put((time.monotonic(), text))
            lines.put((time.monotonic(), None))

        threading.Thread(target=read, daemon=True).start()
        deadline = started + startup_timeout
        first = True
        last_at = started
        try:
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    arrived, text = lines.get(timeout=remaining)
                except queue.Empty:
                    break
                if text is None:
                    break
                if first:
                    deadline, first = arrived + timeout, False
                last_at = arrived
                try:
                    event = json.loads(text)
                except ValueError:
                    continue
                event["arrived"] = round(arrived - started, 3)
                run.events.append(event)
                if event.get("event") == "checkpoint":
                    action_started = time.monotonic()
                    action = (on_checkpoint or {}).get(str(event.get("name", "")))
                    if action is not None:
                        action()
                    # The harness's own work does not count against the script.
                    deadline += time.monotonic() - action_started
                    assert proc.stdin is not None
                    with contextlib.suppress(OSError):
                        proc.stdin.write("go\n")
                        proc.stdin.flush()
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                run.returncode = proc.returncode
                run.exit_delay = round(time.monotonic() - last_at, 3)
            except subprocess.TimeoutExpired:
                kill_group(proc)
        finally:
            # Once the child is reaped its PID (and so its group's ID) may be reused by
            # anyone's process: the group is signalled only while the child is unreaped.
            if proc.poll() is None:
                kill_group(proc)
            for stream in (proc.stdin, proc.stdout):
                with contextlib.suppress(OSError):
                    if stream is not None:
                        stream.close()
    run.elapsed = round(time.monotonic() - started, 3)
    if stderr_path is not None:
        with contextlib.suppress(OSError):
            run.stderr_tail = "\n".join(stderr_path.read_text(errors="replace").splitlines()[-40:])
    return run


def warm_up(python: str, url: str) -> None:
    """Run a few queries on a fresh server so that no measured run pays for its warm-up.

    Best effort and bounded; with the shim on, so that its interpreter's exit cannot hang.
    """
    proc = subprocess.Popen(
        [python, str(REPO / "benchmarks" / "_warmup.py"), url],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=child_env(shim=True),
        start_new_session=True,
    )
    try:
        proc.wait(timeout=180)
    except subprocess.TimeoutExpired:
        kill_group(proc)
