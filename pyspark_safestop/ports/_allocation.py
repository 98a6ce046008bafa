"""Allocation: a free port outside the ephemeral range, leased to the calling process.

A lease is a ``flock(LOCK_EX)`` on one file per port in the lease directory; the kernel drops
it when the holder's last descriptor goes away, however the holder exits. The package
docstring states what a lease cannot do.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import fcntl
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ._checks import MAX_PORT, check_port, parse_port
from ._lease_dir import lease_directory

logger = logging.getLogger("pyspark_safestop")

_EPHEMERAL_RANGE_FILE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_RESERVED_PORTS_FILE = Path("/proc/sys/net/ipv4/ip_local_reserved_ports")
#: IANA's dynamic range: the ephemeral range of systems without the Linux ``/proc`` file.
_IANA_EPHEMERAL = (49152, 65535)
#: Lowest port handed out. Below 1024 binding needs privileges, and most development services
#: sit on fixed ports below 10000 (3000, 5432, 6379, 8080, ...): a service started after the
#: allocation should not find its usual port taken.
_FIRST_CANDIDATE = 10000
#: Random candidates tried before giving up; each costs well under a millisecond.
_MAX_ATTEMPTS = 2000


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
    if not 1 <= low <= high <= MAX_PORT:
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
        r for r in (range(_FIRST_CANDIDATE, low), range(high + 1, MAX_PORT + 1)) if len(r) > 0
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
    port = check_port(port)
    family, address = _resolve(host)
    return _bindable(family, address, port)


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
    (and outside ``ip_local_reserved_ports``), leased (see :mod:`pyspark_safestop.ports`), and
    checked to be bindable on ``host`` with ``SO_REUSEADDR`` off. The lease lasts until
    :func:`release_port` or the end of the process. Thread-safe; no port is handed out twice
    while leased, within the process or across processes using this module.

    Args:
        host: Address the port must be bindable on.

    Raises:
        ValueError: ``host`` is empty or cannot be resolved.
        LeaseDirectoryError: The lease directory (see :func:`lease_directory`) could be
            changed by another user; the message names ``PYSPARK_SAFESTOP_PORT_LEASE_DIR``.
        RuntimeError: No free port was found (the ephemeral range covers 10000-65535, or all
            candidates tried were busy).
    """
    family, address = _resolve(host)
    ranges, reserved = _candidates()
    if not ranges:
        low, high = ephemeral_port_range()
        raise RuntimeError(
            f"no port in {_FIRST_CANDIDATE}-{MAX_PORT} lies outside the ephemeral range "
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
    port = check_port(port)
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
        check_port(default, "default")
    raw = os.environ.get(name)
    if raw is not None and raw.strip():
        return parse_port(raw, name)
    if default is not None:
        return default
    return allocate_free_port(host)


def hold_ipv6_loopback(port: int) -> socket.socket | None:
    """Hold ``[::1]:PORT`` (bound, never listening) so that no one else can listen there.

    gRPC may try ``[::1]`` first for ``localhost``: a listener of another user there would
    receive the token (or the queries). Returns ``None`` where IPv6 loopback does not exist (no
    one can listen there either); raises ``RuntimeError`` when another process already holds it.
    """
    try:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    except OSError:
        return None
    try:
        sock.bind(("::1", port))
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            raise RuntimeError(
                f"another process holds [::1]:{port}, where clients of localhost:{port} may "
                "connect: the server is not handed out"
            ) from None
        return None
    return sock
