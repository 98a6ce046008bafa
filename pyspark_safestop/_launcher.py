"""Run a server process for exactly as long as its owner lives.

``python -I -S _launcher.py GRACE WORKDIR -- COMMAND...``, started by
:func:`pyspark_safestop._local_server.spawn_launcher`; it moves to a session of its own:

- stdin is the read end of a pipe whose write end only the owner holds. End of file (the owner
  called ``stop()``, exited, or died, SIGKILL included) stops the server: SIGTERM to its process
  group, SIGKILL after GRACE seconds. SIGTERM to this process does the same.
- the server (COMMAND, run in WORKDIR, in a process group of its own) gets SIGKILL from the
  kernel if this process dies first (``PR_SET_PDEATHSIG``).
- stdout receives the server's PID, one line, then is closed.
- stderr is the log; the server writes its stdout and stderr there.
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


def _wait_exited(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not _exited(pid):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
    return True


def _killpg(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


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
    try:
        server = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=2,
            stderr=2,
            cwd=workdir,
            start_new_session=True,
            # Safe here: this process has no other thread.
            preexec_fn=lambda: _die_with(me, prctl),  # noqa: PLW1509
        )
    except OSError as error:
        print(f"cannot start {command[0]}: {error}", file=sys.stderr)
        shutil.rmtree(workdir, ignore_errors=True)
        return 127
    pid = server.pid
    with contextlib.suppress(OSError):  # the owner stopped reading: end of file follows
        os.write(1, f"{pid}\n".encode())
    os.close(1)

    while not _stop_requested and not _exited(pid):
        try:
            readable, _, _ = select.select([0], [], [], _POLL_SECONDS)
        except InterruptedError:
            continue
        if readable and not os.read(0, 4096):
            break  # end of file: the owner is gone or asks to stop

    if not _exited(pid):
        _killpg(pid, signal.SIGTERM)
        if not _wait_exited(pid, grace):
            _killpg(pid, signal.SIGKILL)
            _wait_exited(pid, 60.0)
    # What the server started in its group (Python workers) must not outlive it either.
    _killpg(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    server.returncode = os.waitstatus_to_exitcode(status)
    shutil.rmtree(workdir, ignore_errors=True)
    code = server.returncode
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
