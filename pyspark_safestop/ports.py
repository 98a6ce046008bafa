"""TCP ports for test servers: leased allocation, and a kill that only ends our own listeners.

Allocation
    :func:`allocate_free_port` returns a port that is free at the time of the call, lies
    outside the kernel's ephemeral range (so outgoing connections are never given it) and is
    *leased* to the calling process: no other process using this module receives it until the
    holder calls :func:`release_port` or exits, however it exits. A lease is a
    ``flock(LOCK_EX)`` on one file per port in a private, per-user directory; the kernel drops
    the lock when the last descriptor of the holder goes away, including on a crash or SIGKILL.

    What a lease cannot do, stated up front:

    * It binds nothing. Between the allocation and the server's own ``bind()``, a process that
      does not use this module can still bind the port. Not by accident of the kernel, which
      picks ports for ``bind(0)`` and outgoing connections from the ephemeral range only, but
      a program asking for that port by number gets it. The lease rules out collisions among
      users of this module; the range rules out the kernel's own choices.
    * Leases coordinate processes of one user that see the same lease directory (see
      :func:`lease_directory`). Other users, or a container with its own temporary folder,
      are only kept off by the bind test.
    * A port from an environment variable (:func:`port_from_env`) is used as given, not leased.
    * A lease file deleted behind the holder's back (a ``/tmp`` cleaner, ``rm -rf``) no longer
      protects its port from other processes.
    * Where a server can bind port 0 and report the port it got (Spark Connect can), that is
      better still: the server holds its port from the start and nothing is left to race.

    After ``fork()`` the child shares the parent's lock (``flock`` locks belong to the open
    file, not the process). The child forgets the parent's leases and closes its copies of the
    descriptors, so it can neither release them nor keep them alive after the parent exits.

Ending listeners
    :func:`kill_process_on_port` ends the processes listening on a TCP port: SIGTERM, a grace
    period, SIGKILL for survivors. It checks every listener before it signals any of them and
    refuses the whole call, signalling nothing, if one of them is owned by another user (even
    when the caller is root), is PID 1 or lower, the calling process or one of its ancestors,
    or does not match the command line the caller expects. Each signal is sent only after the
    process's identity (PID and start time) is checked again. The check is made through a
    pidfd (Linux 5.3+), so the signal reaches exactly the process checked even if its PID is
    reused at that moment; without pidfds a window of microseconds remains between the check
    and ``kill()``.

:func:`register_cleanup` ends a server the process started (by port or by PID) when the
process exits normally or on SIGTERM or SIGINT, and then hands the signal on to the handler
that was installed before.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import logging
import os
import pwd
import random
import re
import signal
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import psutil

from ._settings import validate_timeout

__all__ = [
    "ENV_LEASE_DIR",
    "ForeignProcessError",
    "KillRefusedError",
    "LeaseDirectoryError",
    "ProcessInfo",
    "ProtectedProcessError",
    "UnexpectedProcessError",
    "allocate_free_port",
    "ephemeral_port_range",
    "is_port_free",
    "kill_process_on_port",
    "lease_directory",
    "leased_port",
    "leased_ports",
    "listeners_on_port",
    "port_from_env",
    "register_cleanup",
    "release_port",
]

logger = logging.getLogger("pyspark_safestop")

#: Overrides the directory holding the lease files (it must belong to the current user).
ENV_LEASE_DIR = "PYSPARK_SAFESTOP_PORT_LEASE_DIR"

_EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_RESERVED_PORTS_FILE = Path("/proc/sys/net/ipv4/ip_local_reserved_ports")
#: IANA's dynamic range: the ephemeral range of systems without the Linux ``/proc`` file.
_IANA_EPHEMERAL = (49152, 65535)
#: Lowest port handed out. Below 1024 binding needs privileges, and most development services
#: sit on fixed ports below 10000 (3000, 5432, 6379, 8080, ...): a service started after the
#: allocation should not find its usual port taken.
_FIRST_CANDIDATE = 10000
_MAX_PORT = 65535
#: Random candidates tried before giving up; each costs well under a millisecond.
_MAX_ATTEMPTS = 2000

#: Seconds to wait for a SIGKILLed process to disappear before reporting it as still alive.
_KILL_WAIT = 5.0

_TCP_LISTEN_STATE = "0A"  # st column of /proc/net/tcp for LISTEN


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def _check_port(port: object, name: str = "port") -> int:
    """Return ``port`` if it is an ``int`` in 1-65535, else raise naming it."""
    # bool is an int subclass: True would otherwise be port 1.
    if isinstance(port, bool) or not isinstance(port, int):
        raise TypeError(f"{name} must be an int in 1-65535, got {port!r}")
    if not 1 <= port <= _MAX_PORT:
        raise ValueError(f"{name} must be in 1-65535, got {port!r}")
    return port


def parse_port(text: str, name: str | None = None) -> int:
    """Return the TCP port written in ``text`` (ASCII digits, surrounding blanks allowed).

    ``name`` (an environment variable, an argument) is named in the error message.

    Raises:
        ValueError: ``text`` is not an integer in 1-65535 written in plain digits.
    """
    stripped = text.strip()
    # int() would also take "+80", "8_080" and "٨٠": accept plain ASCII digits only.
    if not re.fullmatch(r"[0-9]{1,5}", stripped) or not 1 <= int(stripped) <= _MAX_PORT:
        shown = f"{name}={text!r}" if name else repr(text)
        raise ValueError(f"{shown} is not a TCP port (an integer in 1-65535)")
    return int(stripped)


def _check_timeout(timeout: object, name: str = "timeout") -> float:
    """Return ``timeout`` as seconds in 0-``MAX_TIMEOUT``, else raise ``ValueError`` naming it."""
    # 0 is allowed here (SIGKILL at once for whatever is still alive); any other value goes
    # through the library's one timeout check, bounds included.
    if timeout == 0 and not isinstance(timeout, bool):
        return 0.0
    return validate_timeout(timeout, name)


def _check_expect(expect: object) -> str | re.Pattern[str] | None:
    """Return ``expect`` if it is ``None``, a non-empty ``str`` or a ``str`` pattern."""
    if expect is None:
        return None
    if isinstance(expect, str):
        if not expect:
            # An empty string matches every command line: certainly not what was meant.
            raise ValueError("expect must not be an empty string")
        return expect
    if isinstance(expect, re.Pattern) and isinstance(expect.pattern, str):
        return expect
    raise TypeError(f"expect must be a str or a compiled str pattern, got {expect!r}")


# --------------------------------------------------------------------------------------------
# Port ranges and the bind test
# --------------------------------------------------------------------------------------------


def ephemeral_port_range() -> tuple[int, int]:
    """Return the kernel's ephemeral port range ``(low, high)``, both inclusive.

    Read from ``/proc/sys/net/ipv4/ip_local_port_range`` (Linux uses it for IPv6 too); where
    that file does not exist or cannot be parsed, IANA's ``(49152, 65535)``.
    """
    try:
        low_text, high_text = _EPHEMERAL_RANGE_FILE.read_text(encoding="ascii").split()
        low, high = int(low_text), int(high_text)
    except (OSError, ValueError):
        logger.debug("no readable %s; assuming IANA's range", _EPHEMERAL_RANGE_FILE)
        return _IANA_EPHEMERAL
    if not 1 <= low <= high <= _MAX_PORT:
        logger.debug("implausible ephemeral range %d-%d; assuming IANA's", low, high)
        return _IANA_EPHEMERAL
    return low, high


def _reserved_ports() -> frozenset[int]:
    """Ports the administrator reserved for specific services (``ip_local_reserved_ports``)."""
    try:
        text = _RESERVED_PORTS_FILE.read_text(encoding="ascii").strip()
    except OSError:
        return frozenset()
    reserved: set[int] = set()
    for part in filter(None, text.split(",")):
        try:
            low, _, high = part.partition("-")
            reserved.update(range(int(low), int(high or low) + 1))
        except ValueError:
            logger.debug("ignoring unparsable reserved port entry %r", part)
    return frozenset(reserved)


#: Seconds the candidate ranges read from ``/proc`` are reused before being read again.
_CANDIDATES_TTL = 1.0
_candidates_cache: tuple[float, tuple[range, ...], frozenset[int]] | None = None


def _candidates() -> tuple[tuple[range, ...], frozenset[int]]:
    """Candidate ports (10000-65535) outside the ephemeral range, and the reserved ports."""
    global _candidates_cache
    cached = _candidates_cache
    now = time.monotonic()
    if cached is not None and now - cached[0] < _CANDIDATES_TTL:
        return cached[1], cached[2]
    low, high = ephemeral_port_range()
    ranges = tuple(
        r for r in (range(_FIRST_CANDIDATE, low), range(high + 1, _MAX_PORT + 1)) if len(r) > 0
    )
    reserved = _reserved_ports()
    _candidates_cache = (now, ranges, reserved)
    return ranges, reserved


def _resolve(host: str) -> tuple[socket.AddressFamily, str]:
    """Address family and numeric address of ``host`` (first result of getaddrinfo)."""
    if not isinstance(host, str) or not host:
        raise ValueError(f"host must be a non-empty string, got {host!r}")
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise ValueError(f"cannot resolve host {host!r}: {error}") from error
    family, _, _, _, sockaddr = infos[0]
    return family, str(sockaddr[0])


def _bindable(family: socket.AddressFamily, address: str, port: int) -> bool:
    """Whether a TCP socket can bind ``address:port`` right now."""
    # SO_REUSEADDR stays off: a port with a lingering TIME_WAIT connection counts as busy,
    # which is stricter than what most servers need.
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((address, port))
        except OSError:
            return False
    return True


def is_port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Return whether a TCP socket can bind ``host:port`` at this moment.

    A snapshot only: the answer can be stale by the time it is used.
    """
    port = _check_port(port)
    family, address = _resolve(host)
    return _bindable(family, address, port)


