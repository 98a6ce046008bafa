"""The parent side of a scenario: run it in its own interpreter and read what it printed.

:func:`run_events` starts a command that prints one JSON event per line (a scenario of
:mod:`pyspark_safestop.testing.scenarios`, a benchmark's worker) in its own process group, with
the shim on or off (:func:`child_env`), collects its events as they come, and kills the group
(:func:`kill_group`) when the run is over its time. Given the frames where upstream hangs
(``hangs_in``), it also ends the run as soon as the child's watchdog shows a thread parked
there: a hang proved by its stack instead of waited out.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyspark_safestop
from pyspark_safestop.testing.preloaded import ForkedChild, Preloaded

__all__ = [
    "HangSignature",
    "Run",
    "child_env",
    "kill_group",
    "parked_in",
    "run_events",
    "scenario_command",
]

#: Frames (``module.qualname`` fragments, outermost first) that one thread's stack must show,
#: in this order, to prove it parked where upstream hangs.
HangSignature = tuple[str, ...]


def _package_root() -> str | None:
    """The folder to put on a child's ``PYTHONPATH`` so that it imports this very copy of the
    package; ``None`` for an installed copy, which the child's environment has its own of."""
    root = Path(pyspark_safestop.__file__).resolve().parent.parent
    if root.name in ("site-packages", "dist-packages"):
        return None
    return str(root)


def child_env(
    *,
    shim: bool,
    extra: Mapping[str, str] | None = None,
    inherit_settings: bool = True,
) -> dict[str, str]:
    """The environment of a child interpreter: this copy of the package importable, the shim
    on or off, ``extra`` on top.

    ``PYSPARK_SAFESTOP=0`` turns the ``import pyspark_safestop`` at the top of a scenario (as
    at the top of a user's conftest) into a no-op, which gives upstream's behaviour. With
    ``inherit_settings=False`` the parent's other ``PYSPARK_SAFESTOP_*`` variables are left
    out.
    """
    env = {
        key: value
        for key, value in os.environ.items()
        if inherit_settings or not key.startswith("PYSPARK_SAFESTOP")
    }
    env.update(extra or {})
    env["PYSPARK_SAFESTOP"] = "1" if shim else "0"
    root = _package_root()
    if root is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def kill_group(proc: subprocess.Popen[Any] | ForkedChild) -> None:
    """Kill a child started with ``start_new_session=True`` (or forked by a
    :class:`~pyspark_safestop.testing.preloaded.Preloaded`) and everything it started, then
    reap it.

    The child leads its own process group, so this reaches its children (a forked copy, a
    pytest-xdist worker) and nothing that is not ours. Call it only while the child is not
    yet reaped: after that its ID may belong to anyone.
    """
    if isinstance(proc, ForkedChild):
        proc.kill_group()
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def scenario_command(python: str, name: str, url: str, *, watchdog: float = 0.0) -> list[str]:
    """The command running scenario ``name`` against ``url`` with interpreter ``python``."""
    command = [python, "-m", "pyspark_safestop.testing.scenarios", name, url]
    return [*command, f"--watchdog={watchdog:g}"] if watchdog > 0 else command


def parked_in(
    stacks: Sequence[Mapping[str, Any]], signatures: Sequence[HangSignature]
) -> dict[str, Any] | None:
    """The first thread of a ``stacks`` event whose frames show one of ``signatures``."""
    for stack in stacks:
        frames = [str(f) for f in stack.get("frames", ())]
        for signature in signatures:
            at = 0
            for frame in frames:
                if at < len(signature) and signature[at] in frame:
                    at += 1
            if signature and at == len(signature):
                return {
                    "thread": stack.get("thread"),
                    "signature": list(signature),
                    "frames": frames,
                }
    return None


_DUMP_THREAD = re.compile(r"^(?:Current thread|Thread) (0x[0-9a-fA-F]+)")
_DUMP_FRAME = re.compile(r'^  File "(.+)", line (\d+) in (.+)$')
_LIBRARY_DIR = re.compile(r"^.*?/(?:site-packages|dist-packages|lib/python3\.\d+)/")


class _NativeDump:
    """Reads the dumps of :mod:`faulthandler` (printed among the events, at the child's exit)
    into the form of a ``stacks`` event's threads: they show where no Python thread runs any
    more, in the interpreter's final garbage collection."""

    def __init__(self) -> None:
        self._thread: str | None = None
        self._frames: list[str] = []

    def feed(self, line: str) -> dict[str, Any] | None:
        """Take one line; return a thread's stack once its block is over."""
        frame = _DUMP_FRAME.match(line.rstrip("\n"))
        if frame is not None and self._thread is not None:
            path, lineno, function = frame.groups()
            module = _LIBRARY_DIR.sub("", path.replace("\\", "/")).removesuffix(".py")
            self._frames.append(f"{module.replace('/', '.')}.{function}:{lineno}")
            return None
        if line.strip() == "Garbage-collecting" and self._thread is not None:
            self._frames.append("<garbage collection>")
            return None
        done = None
        if self._thread is not None:
            # faulthandler prints the innermost frame first.
            done = {"thread": self._thread, "daemon": False, "frames": self._frames[::-1]}
            self._thread, self._frames = None, []
        head = _DUMP_THREAD.match(line)
        if head is not None:
            self._thread = head.group(1)
        return done


