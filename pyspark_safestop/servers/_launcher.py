"""Run a server process for exactly as long as its owner lives.

``python -I -S _launcher.py GRACE WORKDIR -- COMMAND...``, started by
:func:`pyspark_safestop.servers._local.spawn_launcher`; it moves to a session of its own:

- stdin is the read end of a pipe whose write end only the owner holds. End of file (the owner
  called ``stop()``, exited, or died, SIGKILL included) stops the server: SIGTERM to its process
  group, SIGKILL after GRACE seconds. SIGTERM to this process does the same.
- the server (COMMAND, run in WORKDIR, in a process group of its own) gets SIGKILL from the
  kernel if this process dies first (``PR_SET_PDEATHSIG``).
- stdout receives the server's PID, one line, then is closed.
- stderr is the log; the server writes its stdout and stderr there. When ``REDACT_VAR`` names
  a variable of the environment (a server's token), the server's output goes through this
  process, which writes that value as ``<redacted>``: Spark's Python workers print URLs
  holding the token (``foreachBatch``), and the log's tail reaches test reports.
- at the end WORKDIR is removed and this process exits with the server's status.

Standard library only, run as a file (``-I -S``): nothing of the environment is imported.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from typing import Any

_PR_SET_PDEATHSIG = 1
_POLL_SECONDS = 0.2
#: The variable naming the variable whose value never reaches the log.
REDACT_VAR = "PYSPARK_SAFESTOP_LAUNCHER_REDACT"
_REDACTED = b"<redacted>"
#: Seconds the server's output is still copied after it exited (its children may hold it).
_DRAIN_SECONDS = 2.0

_stop_requested = False


def _request_stop(signum: int, frame: object) -> None:
    global _stop_requested
    _stop_requested = True


def _die_with(parent: int, prctl: Any) -> None:
    """In the forked child, before exec: die when ``parent`` (this launcher) dies.

    The parent-death signal follows the thread that forked; this launcher forks from its only
    (main) thread, which lives as long as the launcher does.
    """
    if prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        os._exit(126)
    if os.getppid() != parent:  # the launcher died before the signal was armed
        os._exit(126)


def _exited(pid: int) -> bool:
    # WNOWAIT: the exited server stays a zombie, so its PID, and the process group ID, cannot
    # be reused before the group's stragglers are signalled.
    return os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None


def _wait_exited(pid: int, seconds: float, redactor: _Redactor | None = None) -> bool:
    deadline = time.monotonic() + seconds
    while not _exited(pid):
        if time.monotonic() >= deadline:
            return False
        _copy_output(redactor, 0.05)  # a server writing as it stops must not block on us
    return True


def _copy_output(redactor: _Redactor | None, seconds: float) -> None:
    """Copy the server's output for up to ``seconds`` (sleep, when it goes straight to the
    log)."""
    if redactor is None or redactor.done:
        time.sleep(seconds)
        return
    with contextlib.suppress(InterruptedError):
        if select.select([redactor.source], [], [], seconds)[0]:
            redactor.pump()


def _killpg(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class _Redactor:
    """Copies the server's output to the log with ``secret`` replaced, even split across
    reads: an end of a read that may begin the secret waits for the next one."""

    def __init__(self, source: int, secret: bytes, sink: int = 2) -> None:
        self.source = source
        self.sink = sink
        self.done = False
        self._secret = secret
        self._pending = b""

    def pump(self) -> bool:
        """Copy what is there; return whether more may come."""
        try:
            data = os.read(self.source, 65536)
        except OSError:
            data = b""
        if not data:
            self._write(self._pending)
            self._pending = b""
            self.done = True
            return False
        text = (self._pending + data).replace(self._secret, _REDACTED)
        # Held back: only an end that may be the start of the secret, whose rest comes next.
        keep = next(
            (n for n in range(min(len(self._secret) - 1, len(text)), 0, -1)
             if self._secret.startswith(text[-n:])),
            0,
        )  # fmt: skip
        self._pending = text[len(text) - keep :]
        self._write(text[: len(text) - keep])
        return True

    def _write(self, data: bytes) -> None:
        with contextlib.suppress(OSError):
            while data:
                data = data[os.write(self.sink, data) :]


def main(argv: list[str]) -> int:
    """Run the server until end of file on stdin, SIGTERM, or its own exit; return its status."""
    if len(argv) < 4 or argv[2] != "--":
        print("usage: _launcher.py GRACE WORKDIR -- COMMAND...", file=sys.stderr)
        return 2
    grace = float(argv[0])
    workdir = argv[1]
    command = argv[3:]
    # Started by posix_spawn, with the owner's descriptors, folder and session (see
    # spawn_launcher): keep none of them.
    for name in os.listdir("/proc/self/fd"):
        if int(name) > 2:
            with contextlib.suppress(OSError):  # listdir's own, already closed
                os.close(int(name))
    os.chdir(workdir)
    os.setsid()  # a Ctrl-C in the owner's terminal reaches the owner, which stops us in order
    signal.signal(signal.SIGTERM, _request_stop)
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before fork, not in the child
    me = os.getpid()
    secret = os.environ.get(os.environ.get(REDACT_VAR, ""), "").encode()
    output = 2
    redactor = None
    if secret:
        read_end, output = os.pipe()
        redactor = _Redactor(read_end, secret)
    try:
        server = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=output,
            cwd=workdir,
            start_new_session=True,
            # Safe here: this process has no other thread.
            preexec_fn=lambda: _die_with(me, prctl),  # noqa: PLW1509
        )
    except OSError as error:
        print(f"cannot start {command[0]}: {error}", file=sys.stderr)
        shutil.rmtree(workdir, ignore_errors=True)
        return 127
    if redactor is not None:
        os.close(output)  # the server's copy is its own: end of file when it and its children end
    pid = server.pid
    with contextlib.suppress(OSError):  # the owner stopped reading: end of file follows
        os.write(1, f"{pid}\n".encode())
    os.close(1)

    while not _stop_requested and not _exited(pid):
        watched = [0] if redactor is None or redactor.done else [0, redactor.source]
        try:
            readable, _, _ = select.select(watched, [], [], _POLL_SECONDS)
        except InterruptedError:
            continue
        if redactor is not None and redactor.source in readable:
            redactor.pump()
        if 0 in readable and not os.read(0, 4096):
            break  # end of file: the owner is gone or asks to stop

    if not _exited(pid):
        _killpg(pid, signal.SIGTERM)
        if not _wait_exited(pid, grace, redactor):
            _killpg(pid, signal.SIGKILL)
            _wait_exited(pid, 60.0, redactor)
    # What the server started in its group (Python workers) must not outlive it either.
    _killpg(pid, signal.SIGKILL)
    deadline = time.monotonic() + _DRAIN_SECONDS
    while redactor is not None and not redactor.done and time.monotonic() < deadline:
        _copy_output(redactor, 0.1)
    _, status = os.waitpid(pid, 0)
    server.returncode = os.waitstatus_to_exitcode(status)
    shutil.rmtree(workdir, ignore_errors=True)
    code = server.returncode
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