# --------------------------------------------------------------------------------------------
# Leases
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Lease:
    fd: int
    path: str


_leases: dict[int, _Lease] = {}
_leases_lock = threading.Lock()
_random = random.SystemRandom()  # never repeats a sequence in forked children


def _after_fork_in_child() -> None:
    global _leases_lock
    # The lock may have been held by another thread at fork time; the child has no such thread.
    _leases_lock = threading.Lock()
    for lease in _leases.values():
        # Close only: flock(LOCK_UN) here would also unlock the parent's lease, which shares
        # this open file. Closing drops the child's reference and leaves the lock with the parent.
        with contextlib.suppress(OSError):
            os.close(lease.fd)
    _leases.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _owner_name(uid: int) -> str:
    """``"name (uid N)"``, or ``"uid N"`` for a uid without a passwd entry."""
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except (KeyError, OverflowError):
        return f"uid {uid}"


class LeaseDirectoryError(PermissionError):
    """The lease directory, or the folder holding it, could be used by another user."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(
            errno.EPERM,
            f"port lease directory {path}: {problem}; another user could plant or remove "
            f"lease files there. Remove it, or set {ENV_LEASE_DIR} to a directory of your own",
        )
        self.path = path

    def __str__(self) -> str:
        return str(self.strerror)


def _others_can_write(info: os.stat_result) -> bool:
    return bool(info.st_mode & (stat.S_IWGRP | stat.S_IWOTH))


def _check_parent(parent: Path, child: Path) -> None:
    """Refuse ``parent`` if another user could rename or replace ``child`` inside it.

    That is the case when ``parent`` belongs to another user (root aside) or is writable by
    others without the sticky bit (``/tmp`` has it: there only an entry's owner may remove it).
    """
    info = os.stat(parent)  # followed: /tmp is a symlink on some systems
    if info.st_uid not in (os.getuid(), 0):
        raise LeaseDirectoryError(
            child, f"its folder {parent} belongs to {_owner_name(info.st_uid)}"
        )
    if _others_can_write(info) and not info.st_mode & stat.S_ISVTX:
        raise LeaseDirectoryError(
            child, f"its folder {parent} is writable by others and not sticky"
        )


def _private_dir(path: Path) -> None:
    """Create ``path`` (mode 0700) if missing; refuse it unless it is our own private directory."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise LeaseDirectoryError(path, "not a directory (or a symlink)")
    if info.st_uid != os.getuid():
        raise LeaseDirectoryError(
            path, f"it belongs to {_owner_name(info.st_uid)}, not to {_owner_name(os.getuid())}"
        )
    if _others_can_write(info):
        # Whatever it holds may have been planted: refused, not repaired.
        raise LeaseDirectoryError(
            path, f"it is writable by others (mode {info.st_mode & 0o7777:o})"
        )
    if stat.S_IMODE(info.st_mode) & 0o077:
        # Ours, only readable by others: nothing planted, but which ports we use is ours to know.
        os.chmod(path, 0o700)


def _runtime_dir() -> Path | None:
    """``$XDG_RUNTIME_DIR`` if it is an absolute path to our own directory of mode 0700."""
    value = os.environ.get("XDG_RUNTIME_DIR")
    if not value or not os.path.isabs(value):
        return None
    try:
        info = os.stat(value)
    except OSError:
        return None
    if (
        not stat.S_ISDIR(info.st_mode)
        or info.st_uid != os.getuid()
        or stat.S_IMODE(info.st_mode) & 0o077
    ):
        logger.debug("not using XDG_RUNTIME_DIR=%s: not a private directory of ours", value)
        return None
    return Path(value)


#: ``(path, st_dev, st_ino)`` of the lease directory last checked in full. A later call only
#: checks, with one ``lstat``, that the path still leads to that same private directory.
_checked_dir: tuple[str, int, int] | None = None


def _still_checked(path: Path) -> bool:
    cached = _checked_dir
    if cached is None or cached[0] != str(path):
        return False
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return (
        (info.st_dev, info.st_ino) == cached[1:]
        and stat.S_ISDIR(info.st_mode)
        and info.st_uid == os.getuid()
        and not stat.S_IMODE(info.st_mode) & 0o077
    )


def _default_lease_chain() -> list[Path]:
    """The default lease directory and the folders to create on the way, outermost first."""
    runtime = _runtime_dir()
    if runtime is not None:
        # Already private: only the folders below it need creating.
        return [runtime / "pyspark-safestop", runtime / "pyspark-safestop" / "ports"]
    top = Path(tempfile.gettempdir()) / f"pyspark-safestop-{os.getuid()}"
    return [top, top / "ports"]


def lease_directory() -> Path:
    """Return the directory holding the lease files, creating it (mode 0700) when missing.

    ``$PYSPARK_SAFESTOP_PORT_LEASE_DIR`` if set; else ``pyspark-safestop/ports`` in
    ``$XDG_RUNTIME_DIR`` when that is a private directory of the current user; else
    ``pyspark-safestop-<uid>/ports`` in the temporary folder (``tempfile.gettempdir()``).
    Processes coordinate only if they find the same directory: one started without
    ``XDG_RUNTIME_DIR`` (cron, sudo, some CI runners) should be given the variable.

    Raises:
        LeaseDirectoryError: The directory is not a directory of the current user, is
            writable by others, or sits in a folder another user could change (writable by
            others and not sticky, or owned by another user than root). The message names
            ``PYSPARK_SAFESTOP_PORT_LEASE_DIR``, which picks another one.
    """
    global _checked_dir
    override = os.environ.get(ENV_LEASE_DIR)
    chain = [Path(override)] if override else _default_lease_chain()
    path = chain[-1]
    if _still_checked(path):
        return path
    if override:
        # Missing folders above an explicit choice are created private.
        os.makedirs(path.parent, mode=0o700, exist_ok=True)
    _check_parent(chain[0].parent, chain[0])
    for folder in chain:
        _private_dir(folder)
    info = os.lstat(path)
    _checked_dir = (str(path), info.st_dev, info.st_ino)
    return path


def _try_lease(directory: Path, port: int) -> _Lease | None:
    """Lock the lease file of ``port``; return the lease, or ``None`` if someone holds it."""
    path = os.path.join(directory, f"{port}.lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # A holder releasing the port unlinks the file while it still holds the lock, so a
        # lock obtained on an unlinked file is worthless: check that the path is still ours.
        held = os.fstat(fd)
        current = os.stat(path, follow_symlinks=False)
    except (BlockingIOError, FileNotFoundError):
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    if (held.st_dev, held.st_ino) != (current.st_dev, current.st_ino):
        os.close(fd)
        return None
    return _Lease(fd, path)


def _drop(lease: _Lease) -> None:
    """Unlink the lease file (while still locked) and close it, which ends the lease."""
    try:
        held = os.fstat(lease.fd)
        current = os.stat(lease.path, follow_symlinks=False)
        # Only unlink the file we hold: if something removed it, a new file there is not ours.
        if (held.st_dev, held.st_ino) == (current.st_dev, current.st_ino):
            os.unlink(lease.path)
    except OSError as error:
        logger.debug("lease file %s: %s", lease.path, error)
    finally:
        os.close(lease.fd)


def _pick(ranges: tuple[range, ...], total: int) -> int:
    """A uniformly random port from ``ranges`` (``total`` ports in all)."""
    index = _random.randrange(total)
    for candidate_range in ranges:
        if index < len(candidate_range):
            return candidate_range[index]
        index -= len(candidate_range)
    raise AssertionError("total does not match the ranges")  # pragma: no cover


def allocate_free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port that is free now, outside the ephemeral range, and leased to us.

    The port is chosen at random among ports 10000-65535 outside the kernel's ephemeral range
    (and outside ``ip_local_reserved_ports``), leased (see the module docstring), and
    checked to be bindable on ``host`` with ``SO_REUSEADDR`` off. The lease lasts until
    :func:`release_port` or the end of the process. Thread-safe; no port is handed out twice
    while leased, within the process or across processes using this module.

    Args:
        host: Address the port must be bindable on.

    Raises:
        ValueError: ``host`` is empty or cannot be resolved.
        PermissionError: The lease directory is not owned by the current user.
        RuntimeError: No free port was found (the ephemeral range covers 10000-65535, or all
            candidates tried were busy).
    """
    family, address = _resolve(host)
    ranges, reserved = _candidates()
    if not ranges:
        low, high = ephemeral_port_range()
        raise RuntimeError(
            f"no port in {_FIRST_CANDIDATE}-{_MAX_PORT} lies outside the ephemeral range "
            f"{low}-{high} ({_EPHEMERAL_RANGE_FILE})"
        )
    total = sum(len(r) for r in ranges)
    directory = lease_directory()
    for _ in range(_MAX_ATTEMPTS):
        port = _pick(ranges, total)
        if port in reserved or port in _leases:
            continue
        lease = _try_lease(directory, port)
        if lease is None:
            continue
        # Leased first, then bind-tested: the other order would let two processes pass the
        # bind test together before one of them takes the lease.
        if not _bindable(family, address, port):
            _drop(lease)
            continue
        with _leases_lock:
            _leases[port] = lease
        logger.debug("leased port %d (lease file %s)", port, lease.path)
        return port
    low, high = ephemeral_port_range()
    raise RuntimeError(
        f"no free port outside the ephemeral range {low}-{high} after {_MAX_ATTEMPTS} attempts"
    )


def release_port(port: int) -> bool:
    """End this process's lease on ``port``.

    Returns:
        ``True`` if the port was leased by this process, ``False`` otherwise (nothing happens).

    Raises:
        TypeError, ValueError: ``port`` is not an ``int`` in 1-65535.
    """
    port = _check_port(port)
    with _leases_lock:
        lease = _leases.pop(port, None)
    if lease is None:
        return False
    _drop(lease)
    logger.debug("released port %d", port)
    return True


def _release_all_at_exit() -> None:
    # Tidiness only: the kernel drops the locks at exit anyway, but the files would stay.
    for port in leased_ports():
        with contextlib.suppress(OSError):
            release_port(port)


atexit.register(_release_all_at_exit)


def leased_ports() -> frozenset[int]:
    """Return the ports currently leased by this process."""
    with _leases_lock:
        return frozenset(_leases)


@contextlib.contextmanager
def leased_port(host: str = "127.0.0.1") -> Iterator[int]:
    """Lease a port for the duration of a ``with`` block, e.g. while a server starts on it.

    Example::

        with leased_port() as port:
            server = start_server(port)
            wait_until_listening(port)
        # lease ended; the port is now held by the server's own socket

    Prefer letting the server bind port 0 and report its port where it can.
    """
    port = allocate_free_port(host)
    try:
        yield port
    finally:
        release_port(port)


def port_from_env(name: str, *, default: int | None = None, host: str = "127.0.0.1") -> int:
    """Return the port in environment variable ``name``, else ``default``, else a leased one.

    An unset or blank variable counts as absent. A port taken from the variable or ``default``
    is used as given and not leased; only an allocated port is leased (see
    :func:`allocate_free_port`).

    Raises:
        ValueError: The variable is set to anything but an integer in 1-65535 (the message
            names the variable and its value), or ``default`` is out of range.
        TypeError: ``name`` is not a string or ``default`` is not an int.
    """
    if not isinstance(name, str) or not name:
        raise TypeError(f"name must be a non-empty environment variable name, got {name!r}")
    if default is not None:
        _check_port(default, "default")
    raw = os.environ.get(name)
    if raw is not None and raw.strip():
        return parse_port(raw, name)
    if default is not None:
        return default
    return allocate_free_port(host)


# --------------------------------------------------------------------------------------------
# Finding listeners
# --------------------------------------------------------------------------------------------


class KillRefusedError(PermissionError):
    """A process was not signalled because a safety check failed; nothing was signalled.

    Attributes:
        pid: The process that failed the check (``None`` if its PID is not visible).
        owner: Its owner, as ``"name (uid N)"``.
        port: The port being cleared, if any.
    """

    def __init__(self, message: str, *, pid: int | None, owner: str, port: int | None) -> None:
        super().__init__(errno.EPERM, message)
        self.pid = pid
        self.owner = owner
        self.port = port

    def __str__(self) -> str:
        return str(self.strerror)


class ForeignProcessError(KillRefusedError):
    """The process belongs to another user (real or effective uid differs from ours)."""


class ProtectedProcessError(KillRefusedError):
    """The process is PID 1 or lower, the calling process or one of its ancestors."""


class UnexpectedProcessError(KillRefusedError):
    """The process's command line does not match ``expect``."""


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


def _process_info(pid: int) -> ProcessInfo | None:
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
    return ProcessInfo(pid, create_time, uids.real, uids.effective, _owner_name(uids.real), cmdline)


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
    return pids, [_owner_name(uid) for uid in hidden]


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


def _listening_pids(port: int) -> tuple[set[int], list[str]]:
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
    port = _check_port(port)
    pids, _ = _listening_pids(port)
    found = (_process_info(pid) for pid in sorted(pids))
    return [info for info in found if info is not None]


def _protected_pids() -> set[int]:
    """The calling process and its ancestors."""
    protected = {os.getpid()}
    with contextlib.suppress(psutil.Error):
        protected.update(parent.pid for parent in psutil.Process().parents())
    return protected


def _matches(expect: str | re.Pattern[str], command: str) -> bool:
    if isinstance(expect, str):
        return expect in command
    return expect.search(command) is not None


def _refusal(
    info: ProcessInfo,
    port: int | None,
    expect: str | re.Pattern[str] | None,
    protected: set[int],
) -> KillRefusedError | None:
    """The reason not to signal ``info``, or ``None`` if it may be signalled."""
    uid = os.getuid()
    where = f" listening on port {port}" if port is not None else ""
    described = f"PID {info.pid}{where} (owner {info.owner}, command {info.command[:200]!r})"
    if info.uid != uid or info.euid != uid:
        effective = f", effective {_owner_name(info.euid)}" if info.euid != info.uid else ""
        return ForeignProcessError(
            f"refusing to signal {described}{effective}: it is not owned by {_owner_name(uid)}",
            pid=info.pid,
            owner=info.owner,
            port=port,
        )
    if info.pid <= 1 or info.pid in protected:
        what = "the calling process" if info.pid == os.getpid() else "an ancestor of the caller"
        if info.pid <= 1:
            what = "PID 1 or lower"
        return ProtectedProcessError(
            f"refusing to signal {described}: it is {what}",
            pid=info.pid,
            owner=info.owner,
            port=port,
        )
    if expect is not None and not _matches(expect, info.command):
        shown = expect if isinstance(expect, str) else expect.pattern
        return UnexpectedProcessError(
            f"refusing to signal {described}: its command line does not match {shown!r}",
            pid=info.pid,
            owner=info.owner,
            port=port,
        )
    return None


def _check_all(
    infos: list[ProcessInfo], port: int | None, expect: str | re.Pattern[str] | None
) -> None:
    """Raise the most serious refusal among ``infos`` (all are checked), if there is one."""
    protected = _protected_pids()
    refusals = [r for r in (_refusal(i, port, expect, protected) for i in infos) if r is not None]
    if not refusals:
        return
    # Another user's process is the most serious finding; report it first.
    order = (ForeignProcessError, ProtectedProcessError, UnexpectedProcessError)
    refusals.sort(key=lambda r: next(n for n, kind in enumerate(order) if isinstance(r, kind)))
    first = refusals[0]
    message = str(first)
    if len(refusals) > 1:
        message += " (also " + "; ".join(str(r) for r in refusals[1:]) + ")"
    raise type(first)(
        f"{message}; nothing was signalled", pid=first.pid, owner=first.owner, port=first.port
    )


# --------------------------------------------------------------------------------------------
# Signalling
# --------------------------------------------------------------------------------------------


def _same_process(target: ProcessInfo) -> bool:
    """Whether ``target`` is still alive, still the same process, and still ours."""
    current = _process_info(target.pid)
    if current is None or current.create_time != target.create_time:
        return False
    if current.uid != target.uid or current.euid != target.euid:
        logger.warning(
            "PID %d changed owner to %s since it was checked; not signalling it",
            target.pid,
            current.owner,
        )
        return False
    return True


def _open_pidfd(pid: int) -> int | None:
    """A pidfd for ``pid``, or ``None`` where the kernel or Python has none."""
    pidfd_open: Callable[[int], int] | None = getattr(os, "pidfd_open", None)
    if pidfd_open is None or not hasattr(signal, "pidfd_send_signal"):
        return None
    try:
        return pidfd_open(pid)
    except ProcessLookupError:
        raise
    except OSError:  # ENOSYS on old kernels, EPERM under some seccomp filters
        return None


def _send(target: ProcessInfo, sig: signal.Signals) -> bool:
    """Send ``sig`` to ``target`` if it is still the same process; return whether it was sent.

    With a pidfd, the identity check runs after the pidfd is opened, so the signal reaches the
    very process that was checked even if its PID is reused a moment later. Without one, the
    check runs immediately before ``kill()``.
    """
    try:
        pidfd = _open_pidfd(target.pid)
    except ProcessLookupError:
        return False
    try:
        if not _same_process(target):
            return False
        if pidfd is not None:
            signal.pidfd_send_signal(pidfd, sig)
        else:
            os.kill(target.pid, sig)
    except ProcessLookupError:
        return False
    finally:
        if pidfd is not None:
            os.close(pidfd)
    return True


def _wait_gone(targets: list[ProcessInfo], timeout: float) -> list[ProcessInfo]:
    """Wait up to ``timeout`` s for ``targets`` to exit; return those still alive."""
    # Polled rather than waited on: the processes are usually not our children, and reaping
    # one that is would take its exit status from whoever started it.
    deadline = time.monotonic() + timeout
    delay = 0.01
    alive = [t for t in targets if _same_process(t)]
    while alive and time.monotonic() < deadline:
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, 0.1)
        alive = [t for t in alive if _same_process(t)]
    return alive


def _end(targets: list[ProcessInfo], timeout: float, port: int | None) -> list[int]:
    """SIGTERM ``targets``, SIGKILL those alive after ``timeout`` s; return the PIDs ended."""
    where = f" on port {port}" if port is not None else ""
    signalled: list[ProcessInfo] = []
    for target in targets:
        logger.info("sending SIGTERM to PID %d%s: %s", target.pid, where, target.command[:200])
        if _send(target, signal.SIGTERM):
            signalled.append(target)
        else:
            logger.debug("PID %d was gone before SIGTERM", target.pid)
    survivors = _wait_gone(signalled, timeout)
    for target in survivors:
        logger.warning(
            "PID %d%s still running %.1fs after SIGTERM; sending SIGKILL",
            target.pid,
            where,
            timeout,
        )
        _send(target, signal.SIGKILL)
    unkillable = {t.pid for t in _wait_gone(survivors, _KILL_WAIT)}
    for pid in sorted(unkillable):
        logger.warning("PID %d%s is still alive %.0fs after SIGKILL", pid, where, _KILL_WAIT)
    return sorted(t.pid for t in signalled if t.pid not in unkillable)


def kill_process_on_port(
    port: int,
    *,
    expect: str | re.Pattern[str] | None = None,
    timeout: float = 5.0,
    dry_run: bool = False,
) -> list[int]:
    """End the processes listening on TCP ``port``: SIGTERM, ``timeout`` s, then SIGKILL.

    Every listener is checked before any is signalled; if one fails a check, the call raises
    and signals nothing at all. Just before each signal the process's identity (PID and start
    time) and owner are checked again, so a PID reused in the meantime is never hit.

    Args:
        port: The TCP port (1-65535).
        expect: A ``str`` the command line must contain, or a compiled pattern it must match
            (``re.search``); for example ``"SparkConnectServer"``.
        timeout: Seconds between SIGTERM and SIGKILL, from 0 (SIGKILL right away if still
            alive) to ``MAX_TIMEOUT`` of :mod:`pyspark_safestop._settings` (one day).
        dry_run: Run every check, signal nothing, and return the PIDs that would be ended.

    Returns:
        The sorted PIDs ended (or, with ``dry_run``, that would be ended); ``[]`` if nothing
        listens on the port. A process that exits on its own before the first signal is not
        included, nor one still alive (in uninterruptible sleep) long after SIGKILL, which is
        logged as a warning.

    Raises:
        TypeError, ValueError: ``port``, ``expect`` or ``timeout`` is invalid (a ``timeout``
            beyond the maximum included).
        ForeignProcessError: A listener belongs to another user (also when running as root),
            or is invisible to this user.
        ProtectedProcessError: A listener is PID 1 or lower, this process or an ancestor.
        UnexpectedProcessError: A listener's command line does not match ``expect``.
    """
    port = _check_port(port)
    expect = _check_expect(expect)
    timeout = _check_timeout(timeout)
    if not isinstance(dry_run, bool):
        raise TypeError(f"dry_run must be a bool, got {dry_run!r}")

    pids, hidden_owners = _listening_pids(port)
    if hidden_owners:
        raise ForeignProcessError(
            f"refusing to clear port {port}: a process this user cannot inspect listens on it "
            f"(owner {', '.join(hidden_owners)}); nothing was signalled",
            pid=None,
            owner=", ".join(hidden_owners),
            port=port,
        )
    infos = [info for info in (_process_info(pid) for pid in sorted(pids)) if info is not None]
    if not infos:
        logger.debug("nothing listens on port %d", port)
        return []
    _check_all(infos, port, expect)
    if dry_run:
        return [info.pid for info in infos]
    return _end(infos, timeout, port)


# --------------------------------------------------------------------------------------------
# Cleanup at exit
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Cleanup:
    port: int | None
    process: ProcessInfo | None
    expect: str | re.Pattern[str] | None
    timeout: float


_cleanups: list[_Cleanup] = []
_cleanups_lock = threading.RLock()
_cleanup_owner = os.getpid()
_atexit_registered = False
_previous_handlers: dict[int, Callable[[int, FrameType | None], object] | int] = {}
_running_cleanups = False


def _run_cleanups() -> None:
    """Run (once each) the cleanups registered by this very process; never raise."""
    global _running_cleanups
    if os.getpid() != _cleanup_owner or _running_cleanups:
        return
    with _cleanups_lock:
        pending = list(reversed(_cleanups))  # last registered, first ended
        _cleanups.clear()
    _running_cleanups = True
    try:
        for cleanup in pending:
            try:
                if cleanup.port is not None:
                    kill_process_on_port(
                        cleanup.port, expect=cleanup.expect, timeout=cleanup.timeout
                    )
                elif cleanup.process is not None and _same_process(cleanup.process):
                    _end([cleanup.process], cleanup.timeout, None)
            except Exception as error:
                # At exit or in a signal handler nobody can act on an exception: report it.
                what = (
                    f"port {cleanup.port}"
                    if cleanup.port is not None
                    else f"PID {cleanup.process.pid if cleanup.process else '?'}"
                )
                logger.warning("cleanup of %s failed: %s", what, error)
    finally:
        _running_cleanups = False


def _on_signal(signum: int, frame: FrameType | None) -> None:
    _run_cleanups()
    previous = _previous_handlers.get(signum, signal.SIG_DFL)
    if callable(previous):
        previous(signum, frame)  # e.g. default_int_handler, which raises KeyboardInterrupt
        return
    if previous == signal.SIG_DFL:
        # Die of the signal as the default action would have: the parent sees the real cause.
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)


