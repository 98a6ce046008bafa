"""Spark Connect URLs of the servers the fault tools stand in front of."""

from __future__ import annotations

from dataclasses import dataclass

# The server's own guard: a client of localhost may try [::1] first and would send its token
# to whoever listens there.
from pyspark_safestop.ports import hold_ipv6_loopback

__all__ = ["Upstream", "hold_ipv6_loopback"]


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
