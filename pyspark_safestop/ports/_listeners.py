"""Finding the processes that listen on a TCP port, and describing a process."""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import psutil

from ._checks import check_port, owner_name

logger = logging.getLogger("pyspark_safestop")

_TCP_LISTEN_STATE = "0A"  # st column of /proc/net/tcp for LISTEN


@dataclass(frozen=True)
class ProcessInfo:
    """A process as seen when it was found: enough to recognise it again and to report it."""

    pid: int
    #: psutil's start time; with ``pid`` it identifies the process across PID reuse.
    create_time: float
    uid: int
    euid: int
    owner: str
    cmdline: tuple[str, ...]

    @property
    def command(self) -> str:
        """The command line as one string ('' if it could not be read)."""
        return " ".join(self.cmdline)


def process_info(pid: int) -> ProcessInfo | None:
    """Describe ``pid``; ``None`` if it no longer exists or is a zombie.

    A process whose owner or start time cannot be read is described with uid -1, which no
    check accepts: what cannot be verified is not signalled.
    """
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
            try:
                uids = proc.uids()
                create_time = proc.create_time()
            except psutil.AccessDenied:
                return ProcessInfo(pid, 0.0, -1, -1, "unknown (not readable)", ())
            try:
                cmdline = tuple(proc.cmdline())
            except psutil.AccessDenied:
                cmdline = ()
    except psutil.NoSuchProcess:  # ZombieProcess included
        return None
    return ProcessInfo(pid, create_time, uids.real, uids.effective, owner_name(uids.real), cmdline)


def _proc_connections(proc: psutil.Process) -> list[tuple[int, str]]:
    """``(local port, status)`` of a process's TCP sockets, on any psutil version."""
    # psutil 6 renamed Process.connections() to net_connections().
    method = getattr(proc, "net_connections", None) or proc.connections
    return [(c.laddr.port, c.status) for c in method(kind="tcp") if c.laddr]


def _listening_inodes(port: int) -> dict[int, int] | None:
    """Inode -> owner uid of the TCP sockets listening on ``port``, from ``/proc/net/tcp*``.

    ``None`` where those tables do not exist (not Linux, or no ``/proc``).
    """
    inodes: dict[int, int] = {}
    found_table = False
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(name).read_text(encoding="ascii").splitlines()[1:]
        except OSError:
            continue  # tcp6 is missing where IPv6 is disabled
        found_table = True
        for line in lines:
            # sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ...
            fields = line.split()
            if len(fields) < 10 or fields[3] != _TCP_LISTEN_STATE:
                continue
            with contextlib.suppress(ValueError):
                if int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes[int(fields[9])] = int(fields[7])
    return inodes if found_table else None


def _procfs_listeners(port: int, inodes: dict[int, int]) -> tuple[set[int], list[str]]:
    """PIDs holding one of ``inodes`` (from ``/proc/*/fd``), and owners of the unheld ones."""
    wanted = {f"socket:[{inode}]": inode for inode in inodes}
    pids: set[int] = set()
    held: set[int] = set()
    if wanted:
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            fd_dir = f"/proc/{entry.name}/fd"
            try:
                fds = os.listdir(fd_dir)
            except OSError:
                continue  # gone, or another user's process (EACCES)
            for fd in fds:
                try:
                    inode = wanted.get(os.readlink(f"{fd_dir}/{fd}"))
                except OSError:
                    continue
                if inode is not None:
                    pids.add(int(entry.name))
                    held.add(inode)
    hidden = sorted({uid for inode, uid in inodes.items() if inode not in held})
    return pids, [owner_name(uid) for uid in hidden]


def _psutil_listeners(port: int) -> tuple[set[int], list[str]]:
    """The same as :func:`_procfs_listeners`, through psutil, for systems without procfs."""
    pids: set[int] = set()
    hidden = False
    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
                if conn.pid is None:
                    hidden = True
                else:
                    pids.add(conn.pid)
    except psutil.AccessDenied:
        # Some systems (macOS) only answer per process for a non-root user.
        logger.debug("system-wide connection list denied; asking each process")
        for proc in psutil.process_iter():
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                if (port, psutil.CONN_LISTEN) in _proc_connections(proc):
                    pids.add(proc.pid)
    return pids, ["unknown"] if hidden else []


def listening_pids(port: int) -> tuple[set[int], list[str]]:
    """PIDs with a TCP socket listening on ``port``, and the owners of hidden listeners.

    A listening socket that no process visible to this user holds belongs to another user
    (or to another PID namespace); its owner comes from the socket table where known.
    """
    inodes = _listening_inodes(port)
    if inodes is None:
        return _psutil_listeners(port)
    # Not psutil.net_connections() here: it reports only one PID per socket, and a listening
    # socket inherited across fork() is held by several processes.
    return _procfs_listeners(port, inodes)


def listeners_on_port(port: int) -> list[ProcessInfo]:
    """Return the processes (visible to this user) listening on TCP ``port``, by PID.

    Raises:
        TypeError, ValueError: ``port`` is not an ``int`` in 1-65535.
    """
    port = check_port(port)
    pids, _ = listening_pids(port)
    found = (process_info(pid) for pid in sorted(pids))
    return [info for info in found if info is not None]
