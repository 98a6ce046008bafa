"""Runs a script that prints one JSON event per line (a regression scenario, a benchmark's
worker) in its own interpreter and process group, with a hard timeout, and collects what it
printed. The benchmarks use it too."""

from __future__ import annotations

import contextlib
import json
import os
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

__all__ = [
    "SCENARIO_SCRIPT",
    "Check",
    "Run",
    "child_env",
    "kill_group",
    "next_session_works",
    "run_events",
    "run_scenario",
    "stop_within",
]

SCENARIO_SCRIPT = Path(__file__).parent / "scenarios" / "run_scenario.py"
REPO = Path(__file__).resolve().parent.parent


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

    def describe(self) -> str:
        """The run's end and every event it printed, for an assertion message."""
        end = "killed at the timeout (hung)" if self.hung else f"exit status {self.returncode}"
        lines = [f"{self.label}: {end} after {self.elapsed:.1f} s; events:"]
        lines += [f"  {json.dumps(e)}" for e in self.events]
        if self.stderr_tail.strip():
            lines.append("stderr (tail):")
            lines += [f"  {line}" for line in self.stderr_tail.strip().splitlines()[-25:]]
        return "\n".join(lines)


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


def run_scenario(
    name: str,
    url: str,
    *,
    shim: bool,
    timeout: float,
    startup_timeout: float = 120.0,
    env: Mapping[str, str] | None = None,
    on_checkpoint: Mapping[str, Callable[[], None]] | None = None,
    label: str | None = None,
    stderr_path: Path | None = None,
) -> Run:
    """Run regression scenario ``name`` against ``url`` with this interpreter, with or without
    the shim (see :func:`run_events` for the timeouts)."""
    return run_events(
        sys.executable,
        SCENARIO_SCRIPT,
        [name, url],
        shim=shim,
        timeout=timeout,
        startup_timeout=startup_timeout,
        env=env,
        on_checkpoint=on_checkpoint,
        label=label or f"{name} ({'shim' if shim else 'upstream'})",
        stderr_path=stderr_path,
    )


# -- checks shared by the regression tests and the fault matrix ---------------------------------

#: A check reads a run and returns what is wrong with it (nothing: it passed).
Check = Callable[[Run], list[str]]


def stop_within(label: str, bound: float) -> Check:
    """The stop labelled ``label`` returned within ``bound`` seconds."""

    def check(run: Run) -> list[str]:
        event = run.find("stopped", label=label)
        if event is None:
            return [f"stop ({label}) never returned"]
        if event.get("returned") is False:
            return [f"stop ({label}) still running after {event['seconds']} s"]
        if event["seconds"] > bound:
            return [f"stop ({label}) took {event['seconds']} s > {bound} s"]
        return []

    return check


def next_session_works(run: Run) -> list[str]:
    """The scenario's last new session ran its first query."""
    return [] if run.find("next_session_ok") else ["the next session's first query never ran"]