@dataclass
class Run:
    """One run: the events it printed (with arrival times) and how it ended."""

    label: str
    #: The exit status; None when it was killed (hung: over its time, or parked for good).
    returncode: int | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    elapsed: float = 0.0
    #: Seconds from the last event to the process's exit (None if it never exited).
    exit_delay: float | None = None
    stderr_tail: str = ""
    #: The thread and frames that proved a hang (None: not proved by a stack).
    parked: dict[str, Any] | None = None
    #: The timeout the run was held to, once it had started.
    timeout: float = 0.0

    @property
    def hung(self) -> bool:
        """Whether the run was killed: still going at its timeout, or parked for good."""
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

    def how_it_hung(self) -> str:
        """Why the run counts as hung, in words ("" if it did not hang)."""
        if not self.hung:
            return ""
        if self.parked is not None:
            inner = " > ".join(self.parked["signature"])
            return f"hung: thread {self.parked['thread']!r} parked in {inner}"
        return f"hung: still running {self.timeout:.0f} s after it started"

    def describe(self) -> str:
        """The run's end and every event it printed, for an assertion message."""
        end = self.how_it_hung() or f"exit status {self.returncode}"
        lines = [f"{self.label}: {end}, after {self.elapsed:.1f} s; events:"]
        for event in self.events:
            if event.get("event") == "stacks":
                lines.append(f"  stacks after {event.get('quiet')} s quiet:")
                for stack in event.get("threads", ()):
                    lines.append(f"    {stack['thread']}: {' > '.join(stack['frames'][-8:])}")
            else:
                lines.append(f"  {json.dumps(event)}")
        if self.stderr_tail.strip():
            lines.append("stderr (tail):")
            lines += [f"  {line}" for line in self.stderr_tail.strip().splitlines()[-25:]]
        return "\n".join(lines)


def run_events(
    command: Sequence[str],
    *,
    shim: bool,
    timeout: float,
    startup_timeout: float = 120.0,
    env: Mapping[str, str] | None = None,
    on_checkpoint: Mapping[str, Callable[[], None]] | None = None,
    hangs_in: Sequence[HangSignature] = (),
    label: str = "",
    stderr_path: Path | None = None,
    preloaded: Preloaded | None = None,
) -> Run:
    """Run ``command``, reading one JSON event per line as it is printed.

    The command may take ``startup_timeout`` seconds to print its first line (importing
    pyspark on a loaded machine is slow), then ``timeout`` seconds more, not counting the time
    the actions at its checkpoints take; past that it is called hung and its process group is
    killed. A ``checkpoint`` event runs the action of that name, then writes ``go`` to the
    command's standard input. A ``stacks`` event (the watchdog's), or a :mod:`faulthandler`
    dump, with a thread parked in one of ``hangs_in`` ends the run at once, as hung, with that
    thread in :attr:`Run.parked`.

    With ``preloaded``, a ``[python, "-m", module, *args]`` command whose ``python`` is the
    preloaded one runs as a child forked from it rather than as a fresh interpreter.
    """
    if not timeout > 0:
        raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
    run = Run(label or " ".join(command[1:]), timeout=timeout)
    lines: queue.Queue[tuple[float, str | None]] = queue.Queue()
    started = time.monotonic()
    with open(stderr_path or os.devnull, "w") as err:
        proc: subprocess.Popen[str] | ForkedChild
        if preloaded is None:
            proc = subprocess.Popen(
                list(command),
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                env=child_env(shim=shim, extra=env),
                start_new_session=True,
            )
        else:
            if list(command[:2]) != [preloaded.python, "-m"] or len(command) < 3:
                raise ValueError(
                    f"a preloaded run is `{preloaded.python} -m MODULE ...`, got {command!r}"
                )
            proc = preloaded.spawn(
                command[2],
                command[3:],
                env=child_env(shim=shim, extra=env),
                stderr=err.fileno(),
                timeout=startup_timeout,
            )

        def read() -> None:
            assert proc.stdout is not None
            for text in proc.stdout:
                lines.put((time.monotonic(), text))
            lines.put((time.monotonic(), None))

        threading.Thread(target=read, daemon=True).start()
        deadline = started + startup_timeout
        native = _NativeDump()
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
                try:
                    event = json.loads(text)
                except ValueError:
                    stack = native.feed(text)
                    if stack is not None:
                        run.events.append({"event": "stacks", "native": True, "threads": [stack]})
                        run.parked = parked_in([stack], hangs_in)
                        if run.parked is not None:
                            break
                    continue
                event["arrived"] = round(arrived - started, 3)
                run.events.append(event)
                if event.get("event") == "stacks":
                    run.parked = parked_in(event.get("threads", ()), hangs_in)
                    if run.parked is not None:
                        break
                    continue  # not progress: exit_delay counts from the last real event
                last_at = arrived
                if event.get("event") == "checkpoint":
                    action_started = time.monotonic()
                    action = (on_checkpoint or {}).get(str(event.get("name", "")))
                    if action is not None:
                        action()
                    # The parent's own work does not count against the child.
                    deadline += time.monotonic() - action_started
                    assert proc.stdin is not None
                    with contextlib.suppress(OSError):
                        proc.stdin.write("go\n")
                        proc.stdin.flush()
            if run.parked is None:
                try:
                    proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                    run.returncode = proc.returncode
                    run.exit_delay = round(time.monotonic() - last_at, 3)
                except subprocess.TimeoutExpired:
                    pass
        finally:
            # Once the child is reaped its ID (and its group's) may be reused by anyone's
            # process: the group is signalled only while the child is unreaped.
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
