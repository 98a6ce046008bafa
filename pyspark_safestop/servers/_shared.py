"""One server for a whole test run, pytest-xdist workers included, owned by the run's main process.

The main process (the xdist controller, or pytest itself without xdist) hosts it: a
:class:`SharedServerHost` watches a private folder in the run's temporary base, which every
worker can find (``tmp_path_factory.getbasetemp().parent`` in a worker). The first process that
needs the server creates a ``request`` file there; the host starts the server, only then, and
writes its URL, token included, to a 0600 ``server.json``; every process reads it from there
(:func:`wait_for_shared_server`). So the server's launcher pipe is held by the main process:

- a worker that crashes, or is SIGKILLed, takes nothing with it: the others keep the server;
- the run's end, an interrupt included, stops it (:meth:`SharedServerHost.close`);
- the main process SIGKILLed: the launcher sees end of file and stops the server;
- the server dies: the host's supervisor restarts it on the same URL and the record says so
  (``state``: restarting, up, or dead with the reason); workers follow it before each test
  (:meth:`SharedServer.follow`).

A run in which no test needs a server starts none.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..shim import _reachability
from ._local import EngineUnavailable, LocalServer, log_tail_of
from ._supervisor import Death, Supervisor

__all__ = [
    "ERROR_RECORD",
    "FOLDER_NAME",
    "SERVER_RECORD",
    "SharedServer",
    "SharedServerFailed",
    "SharedServerHost",
    "private_folder",
    "read_private",
    "wait_for_shared_server",
    "write_private",
]

logger = logging.getLogger("pyspark_safestop")

#: The folder, in the run's temporary base, where the host and its users meet.
FOLDER_NAME = "pyspark-safestop-shared-server"
_REQUEST = "request"
SERVER_RECORD = "server.json"
ERROR_RECORD = "error.txt"
_LOG = "server.log"
_POLL_SECONDS = 0.05
#: Seconds beyond the start timeout a user waits for the host's answer.
_WAIT_SLACK = 30.0


class SharedServerFailed(RuntimeError):
    """The run's server could not start: ``reason`` is the host's error message;
    ``unavailable`` says that the engine cannot run here (:class:`EngineUnavailable`), where
    a test skips rather than fails."""

    def __init__(self, reason: str, *, unavailable: bool) -> None:
        super().__init__(f"the run's shared server could not start: {reason}")
        self.reason = reason
        self.unavailable = unavailable


@dataclass(frozen=True)
class SharedServer:
    """The run's shared server as its users see it (it is the host's to start and stop)."""

    url: str
    engine: str
    authenticated: bool
    pid: int
    port: int
    log_path: Path
    #: The host's folder, where the record is kept up to date.
    folder: Path

    def follow(self, timeout: float) -> None:
        """Wait (up to ``timeout`` seconds) for a restart of the server under way to end; a
        server given up makes this process's calls to it fail at once with the reason."""
        deadline = time.monotonic() + timeout
        while True:
            shown = read_private(self.folder / SERVER_RECORD)
            state = json.loads(shown) if shown is not None else {}
            if state.get("state") != "restarting" or time.monotonic() > deadline:
                break
            time.sleep(_POLL_SECONDS)
        address = f"127.0.0.1:{self.port}"
        if state.get("state") == "dead":
            _reachability.mark_dead(address, state.get("reason", "the shared server died"))
        elif state.get("state") == "up":
            _reachability.mark_alive(address)

    def log_tail(self, n: int = 80) -> str:
        """Return the last ``n`` lines of the server's log ('' when it cannot be read)."""
        return log_tail_of(self.log_path, n)


def private_folder(folder: Path) -> Path:
    """Create ``folder`` 0700 (or accept it when it is already this user's private folder)."""
    with contextlib.suppress(FileExistsError):
        folder.mkdir(mode=0o700)
    info = folder.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        raise ValueError(f"{str(folder)!r} is not a folder of this user: refusing it")
    if stat.S_IMODE(info.st_mode) & 0o077:
        raise ValueError(f"{str(folder)!r} is open to other users: refusing it")
    return folder


