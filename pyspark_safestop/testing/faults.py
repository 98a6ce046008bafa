"""A fault-injecting gRPC proxy for Spark Connect: make chosen RPCs hang, lag or fail.

:class:`FaultProxy` is a real gRPC server on ``127.0.0.1:<free port>`` with one generic
handler that forwards every method, byte for byte, as a raw stream-stream call to the real
server (the gRPC wire format is the same for unary and streaming calls, so no protobuf
knowledge is needed). Per method (by short name, e.g. ``"ReleaseExecute"``) it can instead
hang the call until the client cancels it, delay it, hold each of its responses (pace), or fail it;
for every call, every k-th
call, or only the calls whose first request message contains a marker (the bytes of a SQL
text, say). It can drop every connection (:meth:`FaultProxy.kill`) and come back on the same
port (:meth:`FaultProxy.restart`). It counts the calls per method.

The client's metadata (``authorization`` included) goes to the server unchanged, and the
server's trailers (Spark's error details) come back unchanged. Typical use, in a suite that
wants to prove it survives a hung RPC::

    from pyspark.sql.connect.session import SparkSession
    from pyspark_safestop.testing.faults import FaultProxy

    def test_a_hung_release_does_not_hang_the_suite(spark_connect_url):
        with FaultProxy(spark_connect_url) as proxy:
            proxy.hang("ReleaseExecute")
            spark = SparkSession.builder.remote(proxy.url).create()
            spark.range(10).collect()
            spark.stop()  # returns promptly with pyspark-safestop active
            assert proxy.calls("ReleaseExecute") >= 1

Needs ``grpcio`` (``pip install pyspark-safestop[testing]``); the rest of the package never
imports it.
"""

from __future__ import annotations

import itertools
import logging
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Union

import grpc

from pyspark_safestop.testing._address import Upstream, hold_ipv6_loopback
from pyspark_safestop.testing.tls import TestCertificate

__all__ = ["FaultProxy"]

_log = logging.getLogger("pyspark_safestop")

#: Spark Connect may move large Arrow batches; never let the proxy be the one rejecting a
#: message for its size (-1 = unlimited).
_CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
]

#: Without a client deadline gRPC reports a time_remaining() in the far future; above this
#: the proxy forwards "no deadline" rather than a huge timeout.
_NO_DEADLINE_ABOVE = 365 * 24 * 3600.0

#: Metadata keys gRPC manages itself and refuses (or mangles) if re-sent.
_RESERVED_PREFIXES = ("grpc-", ":")
_RESERVED_KEYS = frozenset({"te", "content-type", "user-agent"})

_Metadata = tuple[tuple[str, Union[str, bytes]], ...]

# grpc-stubs makes GenericRpcHandler generic, the runtime class is not.
if TYPE_CHECKING:
    _GenericRpcHandler = grpc.GenericRpcHandler[bytes, bytes]
else:
    _GenericRpcHandler = grpc.GenericRpcHandler


@dataclass(frozen=True)
class _Fault:
    kind: Literal["hang", "delay", "pace", "fail"]
    seconds: float = 0.0
    code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
    details: str = "injected"
    every: int = 1
    marker: bytes | None = None


def _short_name(method: str) -> str:
    """``/spark.connect.SparkConnectService/ReleaseExecute`` -> ``ReleaseExecute``."""
    return method.rsplit("/", 1)[-1]


def _clean_metadata(metadata: Any, keep: frozenset[str] = frozenset()) -> _Metadata:
    """Metadata that may be passed on as-is to another gRPC call (with the reserved keys in
    ``keep`` kept)."""
    if not metadata:
        return ()
    out: list[tuple[str, str | bytes]] = []
    for key, value in metadata:
        k = str(key).lower()
        if k in keep or not (k in _RESERVED_KEYS or k.startswith(_RESERVED_PREFIXES)):
            out.append((k, value))
    return tuple(out)


#: Trailers carry Spark Connect's rich error details.
_TRAILERS_KEPT = frozenset({"grpc-status-details-bin"})


def _check_every(every: int) -> int:
    if not isinstance(every, int) or isinstance(every, bool) or every < 1:
        raise ValueError(f"every must be an integer >= 1, got {every!r}")
    return every


class _Handler(_GenericRpcHandler):
    """Routes every method to :meth:`FaultProxy._behaviour`."""

    def __init__(self, proxy: FaultProxy) -> None:
        self._proxy = proxy

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[bytes, bytes] | None:
        method = handler_call_details.method

        def behaviour(
            request_iterator: Iterator[bytes], context: grpc.ServicerContext
        ) -> Iterator[bytes]:
            return self._proxy._behaviour(method, request_iterator, context)

        # No (de)serializers: requests and responses stay raw bytes.
        return grpc.stream_stream_rpc_method_handler(behaviour)


