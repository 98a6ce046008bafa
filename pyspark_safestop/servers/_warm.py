"""Warm servers: a local server kept up between test runs, for the runs that ask for the same one.

A run with ``--safestop-reuse-server`` does not start a server of its own: it attaches
(:func:`attach`) to the warm server of its *fingerprint* (engine, installation, master, confs,
worker interpreter, this package's version and Python), starting one when there is none. The
server is hosted by a small detached process (:mod:`._warm_host`), not by the run, so it stays
up when the run ends; the next run with the same fingerprint attaches to it in a fraction of a
second instead of waiting for a JVM to start. Another fingerprint gets another server.

Everything about one warm server is in its folder, ``<state>/warm/<fingerprint>/`` (0700, in the
per-user state folder of :func:`pyspark_safestop.ports.state_directory`, or
``$PYSPARK_SAFESTOP_WARM_DIR``): the host's identity (``host.json``: PID and start time), the
server's URL with its token (``server.json``, 0600: the same token rules as every server, so
another user can neither read the URL nor use the server), the logs, and two lock files:

- ``start.lock``, held while a process checks the record and, when it is not usable, starts a
  new host: two runs (or xdist workers) starting at once get one server;
- ``users.lock``, held shared by every attached process until it detaches or dies: the host
  does not stop while one holds it.

It stays finite: the host stops the server after an idle time (``--safestop-reuse-idle``,
default 30 minutes, counted from the last moment a process was attached or a client was
connected to the server), when its folder's files or its installation disappear, on SIGTERM
(``pyspark-safestop servers --stop``), and when the server cannot be started or keeps dying. A
record is never trusted: a dead or reused host PID, a server PID no longer listening on its
port (the port answered by something else) or a token the server refuses make it stale, and it
is replaced.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._settings import DEFAULT_REUSE_IDLE as DEFAULT_IDLE
from .._settings import warn
from ..ports import listeners_on_port, process_info, state_directory
from ._engines import make_server
from ._local import LocalServer, ServerRequest, open_private_log
from ._shared import (
    SERVER_RECORD,
    SharedServer,
    private_folder,
    read_private,
    wait_for_shared_server,
    write_private,
)

__all__ = [
    "DEFAULT_IDLE",
    "ENV_WARM_DIR",
    "WarmAttachment",
    "WarmServer",
    "attach",
    "fingerprint",
    "stop_warm_servers",
    "warm_directory",
    "warm_servers",
]

logger = logging.getLogger("pyspark_safestop")

#: Overrides the folder holding the warm servers' folders (an absolute path, made private).
ENV_WARM_DIR = "PYSPARK_SAFESTOP_WARM_DIR"

HOST_RECORD = "host.json"
REQUEST_RECORD = "request.json"
START_LOCK = "start.lock"
USERS_LOCK = "users.lock"
LAST_USED = "last-used"
HOST_LOG = "host.log"
#: What the host's command line holds: how a PID is recognised as a warm server's host.
HOST_MODULE = "pyspark_safestop.servers._warm_host"
_POLL_SECONDS = 0.05
#: Seconds a host gets to stop its server on SIGTERM before it is killed (its server with it).
_STOP_WAIT = 40.0


def warm_directory(*, create: bool = True) -> Path | None:
    """The folder of the warm servers' folders (0700, created when missing; without
    ``create``, ``None`` where it does not exist): ``$PYSPARK_SAFESTOP_WARM_DIR`` if it is an
    absolute path (a relative one gives one warning and is ignored), else ``warm`` in the
    per-user state folder. ``ValueError``/``OSError`` for a folder another user could use."""
    value = os.environ.get(ENV_WARM_DIR, "").strip()
    if value and not os.path.isabs(value):
        warn(f"{ENV_WARM_DIR}={value!r} is not an absolute path; using the default folder")
        value = ""
    if not value:
        return state_directory("warm", create=create)
    path = Path(value)
    if not create and not path.exists():
        return None
    os.makedirs(path.parent, mode=0o700, exist_ok=True)
    return private_folder(path)


def fingerprint(engine: str, server: LocalServer) -> tuple[str, dict[str, str]]:
    """The fingerprint of a server of ``engine`` as ``server`` (unstarted) would be, and what it
    is made of: two runs get the same warm server only when every part is the same."""
    from .. import __version__

    parts = {
        "engine": engine,
        **server.setup(),
        "pyspark_safestop": __version__,
        "host_python": sys.executable,
    }
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()
    return digest[:16], parts


# -- locks ---------------------------------------------------------------------------------------


def _open_lock(path: Path) -> int:
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, 0o600)
    info = os.fstat(fd)
    if info.st_uid != os.geteuid() or not stat.S_ISREG(info.st_mode):
        os.close(fd)
        raise PermissionError(f"{str(path)!r} is not a lock file of this user: refusing it")
    return fd


def lock(path: Path, operation: int, deadline: float) -> int:
    """An fd of ``path`` locked with ``operation`` (``fcntl.LOCK_EX`` or ``LOCK_SH``), waiting
    until ``deadline`` (monotonic): ``TimeoutError`` naming the file then. A lock on a file
    removed (and perhaps made anew) meanwhile is taken again on the file now there."""
    while True:
        fd = _open_lock(path)
        try:
            while True:
                try:
                    fcntl.flock(fd, operation | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{path} stayed locked by another process") from None
                    time.sleep(_POLL_SECONDS)
            with contextlib.suppress(FileNotFoundError):
                if os.stat(path).st_ino == os.fstat(fd).st_ino:
                    return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)


@contextlib.contextmanager
def locked(path: Path, operation: int, deadline: float) -> Iterator[int]:
    """:func:`lock` for the ``with`` block."""
    fd = lock(path, operation, deadline)
    try:
        yield fd
    finally:
        os.close(fd)


# -- records -------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        text = read_private(path)
        return None if text is None else dict(json.loads(text))
    except (ValueError, OSError):
        return None


def host_is_alive(host: dict[str, Any]) -> bool:
    """Whether the process a host record names is that very host (PID and start time, our
    user, the host's command line): a PID reused by another process is not."""
    try:
        info = process_info(int(host["pid"]))
        started = float(host["create_time"])
    except (KeyError, TypeError, ValueError):
        return False
    return (
        info is not None
        and info.pid > 1
        and info.create_time == started
        and info.uid == os.getuid()
        and HOST_MODULE in info.command
    )


def _token_refused(port: int, token: str) -> bool:
    """Whether the server on ``port`` refuses ``token`` (a cheap RPC it must authenticate)."""
    try:
        import grpc
    except ImportError:  # no client here to test it with: the first session will
        return False
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary(
            "/spark.connect.SparkConnectService/Config",
            request_serializer=None,
            response_deserializer=None,
        )
        try:
            call(b"", timeout=10.0, metadata=(("authorization", f"Bearer {token}"),))
        except grpc.RpcError as error:
            return bool(error.code() == grpc.StatusCode.UNAUTHENTICATED)
    return False


def stale_reason(folder: Path) -> str | None:
    """Why the warm server recorded in ``folder`` cannot be used (``None``: it can, or its host
    is still starting it)."""
    host = _read_json(folder / HOST_RECORD)
    if host is None:
        return "no host recorded"
    if not host_is_alive(host):
        return f"its host (pid {host.get('pid')}) is gone"
    record = _read_json(folder / SERVER_RECORD)
    if record is None:
        return None  # starting: the attacher waits for it
    if record.get("state") == "dead":
        return f"its server died: {record.get('reason', '')}"
    if record.get("state") != "up":
        return None
    port, pid = int(record["port"]), int(record["pid"])
    if pid not in {listener.pid for listener in listeners_on_port(port)}:
        return f"port {port} is not answered by its server (pid {pid})"
    url = str(record["url"])
    if ";token=" in url and _token_refused(port, url.split(";token=", 1)[1].split(";", 1)[0]):
        return f"the server on port {port} refuses its token"
    return None


def end_host(folder: Path, timeout: float = _STOP_WAIT) -> bool:
    """Stop the host recorded in ``folder`` (SIGTERM; SIGKILL after ``timeout`` seconds, its
    server then dying with its launcher); return whether one was running. Only the very
    process recorded is signalled."""
    host = _read_json(folder / HOST_RECORD)
    if host is None or not host_is_alive(host):
        return False
    pid = int(host["pid"])
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while host_is_alive(host):
        if time.monotonic() > deadline:
            logger.warning(
                "warm server host pid=%d did not stop in %.0f s: killing it", pid, timeout
            )
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            break
        time.sleep(_POLL_SECONDS)
    return True


def clear_records(folder: Path) -> None:
    """Remove what a host left in ``folder``, its lock files aside (they may be held)."""
    for entry in folder.iterdir():
        if entry.name in (START_LOCK, USERS_LOCK):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()


# -- attaching -----------------------------------------------------------------------------------


@dataclass
class WarmAttachment:
    """This process attached to a warm server: the server as its users see it, kept up until
    :meth:`detach` (or this process's end)."""

    server: SharedServer
    fingerprint: str
    #: Whether this attach started the server (a cold start) rather than found it up.
    started: bool
    _users_fd: int | None = field(default=None, repr=False)

    def detach(self) -> None:
        """Let the server go idle for this process (its idle time starts when the last user
        detaches). Idempotent."""
        fd, self._users_fd = self._users_fd, None
        if fd is not None:
            os.close(fd)


def attach(
    engine: str,
    request: ServerRequest,
    *,
    idle: float = DEFAULT_IDLE,
    restarts: int = 3,
) -> WarmAttachment:
    """Attach to the warm server of ``engine`` for ``request``, starting it when there is none
    usable (``request.log_path`` is ignored: its log is in its folder).

    Raises :class:`EngineUnavailable` when the engine cannot run here, ``ValueError`` for a
    refused setting, ``PermissionError`` for a folder of warm servers another user could use,
    :class:`SharedServerFailed` when the server could not start (its host's reason),
    ``TimeoutError``/``RuntimeError`` when no host answers in time.
    """
    server = make_server(engine, request)  # the engine's checks, here and not in the host
    digest, parts = fingerprint(engine, server)
    try:
        base = warm_directory()
        assert base is not None  # made when missing
        folder = private_folder(base / digest)
    except ValueError as error:  # a folder another user could use: not a setting's fault
        raise PermissionError(f"{error} ({ENV_WARM_DIR} picks another folder)") from None
    timeout = request.start_timeout
    deadline = time.monotonic() + timeout + _STOP_WAIT
    with locked(folder / START_LOCK, fcntl.LOCK_EX, deadline):
        users = lock(folder / USERS_LOCK, fcntl.LOCK_SH, deadline)
        try:
            reason = stale_reason(folder)
            started = reason is not None
            if reason is not None:
                if reason != "no host recorded":
                    logger.info("warm server in %s is stale (%s): starting another", folder, reason)
                end_host(folder)
                clear_records(folder)
                _spawn_host(folder, _host_request(engine, request, idle, restarts, parts))
            shared = wait_for_shared_server(folder, timeout)
        except BaseException:
            os.close(users)
            raise
    logger.info("attached to warm %s server pid=%d port %d", engine, shared.pid, shared.port)
    return WarmAttachment(shared, digest, started, users)


def _host_request(
    engine: str, request: ServerRequest, idle: float, restarts: int, parts: dict[str, str]
) -> dict[str, Any]:
    """What the host is asked for (its ``request.json``)."""
    return {
        "engine": engine,
        "setup": parts,
        "idle": idle,
        "restarts": restarts,
        "request": {
            "start_timeout": request.start_timeout,
            "conf": dict(request.conf or {}),
            "spark_home": request.spark_home,
            "sail_executable": request.sail_executable,
            "master": request.master,
        },
    }


def _spawn_host(folder: Path, payload: dict[str, Any]) -> None:
    payload = {**payload, "fingerprint": folder.name}
    write_private(folder / REQUEST_RECORD, json.dumps(payload))
    log_fd = open_private_log(folder / HOST_LOG)
    try:
        # No fork here (close_fds=False, no new session: posix_spawn), as for the launcher:
        # this process may be busy with gRPC. The host forks itself free of this process.
        starter = subprocess.Popen(
            [sys.executable, "-m", HOST_MODULE, str(folder)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log_fd,
            close_fds=False,
        )
    finally:
        os.close(log_fd)
    code = starter.wait(60)
    if code != 0:
        raise RuntimeError(
            f"the warm server's host could not start (exit status {code}); "
            f"its log: {folder / HOST_LOG}"
        )


# -- listing and stopping ------------------------------------------------------------------------


@dataclass(frozen=True)
class WarmServer:
    """One warm server of this user, as its records show it."""

    folder: Path
    fingerprint: str
    engine: str
    #: "up", "starting", "restarting", or "stale: why".
    state: str
    host_pid: int | None
    pid: int | None
    port: int | None
    #: When its host started (seconds since the epoch).
    started: float | None
    #: When a process was last attached or a client connected (seconds since the epoch).
    last_used: float | None
    #: Seconds of idleness after which it stops.
    idle_limit: float | None
    setup: dict[str, str]

    def describe(self, now: float | None = None) -> str:
        """One line: engine, state, port, PIDs, age, idle time, fingerprint, what it runs."""
        now = time.time() if now is None else now

        def ago(when: float | None) -> str:
            return "?" if when is None else _duration(now - when)

        idle = ago(self.last_used)
        limit = "?" if self.idle_limit is None else _duration(self.idle_limit)
        where = f"port {self.port} pid {self.pid}" if self.port else "no server"
        shown = " ".join(
            f"{key}={value}"
            for key, value in self.setup.items()
            if key not in ("engine", "pyspark_safestop", "host_python") and value
        )
        return (
            f"{self.engine} {self.state}: {where}, host pid {self.host_pid}, "
            f"up {ago(self.started)}, idle {idle} (stops at {limit}), "
            f"fingerprint {self.fingerprint}; {shown}"
        )


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    return f"{seconds / 3600:.1f}h"


def warm_servers() -> list[WarmServer]:
    """This user's warm servers (a stale record included, its state saying why)."""
    try:
        base = warm_directory(create=False)
    except (OSError, ValueError):
        return []
    if base is None:
        return []
    found = []
    for folder in sorted(base.iterdir()):
        if not folder.is_dir() or folder.is_symlink():
            continue
        host = _read_json(folder / HOST_RECORD)
        if host is None:
            continue
        record = _read_json(folder / SERVER_RECORD) or {}
        if not host_is_alive(host):
            state = "stale: its host is gone"
        else:
            state = str(record.get("state", "starting"))
            if state == "dead":
                state = f"stale: {record.get('reason', 'its server died')}"
        try:
            last_used: float | None = (folder / LAST_USED).stat().st_mtime
        except OSError:
            last_used = None
        found.append(
            WarmServer(
                folder=folder,
                fingerprint=folder.name,
                engine=str(host.get("engine", "?")),
                state=state,
                host_pid=host.get("pid"),
                pid=record.get("pid"),
                port=record.get("port"),
                started=host.get("started"),
                last_used=last_used,
                idle_limit=host.get("idle"),
                setup=dict(host.get("setup", {})),
            )
        )
    return found


def stop_warm_servers() -> list[WarmServer]:
    """Stop every warm server of this user and remove its folder; return what was stopped
    (stale records are removed too)."""
    stopped = warm_servers()
    for server in stopped:
        with contextlib.suppress(OSError):
            end_host(server.folder)
            # Not while a run is attaching (it would find its folder gone).
            deadline = time.monotonic() + _STOP_WAIT
            with (
                contextlib.suppress(TimeoutError, ValueError),
                locked(server.folder / START_LOCK, fcntl.LOCK_EX, deadline),
            ):
                shutil.rmtree(server.folder, ignore_errors=True)
    return stopped