def _install_handlers() -> None:
    """Hook SIGTERM and SIGINT (main thread only), chaining the handlers found there."""
    global _atexit_registered
    if not _atexit_registered:
        atexit.register(_run_cleanups)
        _atexit_registered = True
    if threading.current_thread() is not threading.main_thread():
        logger.debug("not in the main thread: cleanup runs at normal exit only")
        return
    for signum in (signal.SIGTERM, signal.SIGINT):
        current = signal.getsignal(signum)
        if current is _on_signal:
            continue
        if current is None or current == signal.SIG_IGN:
            # Ignored: the process would not end on it, so neither must its servers. None: a
            # handler installed outside Python, which could not be chained.
            logger.debug("leaving %s alone (handler %r)", signal.Signals(signum).name, current)
            continue
        _previous_handlers[signum] = current
        signal.signal(signum, _on_signal)


def _after_fork_cleanups() -> None:
    global _cleanups_lock, _cleanup_owner, _running_cleanups
    # The child did not start the parent's servers; its inherited handlers only chain.
    _cleanups_lock = threading.RLock()
    _cleanups.clear()
    _cleanup_owner = os.getpid()
    _running_cleanups = False


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_cleanups)


def register_cleanup(
    *,
    port: int | None = None,
    pid: int | None = None,
    expect: str | re.Pattern[str] | None = None,
    timeout: float = 5.0,
) -> Callable[[], None]:
    """End a server this process started when the process exits, or on SIGTERM or SIGINT.

    Give exactly one of ``port`` (the listeners on the port are ended with
    :func:`kill_process_on_port` and its checks) or ``pid`` (that very process, identified
    now by PID and start time, is ended if it still runs). Cleanups run last-registered first,
    at most once, only in the process that registered them (not in forked children).

    On SIGTERM and SIGINT the handler installed before (Python's ``KeyboardInterrupt`` for
    SIGINT, a handler of the caller's) is called afterwards; with the default action, the
    process then dies of the signal. A signal that was ignored stays ignored. Signal handlers
    can only be installed from the main thread; elsewhere, cleanup happens at normal exit.

    Returns:
        A function that cancels this registration.

    Raises:
        TypeError, ValueError: Neither or both of ``port`` and ``pid``, or an invalid value.
        ProcessLookupError: No process ``pid`` exists.
        KillRefusedError: The process ``pid`` may not be signalled (see
            :func:`kill_process_on_port`).
    """
    expect = _check_expect(expect)
    timeout = _check_timeout(timeout)
    if (port is None) == (pid is None):
        raise TypeError(f"give exactly one of port and pid, got port={port!r}, pid={pid!r}")
    process: ProcessInfo | None = None
    if port is not None:
        port = _check_port(port)
    else:
        if isinstance(pid, bool) or not isinstance(pid, int):
            raise TypeError(f"pid must be an int, got {pid!r}")
        if pid <= 0:
            raise ValueError(f"pid must be positive, got {pid!r}")
        process = _process_info(pid)
        if process is None:
            raise ProcessLookupError(f"no running process with PID {pid}")
        _check_all([process], None, expect)
    cleanup = _Cleanup(port, process, expect, timeout)
    with _cleanups_lock:
        _cleanups.append(cleanup)
        _install_handlers()

    def unregister() -> None:
        with _cleanups_lock, contextlib.suppress(ValueError):
            _cleanups.remove(cleanup)

    return unregister
