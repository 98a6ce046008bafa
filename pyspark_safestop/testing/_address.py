"""Spark Connect URLs of the servers the fault tools stand in front of."""

from __future__ import annotations

import errno
import socket
from dataclasses import dataclass

__all__ = ["Upstream", "hold_ipv6_loopback"]


def hold_ipv6_loopback(port: int) -> socket.socket | None:
    """Hold ``[::1]:PORT`` (bound, never listening) so that no one else listens there.

    A client of ``localhost`` may try ``[::1]`` first, and would send its token to whoever
    listens there. ``None`` where IPv6 loopback does not exist; ``RuntimeError`` when another
    process holds it.
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
            raise RuntimeError(f"another process holds [::1]:{port}") from None
        return None
    return sock


@dataclass(frozen=True)
class Upstream:
    """A server given as ``sc://HOST:PORT[/;params]`` or ``HOST:PORT``."""

    host: str
    port: int
    #: ``/;token=...`` and the like, kept as given ("" when there are none).
    params: str = ""

    @classmethod
    def parse(cls, upstream: str) -> Upstream:
        """Read ``upstream``; a ``ValueError`` names it when it is neither form."""
        rest = upstream[len("sc://") :] if upstream.startswith("sc://") else upstream
        address, slash, params = rest.partition("/")
        host, colon, port = address.rpartition(":")
        if not colon or not host or not port.isdigit():
            raise ValueError(
                f"upstream must be sc://HOST:PORT[/;params] or HOST:PORT, got {upstream!r}"
            )
        return cls(host, int(port), slash + params if slash else "")

    @property
    def target(self) -> str:
        """``host:port``, for a gRPC channel or a socket."""
        return f"{self.host}:{self.port}"

    def url_at(self, port: int) -> str:
        """This server's URL with another local port: the same host name (the client picks
        its credentials by it) and the same parameters (the token)."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "[::]", "::") else self.host
        return f"sc://{host}:{port}{self.params}"
