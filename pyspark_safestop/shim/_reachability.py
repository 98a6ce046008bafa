"""Fail fast on a server that cannot be reached, instead of retrying it for minutes.

Spark Connect's client retries a call that fails with ``UNAVAILABLE`` (connection refused, the
channel failing to connect, the server gone mid-call) for at least ten minutes, at every call:
a suite whose server died spends that at every remaining test. The watched channels
(:mod:`._watchdog`) report each ``UNAVAILABLE`` here, and the call then waits, at most until the
server has been unreachable for the unreachable timeout (counted from its first failure, across
calls and retries), for the server's port to accept a connection again:

- it does: the original error goes back to the client, whose retry reaches the server (one that
  restarted on the same port, a network that came back);
- it does not: the caller gets :class:`ServerUnreachableError`, which is no ``grpc.RpcError``,
  so the client's retry policies let it through at once.

An owner that knows a server died (the pytest plugin watches the servers it starts) says so with
:func:`mark_dead`; calls to it then fail at once, naming why, until :func:`mark_alive`. Any
response from a server clears its failures.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass

__all__ = [
    "ServerUnreachableError",
    "after_unavailable",
    "mark_alive",
    "mark_dead",
    "reached",
    "stop_waiting",
]

#: How often a waiting call tries the server's port.
_PROBE_INTERVAL = 0.25
_PROBE_TIMEOUT = 1.0


class ServerUnreachableError(ConnectionError):
    """A Spark Connect server could not be reached within the unreachable timeout.

    ``address`` is ``host:port``; ``last_error`` the last gRPC error's details; ``waited`` the
    seconds the server had been unreachable; ``reason`` why, when its owner knows (a server that
    died: its exit status or signal).
    """

    def __init__(self, address: str, last_error: str, waited: float, reason: str = "") -> None:
        self.address = address
        self.last_error = last_error
        self.waited = waited
        self.reason = reason
        why = f"{reason}; " if reason else ""
        super().__init__(
            f"the Spark Connect server at {address} cannot be reached ({why}unreachable for "
            f"{waited:.1f} s; last error: {last_error})"
        )


@dataclass
class _Server:
    failing_since: float | None = None
    dead: str | None = None


_lock = threading.Lock()
_servers: dict[str, _Server] = {}
#: Set at interpreter exit: a call waiting for its server must not hold the exit up.
_exiting = threading.Event()


def stop_waiting() -> None:
    """From now on no call waits for its server (the interpreter is exiting)."""
    _exiting.set()


def _key(address: str) -> str:
    # localhost and 127.0.0.1 are the same server here: an owner names it by the one, the
    # client's URL by the other.
    host, _, port = address.rpartition(":")
    return f"127.0.0.1:{port}" if host in ("localhost", "127.0.0.1", "[::1]") else address


def mark_dead(address: str, reason: str) -> None:
    """Say that the server at ``address`` is gone, and why: calls to it fail at once."""
    with _lock:
        _servers.setdefault(_key(address), _Server()).dead = reason


def mark_alive(address: str) -> None:
    """Say that the server at ``address`` is back (restarted on the same port)."""
    with _lock:
        _servers.pop(_key(address), None)


def reached(address: str) -> None:
    """A response came from ``address``: it is not failing."""
    key = _key(address)
    if key not in _servers:  # the common case, without the lock
        return
    with _lock:
        server = _servers.get(key)
        if server is not None and server.dead is None:
            del _servers[key]


def _accepts(address: str) -> bool:
    host, _, port = address.rpartition(":")
    if not port.isdigit():
        return True  # nothing to probe: let the client decide
    try:
        probe = socket.create_connection((host.strip("[]"), int(port)), timeout=_PROBE_TIMEOUT)
    except (OSError, ValueError):
        return False
    probe.close()
    return True


def after_unavailable(
    address: str, details: str, timeout: float | None, until: float | None = None
) -> ServerUnreachableError | None:
    """A call to ``address`` failed with ``UNAVAILABLE`` (``details``): wait for the server as
    described in the module; return the error to raise instead, or ``None`` to hand the
    original error back to the client. ``timeout`` ``None``: nothing is done. ``until``: the
    call's own deadline (``time.monotonic()``), never waited past: the call's own error then
    stands (a release in ``stop()`` keeps its release timeout)."""
    if timeout is None or _exiting.is_set():
        return None
    key = _key(address)
    now = time.monotonic()
    with _lock:
        server = _servers.setdefault(key, _Server())
        if server.failing_since is None:
            server.failing_since = now
        since = server.failing_since
    while True:
        with _lock:
            dead = _servers.get(key, _Server()).dead
        waited = time.monotonic() - since
        if dead is not None:
            return ServerUnreachableError(address, details, waited, dead)
        # Checked before the port: one that accepts connections while every call fails (a
        # proxy or load balancer before a dead server) is unreachable all the same.
        if waited >= timeout:
            return ServerUnreachableError(address, details, waited)
        if _accepts(address) or _exiting.is_set():
            return None
        now = time.monotonic()
        if until is not None and now >= until:
            return None
        left = min(timeout - waited, float("inf") if until is None else until - now)
        time.sleep(min(_PROBE_INTERVAL, max(0.0, left)))
