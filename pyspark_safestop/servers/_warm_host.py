"""The host of one warm server (see :mod:`._warm`): ``python -m`` this module with its folder.

It forks itself free of the process that started it (which waits only for that), starts the
server as the request in its folder says, publishes it as a run's shared server is published
(:class:`._shared.SharedServerHost`, restarts included), and stops it when it has been idle for
its idle time, when its folder's files or its installation are gone, when the server cannot
start or keeps dying, or on SIGTERM, SIGINT or SIGHUP. The server's launcher holds a pipe from
this process: a SIGKILLed host takes its server with it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType

import psutil

from ._engines import make_server
from ._local import LocalServer, ServerRequest
from ._shared import ERROR_RECORD, SERVER_RECORD, SharedServerHost, read_private, write_private
from ._supervisor import Supervisor
from ._warm import (
    HOST_RECORD,
    LAST_USED,
    REQUEST_RECORD,
    START_LOCK,
    USERS_LOCK,
    clear_records,
    lock,
)

logger = logging.getLogger("pyspark_safestop")

#: Seconds between two looks at the server, its users and its files.
_TICK = 1.0
#: Seconds between two updates of the ``last-used`` file while in use.
_TOUCH_EVERY = 5.0


def _has_clients(server: LocalServer) -> bool:
    """Whether a client holds a connection to the server (a session open on it)."""
    try:
        proc = psutil.Process(server.pid)
        connections = getattr(proc, "net_connections", None) or proc.connections
        return any(
            conn.status == psutil.CONN_ESTABLISHED and conn.laddr and conn.laddr.port == server.port
            for conn in connections(kind="tcp")
        )
    except (psutil.Error, RuntimeError):
        return False


def _users_attached(users_fd: int) -> bool:
    try:
        fcntl.flock(users_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    fcntl.flock(users_fd, fcntl.LOCK_UN)
    return False


class WarmHost:
    """Hosts the server its folder asks for until there is a reason to stop; see the module."""

    def __init__(self, folder: Path) -> None:
        """Read the request in ``folder``; nothing is started yet."""
        self.folder = folder
        text = read_private(folder / REQUEST_RECORD)
        if text is None:
            raise RuntimeError(f"no {REQUEST_RECORD} in {folder}")
        self.payload = json.loads(text)
        self.idle = float(self.payload["idle"])
        self._stop = threading.Event()
        self._reason = ""

    def _build(self, log_path: Path) -> LocalServer:
        asked = self.payload["request"]
        request = ServerRequest(
            log_path=log_path,
            start_timeout=float(asked["start_timeout"]),
            conf=asked["conf"],
            spark_home=asked["spark_home"],
            sail_executable=asked["sail_executable"],
            master=asked["master"],
        )
        return make_server(self.payload["engine"], request)

    def stop(self, reason: str) -> None:
        """Ask the host to stop its server and end (from a signal handler too)."""
        if not self._stop.is_set():
            self._reason = reason
            self._stop.set()

    def run(self) -> int:
        """Host the server until a reason to stop; return the exit status."""
        me = psutil.Process()
        record = {
            "pid": os.getpid(),
            "create_time": me.create_time(),
            "engine": self.payload["engine"],
            "fingerprint": self.payload["fingerprint"],
            "setup": self.payload["setup"],
            "idle": self.idle,
            "started": time.time(),
        }
        write_private(self.folder / HOST_RECORD, json.dumps(record))
        (self.folder / LAST_USED).touch(mode=0o600)
        supervisor = Supervisor(int(self.payload["restarts"]))
        host = SharedServerHost(self.folder, self._build, supervisor)
        users_fd = os.open(self.folder / USERS_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        last_used = time.monotonic()
        touched = 0.0
        try:
            while not self._stop.wait(_TICK):
                server = host.server
                reason = self._reason_to_stop(server, supervisor)
                if reason:
                    self.stop(reason)
                    break
                now = time.monotonic()
                if _users_attached(users_fd) or (
                    server is not None and server.running and _has_clients(server)
                ):
                    last_used = now
                    if now - touched > _TOUCH_EVERY:
                        touched = now
                        os.utime(self.folder / LAST_USED)
                elif now - last_used > self.idle:
                    # Held until the end: a run attaching now waits, then starts another.
                    try:
                        fcntl.flock(users_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        continue
                    self.stop(f"idle for {self.idle:g} s")
        finally:
            logger.info("warm server host stopping: %s", self._reason or "interrupted")
            # Withdrawn first: a run looking now sees no server rather than a stopping one.
            with contextlib.suppress(FileNotFoundError):
                (self.folder / HOST_RECORD).unlink()
            host.close()
            supervisor.close()
            self._remove_folder()
            os.close(users_fd)
        return 0

    def _reason_to_stop(self, server: LocalServer | None, supervisor: Supervisor) -> str:
        if not (self.folder / HOST_RECORD).exists() or not (self.folder / USERS_LOCK).exists():
            return "its files were removed"
        if (self.folder / ERROR_RECORD).exists():
            return "its server could not start"
        if server is None:
            return ""
        installation = server.installation()
        if installation is not None and not installation.exists():
            return f"its installation {installation} is gone"
        given_up = supervisor.given_up(server)
        if given_up:
            return f"its server keeps dying: {given_up}"
        record = read_private(self.folder / SERVER_RECORD)
        if record is not None and json.loads(record).get("state") == "dead":
            return "its server died"
        return ""

    def _remove_folder(self) -> None:
        # Not while a run is attaching: it holds the start lock, and will find the records
        # gone and start another host. A failed start leaves its error for the run to read.
        if (self.folder / ERROR_RECORD).exists():
            return
        try:
            fd = lock(self.folder / START_LOCK, fcntl.LOCK_EX, time.monotonic() + 10.0)
        except (TimeoutError, OSError, ValueError):
            with contextlib.suppress(OSError):
                clear_records(self.folder)
            return
        try:
            shutil.rmtree(self.folder, ignore_errors=True)
        finally:
            os.close(fd)


def main(argv: list[str]) -> int:
    """Fork free of the starting process, then host the server of the folder ``argv[1]``."""
    folder = Path(argv[1])
    if os.fork() > 0:
        os._exit(0)  # the starter waits only for this
    os.setsid()  # no terminal's signals, nor the starter's process group's
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr
    )
    host = WarmHost(folder)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        host.stop(f"signal {signal.Signals(signum).name}")

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(signum, on_signal)
    return host.run()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