class FaultProxy:
    """Transparent gRPC proxy in front of a Spark Connect server, with per-method faults.

    ``upstream`` is the server's URL (``sc://HOST:PORT[/;params]``, as the plugin's
    ``spark_connect_url`` fixture gives it) or ``HOST:PORT``. :attr:`url` is the same URL
    pointing at the proxy (same host name and parameters, the token included), for
    ``SparkSession.builder.remote(...)``.

    Each method has at most one fault; setting another replaces it. A fault applies to the
    calls whose first request message contains ``marker`` (all calls if it is ``None``), and
    among those to every ``every``-th one (1: all of them). Faults can be changed and counters
    read from any thread while calls are in flight. ``max_workers`` bounds the calls in flight
    (hanging ones included).
    """

    def __init__(
        self, upstream: str, *, max_workers: int = 128, tls: TestCertificate | None = None
    ) -> None:
        """Create a stopped proxy forwarding to ``upstream``; :meth:`start` or ``with``. With
        ``tls``, clients reach it over TLS with that certificate (its :attr:`url` says
        ``use_ssl=true``; the client's process must trust it, see :mod:`.tls`); it still
        talks to ``upstream`` as ``upstream``'s URL says."""
        if not isinstance(max_workers, int) or max_workers < 1:
            raise ValueError(f"max_workers must be an integer >= 1, got {max_workers!r}")
        self._tls = tls
        self._address = Upstream.parse(upstream)
        self._upstream = self._address.target
        self._max_workers = max_workers
        self._lock = threading.Lock()
        # Notified whenever counters change, for the wait_* methods.
        self._changed = threading.Condition(self._lock)
        self._faults: dict[str, _Fault] = {}
        self._calls: Counter[str] = Counter()
        self._matched: Counter[str] = Counter()
        self._faulted: Counter[str] = Counter()
        self._hung: Counter[str] = Counter()
        # Wake-up events of hanging/delayed calls, so kill()/clear() can release them
        # without waiting for the client.
        self._waiters: set[threading.Event] = set()
        self._server: grpc.Server | None = None
        # [::1] at the proxy's port, held while the URL names localhost (see start()).
        self._ipv6_hold: socket.socket | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._channel: grpc.Channel | None = None
        self._port: int | None = None

    # -- addresses ------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """Listening port (fixed at the first :meth:`start`)."""
        if self._port is None:
            raise RuntimeError("FaultProxy is not started")
        return self._port

    @property
    def url(self) -> str:
        """The upstream URL with the proxy's port (and ``;use_ssl=true`` with TLS): what a
        client connects to."""
        url = self._address.url_at(self.port)
        if self._tls is None:
            return url
        return f"{url};use_ssl=true" if "/;" in url else f"{url}/;use_ssl=true"

    @property
    def upstream(self) -> str:
        """The ``host:port`` calls are forwarded to."""
        return self._upstream

    @property
    def serving(self) -> bool:
        """Whether the proxy currently accepts connections."""
        with self._lock:
            return self._server is not None

    # -- faults ---------------------------------------------------------------------------------

    def hang(self, method: str, *, every: int = 1, marker: bytes | None = None) -> None:
        """Calls to ``method`` are not forwarded and never complete until the client cancels
        them (or the proxy is killed or stopped, or the fault is cleared)."""
        self._set(method, _Fault("hang", every=_check_every(every), marker=marker))

    def delay(
        self, method: str, seconds: float, *, every: int = 1, marker: bytes | None = None
    ) -> None:
        """Calls to ``method`` are forwarded after ``seconds`` seconds."""
        if not seconds >= 0:
            raise ValueError(f"seconds must be >= 0, got {seconds!r}")
        self._set(
            method, _Fault("delay", seconds=seconds, every=_check_every(every), marker=marker)
        )

    def pace(
        self, method: str, seconds: float, *, every: int = 1, marker: bytes | None = None
    ) -> None:
        """Each response of a call to ``method`` is passed on ``seconds`` seconds after the
        previous one: a stream that is slow but never stalls for longer than that."""
        if not seconds >= 0:
            raise ValueError(f"seconds must be >= 0, got {seconds!r}")
        self._set(method, _Fault("pace", seconds=seconds, every=_check_every(every), marker=marker))

    def fail(
        self,
        method: str,
        code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE,
        details: str = "injected",
        *,
        every: int = 1,
        marker: bytes | None = None,
    ) -> None:
        """Calls to ``method`` fail at once with status ``code`` and ``details``."""
        fault = _Fault("fail", code=code, details=details, every=_check_every(every), marker=marker)
        self._set(method, fault)

    def clear(self, method: str | None = None) -> None:
        """Remove the fault on ``method`` (every fault if ``None``).

        Calls hanging or delayed right now are released and forwarded at once, as if the
        server had merely been slow.
        """
        with self._lock:
            if method is None:
                self._faults.clear()
            else:
                self._faults.pop(_short_name(method), None)
            waiters = list(self._waiters)
        for event in waiters:
            event.set()

    def _set(self, method: str, fault: _Fault) -> None:
        if fault.marker is not None and not isinstance(fault.marker, bytes):
            raise ValueError(f"marker must be bytes, got {fault.marker!r}")
        with self._lock:
            short = _short_name(method)
            self._faults[short] = fault
            self._matched[short] = 0

    # -- counters -------------------------------------------------------------------------------

    def calls(self, method: str | None = None) -> int:
        """How many calls to ``method`` (to any method if ``None``) the proxy has received so
        far."""
        with self._lock:
            if method is None:
                return sum(self._calls.values())
            return self._calls[_short_name(method)]

    def faulted(self, method: str) -> int:
        """How many calls to ``method`` a fault was applied to so far."""
        with self._lock:
            return self._faulted[_short_name(method)]

    def hung_now(self, method: str) -> int:
        """How many calls to ``method`` are hanging right now."""
        with self._lock:
            return self._hung[_short_name(method)]

    def wait_calls(self, method: str, n: int = 1, timeout: float = 10.0) -> bool:
        """Block until ``calls(method) >= n``; ``False`` on timeout."""
        short = _short_name(method)
        with self._changed:
            return self._changed.wait_for(lambda: self._calls[short] >= n, timeout)

    def wait_hung(self, method: str, n: int = 1, timeout: float = 10.0) -> bool:
        """Block until ``hung_now(method) >= n``; ``False`` on timeout."""
        short = _short_name(method)
        with self._changed:
            return self._changed.wait_for(lambda: self._hung[short] >= n, timeout)

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> int:
        """Start listening (on a free port the first time); return the port."""
        with self._lock:
            if self._server is not None:
                raise RuntimeError("FaultProxy already started")
            if self._channel is None:
                self._channel = grpc.insecure_channel(self._upstream, options=_CHANNEL_OPTIONS)
            executor = ThreadPoolExecutor(
                max_workers=self._max_workers, thread_name_prefix="faultproxy"
            )
            server = grpc.server(
                executor,
                handlers=[_Handler(self)],
                # No SO_REUSEPORT: restart() must really own its port, not share it with
                # whatever else grabbed it meanwhile.
                options=[*_CHANNEL_OPTIONS, ("grpc.so_reuseport", 0)],
            )
            wanted = self._port if self._port is not None else 0
            try:
                if self._tls is None:
                    port = server.add_insecure_port(f"127.0.0.1:{wanted}")
                else:
                    credentials = grpc.ssl_server_credentials([self._tls.server_credentials()])
                    port = server.add_secure_port(f"127.0.0.1:{wanted}", credentials)
            except RuntimeError as exc:  # newer grpcio raises instead of returning 0
                executor.shutdown(wait=False)
                raise RuntimeError(
                    f"FaultProxy cannot listen on 127.0.0.1:{wanted}: {exc}"
                ) from exc
            if port == 0:
                executor.shutdown(wait=False)
                raise RuntimeError(f"FaultProxy cannot listen on 127.0.0.1:{wanted}")
            if self._address.host == "localhost" and self._ipv6_hold is None:
                # The client may try [::1] first: nobody else may listen there for its token.
                try:
                    self._ipv6_hold = hold_ipv6_loopback(port)
                except RuntimeError:
                    executor.shutdown(wait=False)
                    raise
            server.start()
            self._server = server
            self._executor = executor
            self._port = port
        _log.debug("FaultProxy 127.0.0.1:%d -> %s", port, self._upstream)
        return port

    def kill(self) -> None:
        """Stop serving at once: every connection drops and calls in flight are cancelled,
        as if the server process died. Faults and counters are kept; :meth:`restart` comes
        back on the same port."""
        with self._lock:
            server, self._server = self._server, None
            executor, self._executor = self._executor, None
        if server is not None:
            # Cancels every call in flight (which releases hanging ones through their
            # termination callbacks); waited for, so that the port is free for restart().
            server.stop(grace=0).wait(10)
        with self._lock:
            waiters = list(self._waiters)
        for event in waiters:  # their contexts are inactive by now
            event.set()
        if executor is not None:
            # gRPC does not own the pool: without this every kill leaves idle threads behind.
            executor.shutdown(wait=False)

    def restart(self) -> int:
        """Drop every connection and listen again on the same port; return it."""
        self.kill()
        return self.start()

    def stop(self) -> None:
        """Kill the server and close the upstream channel. Idempotent."""
        self.kill()
        with self._lock:
            channel, self._channel = self._channel, None
            hold, self._ipv6_hold = self._ipv6_hold, None
        if channel is not None:
            channel.close()
        if hold is not None:
            hold.close()

    def __enter__(self) -> FaultProxy:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- the proxying itself --------------------------------------------------------------------

    def _pick(self, short: str, fault: _Fault | None, first: bytes | None) -> _Fault | None:
        """The fault to apply to this call, counting it (called under the lock)."""
        if fault is None:
            return None
        if fault.marker is not None and (first is None or fault.marker not in first):
            return None
        self._matched[short] += 1
        if self._matched[short] % fault.every:
            return None
        self._faulted[short] += 1
        return fault

    def _wait(
        self, event: threading.Event, context: grpc.ServicerContext, seconds: float | None
    ) -> None:
        """Wait until ``event`` is set, the RPC ends, or ``seconds`` elapse."""
        deadline = None if seconds is None else time.monotonic() + seconds
        with self._lock:
            self._waiters.add(event)
        try:
            while True:
                step = 0.1 if deadline is None else min(0.1, deadline - time.monotonic())
                if step <= 0 or event.wait(step):
                    return
                # In case a termination callback was missed.
                if not context.is_active():
                    return
        finally:
            with self._lock:
                self._waiters.discard(event)

    def _behaviour(
        self, method: str, request_iterator: Iterator[bytes], context: grpc.ServicerContext
    ) -> Iterator[bytes]:
        """Handle one call: apply the configured fault, else forward it."""
        short = _short_name(method)
        with self._lock:
            fault = self._faults.get(short)
        requests: Iterator[bytes] = request_iterator
        first: bytes | None = None
        if fault is not None and fault.marker is not None:
            # The marker is looked for in the first request; it is forwarded all the same.
            first = next(request_iterator, None)
            requests = itertools.chain(() if first is None else (first,), request_iterator)
        with self._changed:
            self._calls[short] += 1
            fault = self._pick(short, self._faults.get(short), first)
            channel = self._channel
            self._changed.notify_all()

        if fault is not None and fault.kind == "fail":
            context.abort(fault.code, fault.details)  # raises

        if fault is not None and fault.kind in ("hang", "delay"):
            released = threading.Event()
            # Fires when the client cancels or the call ends; False: already over.
            if not context.add_callback(released.set):
                return
            if fault.kind == "hang":
                with self._changed:
                    self._hung[short] += 1
                    self._changed.notify_all()
                try:
                    self._wait(released, context, None)
                finally:
                    with self._changed:
                        self._hung[short] -= 1
                        self._changed.notify_all()
            else:
                self._wait(released, context, fault.seconds)
            if not context.is_active():
                return  # the client cancelled or the proxy was killed: nothing to answer
            # Still wanted (the delay elapsed, or clear() released a hang): forward it as if
            # the server had just been slow.
            with self._lock:
                channel = self._channel

        if channel is None:
            context.abort(grpc.StatusCode.UNAVAILABLE, "fault proxy stopped")
        assert channel is not None  # abort() raised otherwise
        pace = fault.seconds if fault is not None and fault.kind == "pace" else 0.0
        yield from self._forward(channel, method, requests, context, pace)

    def _forward(
        self,
        channel: grpc.Channel,
        method: str,
        requests: Iterator[bytes],
        context: grpc.ServicerContext,
        pace: float = 0.0,
    ) -> Iterator[bytes]:
        """Relay one call to the upstream server, raw bytes both ways (each response held
        ``pace`` seconds)."""
        remaining = context.time_remaining()
        timeout = None if remaining is None or remaining > _NO_DEADLINE_ABOVE else remaining
        multicallable: Callable[..., Any] = channel.stream_stream(method, None, None)
        upstream_call = multicallable(
            requests,
            metadata=_clean_metadata(context.invocation_metadata()),
            timeout=timeout,
        )
        # The client gone (cancelled, deadline, proxy killed): cancel upstream too. On normal
        # completion cancel() is a harmless no-op.
        context.add_callback(upstream_call.cancel)

        error: grpc.RpcError | None = None
        try:
            initial = _clean_metadata(upstream_call.initial_metadata())
            if initial:
                context.send_initial_metadata(initial)
            for response in upstream_call:
                if pace:
                    self._wait(threading.Event(), context, pace)
                yield response
        except grpc.RpcError as exc:
            error = exc
        # Trailers carry Spark Connect's rich error details (grpc-status-details-bin): relay
        # them on success and failure alike.
        context.set_trailing_metadata(
            _clean_metadata(upstream_call.trailing_metadata(), keep=_TRAILERS_KEPT)
        )
        if error is not None and context.is_active():
            code = upstream_call.code()
            details = upstream_call.details()
            # abort() raises; deliberately outside the try above.
            context.abort(code or grpc.StatusCode.UNKNOWN, details or "")