def write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` as a whole (0600, through a new file renamed into place)."""
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(partial, flags, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(partial, path)


def read_private(path: Path) -> str | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, encoding="utf-8") as handle:
        info = os.fstat(handle.fileno())
        if info.st_uid != os.geteuid() or stat.S_IMODE(info.st_mode) & 0o077:
            raise ValueError(f"{str(path)!r} is not this user's private file: refusing it")
        return handle.read()


class SharedServerHost:
    """Starts the run's server when first asked, publishes its URL, stops it at :meth:`close`.

    ``make_server(log_path)`` builds the (unstarted) server; it runs in the host's thread.
    """

    def __init__(
        self,
        folder: Path,
        make_server: Callable[[Path], LocalServer],
        supervisor: Supervisor | None = None,
    ) -> None:
        """Watch ``folder`` (created 0700) for a request; nothing is started yet. The server,
        once started, is restarted by ``supervisor`` when it dies, on the same URL: the
        workers' clients find it again there."""
        self.folder = private_folder(folder)
        self._make_server = make_server
        self._supervisor = supervisor
        self._server: LocalServer | None = None
        self._closed = threading.Event()
        self._thread = threading.Thread(
            target=self._watch, name="pyspark-safestop shared server", daemon=True
        )
        self._thread.start()

    @property
    def server(self) -> LocalServer | None:
        """The server, once a request started it."""
        return self._server

    def _watch(self) -> None:
        request = self.folder / _REQUEST
        while not self._closed.wait(_POLL_SECONDS):
            if request.exists():
                self._serve()
                return

    def _serve(self) -> None:
        try:
            server = self._make_server(self.folder / _LOG)
            self._server = server
            server.start()
        except Exception as error:
            logger.warning("the shared server could not start: %s", error)
            failure = {
                "reason": str(error),
                "unavailable": isinstance(error, EngineUnavailable),
            }
            write_private(self.folder / ERROR_RECORD, json.dumps(failure))
            return
        if self._closed.is_set():  # the run ended while it started
            server.stop()
            return
        self._publish(server, "up")
        if self._supervisor is not None:
            self._supervisor.watch(server, self._follow_death)
        logger.info("shared %s server pid=%d on %s", server.engine, server.pid, server.address)

    def _publish(self, server: LocalServer, state: str, reason: str = "") -> None:
        shown = {
            "url": server.url,
            "engine": server.engine,
            "authenticated": server.authenticated,
            "pid": server.pid,
            "port": server.port,
            "log_path": str(server.log_path),
            "state": state,
            "reason": reason,
        }
        write_private(self.folder / SERVER_RECORD, json.dumps(shown))

    def _follow_death(self, server: LocalServer, death: Death | None) -> None:
        if self._closed.is_set():
            return
        if death is None:
            self._publish(server, "restarting")
        elif death.restarted:
            self._publish(server, "up")
        else:
            self._publish(server, "dead", death.describe())

    def close(self, timeout: float = 300.0) -> None:
        """Stop the server (waiting up to ``timeout`` seconds for a start in progress) and
        withdraw its URL. Idempotent."""
        self._closed.set()
        self._thread.join(timeout)
        with contextlib.suppress(FileNotFoundError):
            (self.folder / SERVER_RECORD).unlink()
        if self._server is not None:
            if self._supervisor is not None:
                self._supervisor.forget(self._server)
            self._server.stop()


def wait_for_shared_server(folder: Path, start_timeout: float) -> SharedServer:
    """Ask the host watching ``folder`` for the run's server and wait for it.

    Raises :class:`SharedServerFailed` with the host's reason when the server could not start,
    ``RuntimeError`` when no answer comes within ``start_timeout`` (plus a margin): no host is
    watching.
    """
    private_folder(folder)
    with contextlib.suppress(FileExistsError):
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        os.close(os.open(folder / _REQUEST, flags, 0o600))
    deadline = time.monotonic() + start_timeout + _WAIT_SLACK
    while True:
        shown = read_private(folder / SERVER_RECORD)
        if shown is not None:
            data = json.loads(shown)
            return SharedServer(
                url=data["url"],
                engine=data["engine"],
                authenticated=data["authenticated"],
                pid=data["pid"],
                port=data["port"],
                log_path=Path(data["log_path"]),
                folder=folder,
            )
        error = read_private(folder / ERROR_RECORD)
        if error is not None:
            failure = json.loads(error)
            raise SharedServerFailed(failure["reason"], unavailable=bool(failure["unavailable"]))
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"no shared server was published in {folder} within "
                f"{start_timeout + _WAIT_SLACK:g} s: the run's main process does not host one"
            )
        time.sleep(_POLL_SECONDS)
