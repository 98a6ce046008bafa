"""A TCP relay in front of a Spark Connect server that can blackhole its connections.

While blackholed, :class:`TcpRelay` stops moving bytes both ways but keeps every connection
open, which is what a client sees when a peer or a middlebox silently stops answering. A
gRPC-level proxy cannot show that: gRPC answers HTTP/2 pings and settings frames on its own.
Standard library only::

    with TcpRelay(spark_connect_url) as relay:
        spark = SparkSession.builder.remote(relay.url).create()
        spark.range(10).collect()
        relay.blackhole()
        spark.stop()  # bounded by the release timeout with pyspark-safestop active
        relay.heal()
"""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Any

from pyspark_safestop.testing._address import Upstream, hold_ipv6_loopback

__all__ = ["TcpRelay"]


class TcpRelay:
    """Relays TCP connections from ``127.0.0.1:<port>`` to ``target``; can blackhole them.

    While blackholed, the relay neither reads nor writes on any connection (existing or new)
    but closes none: the client's RPCs get no answer at all, not an error. ``heal()`` lets the
    bytes flow again.
    """

    _CHUNK = 65536
    _POLL = 0.2

    def __init__(self, upstream: str) -> None:
        """Create a stopped relay to ``upstream`` (``sc://HOST:PORT[/;params]`` or
        ``HOST:PORT``); :meth:`start` or ``with``."""
        self._address = Upstream.parse(upstream)
        self._target = (self._address.host, self._address.port)
        self._flowing = threading.Event()
        self._flowing.set()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._ipv6_hold: socket.socket | None = None
        self.port = 0

    @property
    def url(self) -> str:
        """The upstream URL with the relay's port: what a client connects to."""
        return self._address.url_at(self.port)

    def start(self) -> int:
        """Listen on a free loopback port; return it."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        listener.settimeout(self._POLL)
        self._listener = listener
        if self._address.host == "localhost":
            # The client may try [::1] first: nobody else may listen there for its token.
            try:
                self._ipv6_hold = hold_ipv6_loopback(listener.getsockname()[1])
            except RuntimeError:
                listener.close()
                raise
        self.port = listener.getsockname()[1]
        threading.Thread(target=self._accept_loop, name="relay-accept", daemon=True).start()
        return self.port

    def blackhole(self) -> None:
        """Stop moving bytes on every connection, keeping them all open."""
        self._flowing.clear()

    def heal(self) -> None:
        """Let bytes flow again."""
        self._flowing.set()

    def stop(self) -> None:
        """Close the listener and every connection. Idempotent."""
        self._closed.set()
        with self._lock:
            sockets = list(self._sockets)
            self._sockets.clear()
        for held in (self._listener, self._ipv6_hold):
            if held is not None:
                with contextlib.suppress(OSError):
                    held.close()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.close()

    def __enter__(self) -> TcpRelay:
        self.start()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.stop()

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            try:
                server = socket.create_connection(self._target, timeout=10)
            except OSError:
                client.close()
                continue
            for sock in (client, server):
                sock.settimeout(self._POLL)
            with self._lock:
                self._sockets.update((client, server))
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _wait_flowing(self) -> bool:
        """Wait while blackholed; return False when the relay is closing."""
        while not self._flowing.wait(self._POLL):
            if self._closed.is_set():
                return False
        return not self._closed.is_set()

    def _send_all(self, dst: socket.socket, data: bytes) -> bool:
        """Send ``data`` (held back while blackholed, even if read just before); False when
        the relay is closing. The sockets have a short timeout so that the pumps notice a
        blackhole or a stop; a timeout on a send only means the peer is slow."""
        view = memoryview(data)
        while view:
            if not self._wait_flowing():
                return False
            try:
                sent = dst.send(view)
            except socket.timeout:
                continue
            view = view[sent:]
        return True

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while self._wait_flowing():
                try:
                    data = src.recv(self._CHUNK)
                except socket.timeout:
                    continue
                if not data:
                    break
                if not self._send_all(dst, data):
                    break
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    sock.close()
            with self._lock:
                self._sockets.discard(src)
                self._sockets.discard(dst)
