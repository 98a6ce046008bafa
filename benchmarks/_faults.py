"""Faults the evidence benchmarks need beyond the test suite's fault proxy.

- :class:`SelectiveHangProxy`: the test suite's :class:`~tests.faultproxy.FaultProxy`, plus
  hanging only every k-th call of a method (a fraction of ``ReleaseExecute`` calls hung).
- :class:`TcpRelay`: a byte relay in front of a server that can *blackhole* its connections:
  it stops moving bytes both ways while keeping every connection open, which is what a client
  sees when a peer or a middlebox silently stops answering. A gRPC-level proxy cannot show
  that: gRPC answers HTTP/2 pings and settings frames on its own.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import grpc

from tests.faultproxy import FaultProxy

__all__ = ["SelectiveHangProxy", "TcpRelay"]


class SelectiveHangProxy(FaultProxy):
    """A :class:`FaultProxy` that can also hang every k-th call of a method.

    ``hang_every("ReleaseExecute", 10)`` hangs calls number 10, 20, 30, ... until the client
    cancels them (or the proxy stops); the others are forwarded. Deterministic on purpose: the
    same suite hangs at the same place on every run and every line.
    """

    def __init__(self, upstream: str, *, max_workers: int = 128) -> None:
        """Create a stopped proxy forwarding to ``upstream`` (``host:port``)."""
        super().__init__(upstream, max_workers=max_workers)
        self._every: dict[str, int] = {}
        self._seen: Counter[str] = Counter()
        self._selected: Counter[str] = Counter()
        self._selective_lock = threading.Lock()

    def __enter__(self) -> SelectiveHangProxy:
        self.start()
        return self

    def hang_every(self, name: str, every: int) -> None:
        """Hang every ``every``-th call to ``name`` (1 hangs them all; 0 hangs none)."""
        with self._selective_lock:
            if every > 0:
                self._every[name] = every
            else:
                self._every.pop(name, None)

    def hung_total(self, name: str) -> int:
        """How many calls to ``name`` were picked to hang so far."""
        with self._selective_lock:
            return self._selected[name]

    def seen(self, name: str) -> int:
        """How many calls to ``name`` arrived so far (hung or forwarded)."""
        with self._selective_lock:
            return self._seen[name]

    def _behaviour(
        self, method: str, request_iterator: Iterator[bytes], context: grpc.ServicerContext
    ) -> Iterator[bytes]:
        short = method.rsplit("/", 1)[-1]
        with self._selective_lock:
            self._seen[short] += 1
            every = self._every.get(short, 0)
            picked = every > 0 and self._seen[short] % every == 0
            if picked:
                self._selected[short] += 1
        if picked:
            _hang_until_cancelled(context)
            return
        yield from super()._behaviour(method, request_iterator, context)


def _hang_until_cancelled(context: grpc.ServicerContext) -> None:
    """Block until the client cancels the call, its deadline passes or the proxy stops."""
    ended = threading.Event()
    if not context.add_callback(ended.set):
        return  # already over
    # The callback is the normal wake-up; the poll is for a termination callback missed.
    while not ended.wait(0.2):
        if not context.is_active():
            return


class TcpRelay:
    """Relays TCP connections from ``127.0.0.1:<port>`` to ``target``; can blackhole them.

    While blackholed, the relay neither reads nor writes on any connection (existing or new)
    but closes none: the client's RPCs get no answer at all, not an error. ``heal()`` lets the
    bytes flow again.
    """

    _CHUNK = 65536
    _POLL = 0.2

    def __init__(self, target_host: str, target_port: int) -> None:
        """Create a stopped relay to ``target_host:target_port``."""
        self._target = (target_host, target_port)
        self._flowing = threading.Event()
        self._flowing.set()
        self._closed = threading.Event()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self.port = 0

    @property
    def url(self) -> str:
        """Spark Connect connection string pointing at the relay."""
        return f"sc://127.0.0.1:{self.port}"

    def start(self) -> int:
        """Listen on a free loopback port; return it."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        listener.settimeout(self._POLL)
        self._listener = listener
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
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.close()
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
