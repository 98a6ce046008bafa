"""Runs a scenario script in a subprocess with a hard timeout and collects what it printed."""

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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCENARIO_SCRIPT = Path(__file__).parent / "scenarios" / "run_scenario.py"
REPO_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Outcome:
    """What one scenario run did: its events (with the harness's arrival times) and its end."""

    label: str
    #: The exit status, or None when it was still running at the timeout (and was killed).
    returncode: int | None
    events: list[dict[str, Any]] = field(default_factory=list)
    elapsed: float = 0.0
    #: Seconds from the last event line to the process's exit (None if it never exited).
    exit_delay: float | None = None
    stderr_tail: str = ""

    @property
    def hung(self) -> bool:
        return self.returncode is None

    def find(self, name: str, **match: Any) -> dict[str, Any] | None:
        for event in self.events:
            if event.get("event") == name and all(event.get(k) == v for k, v in match.items()):
                return event
        return None

    def describe(self) -> str:
        end = "killed at the timeout (hung)" if self.hung else f"exit status {self.returncode}"
        lines = [f"{self.label}: {end} after {self.elapsed:.1f} s; events:"]
        lines += [f"  {json.dumps(e)}" for e in self.events]
        if self.stderr_tail.strip():
            lines.append("stderr (tail):")
            lines += [f"  {line}" for line in self.stderr_tail.strip().splitlines()[-25:]]
        return "\n".join(lines)


def _kill_group(proc: subprocess.Popen[str]) -> None:
    # The scenario leads its own process group (start_new_session), so this reaches its
    # children too and nothing else.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


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
) -> Outcome:
    """Run scenario ``name`` against ``url``, with or without the shim.

    The run may take ``startup_timeout`` seconds to print its first line (importing pyspark
    under load is slow) and then ``timeout`` seconds more; after that it is called hung and
    its process group is killed.
    """
    child_env = dict(os.environ)
    child_env.update(env or {})
    child_env["PYSPARK_SAFESTOP"] = "1" if shim else "0"
    child_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO_ROOT), child_env.get("PYTHONPATH", "")) if p
    )
    child_env.setdefault("PYTHONUNBUFFERED", "1")
    stderr_file = stderr_path or Path(os.devnull)
    outcome = Outcome(label or f"{name} ({'shim' if shim else 'upstream'})", None)
    lines: queue.Queue[tuple[float, str | None]] = queue.Queue()
    started = time.monotonic()
    with open(stderr_file, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, str(SCENARIO_SCRIPT), name, url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env=child_env,
            start_new_session=True,
        )

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.put((time.monotonic(), line))
            lines.put((time.monotonic(), None))

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        deadline = started + startup_timeout
        last_line_at = started
        eof = False
        try:
            while not eof:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    arrived, line = lines.get(timeout=remaining)
                except queue.Empty:
                    break
                if line is None:
                    eof = True
                    break
                if last_line_at == started:
                    deadline = arrived + timeout
                last_line_at = arrived
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                event["arrived"] = round(arrived - started, 3)
                outcome.events.append(event)
                if event.get("event") == "checkpoint":
                    action = (on_checkpoint or {}).get(event.get("name", ""))
                    if action is not None:
                        action()
                    assert proc.stdin is not None
                    proc.stdin.write("go\n")
                    proc.stdin.flush()
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                outcome.returncode = proc.returncode
                outcome.exit_delay = round(time.monotonic() - last_line_at, 3)
            except subprocess.TimeoutExpired:
                _kill_group(proc)
        finally:
            if proc.poll() is None:
                _kill_group(proc)
            for stream in (proc.stdin, proc.stdout):
                try:
                    if stream is not None:
                        stream.close()
                except OSError:
                    pass
    outcome.elapsed = round(time.monotonic() - started, 3)
    if stderr_path is not None:
        outcome.stderr_tail = "\n".join(stderr_path.read_text(errors="replace").splitlines()[-40:])
    return outcome
