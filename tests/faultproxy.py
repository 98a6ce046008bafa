"""A fault-injecting gRPC proxy for Spark Connect tests.

:class:`FaultProxy` listens on ``127.0.0.1:<random port>`` and forwards every
call, byte for byte, to an upstream gRPC server (normally a real Spark
Connect server). Per method (by short name, e.g. ``"ReleaseExecute"``) it can
instead make the call hang, delay it, or fail it; and it can die
(:meth:`FaultProxy.kill`) and come back on the same port
(:meth:`FaultProxy.restart`).

Forwarding uses raw bytes through a generic stream-stream handler: the gRPC
wire format is the same for unary and streaming calls, so one handler serves
all Spark Connect methods without any protobuf knowledge.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Union

import grpc

__all__ = ["FaultProxy"]

_log = logging.getLogger("pyspark_safestop")

#: Spark Connect may move large Arrow batches; never let the proxy be the one
#: rejecting a message for its size (-1 = unlimited).
_CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_send_message_length", -1),
    ("grpc.max_receive_message_length", -1),
]

#: Without a client deadline gRPC reports a time_remaining() in the far
#: future; above this we forward "no deadline" rather than a huge timeout.
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
    kind: Literal["hang", "delay", "fail"]
    seconds: float = 0.0
    code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
    details: str = "injected"


def _short_name(method: str) -> str:
    """``/spark.connect.SparkConnectService/ReleaseExecute`` -> ``ReleaseExecute``."""
    return method.rsplit("/", 1)[-1]


def _clean_metadata(metadata: Any) -> _Metadata:
    """Metadata that may be passed on as-is to another gRPC call."""
    if not metadata:
        return ()
    out: list[tuple[str, str | bytes]] = []
    for key, value in metadata:
        k = str(key).lower()
        if k in _RESERVED_KEYS or k.startswith(_RESERVED_PREFIXES):
            continue
        out.append((k, value))
    return tuple(out)


def _upstream_target(upstream: str) -> str:
    """Accept ``host:port`` as well as ``sc://host:port[/;params]``."""
    if upstream.startswith("sc://"):
        upstream = upstream[len("sc://") :]
    return upstream.split("/", 1)[0].split(";", 1)[0]


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
    """Transparent gRPC proxy with per-method fault injection.

    Thread-safe: faults can be changed and counters read from any thread
    while calls are in flight. Typical use::

        with FaultProxy(server.url) as proxy:
            proxy.hang("ReleaseExecute")
            spark = SparkSession.builder.remote(proxy.url).create()
    """

    def __init__(self, upstream: str, *, max_workers: int = 64) -> None:
        """Create a stopped proxy.

        Args:
            upstream: ``host:port`` (or ``sc://host:port``) to forward to.
            max_workers: Handler threads; each in-flight call (including
                hanging ones) holds one.
        """
        self._upstream = _upstream_target(upstream)
        self._max_workers = max_workers
        self._lock = threading.Lock()
        # Notified whenever counters change, for the wait_* helpers.
        self._changed = threading.Condition(self._lock)
        self._faults: dict[str, _Fault] = {}
        self._calls: Counter[str] = Counter()
        self._hung: Counter[str] = Counter()
        # Wake-up events of hanging/delayed calls, so kill()/clear() can
        # release them without waiting for the client.
        self._waiters: set[threading.Event] = set()
        self._server: grpc.Server | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._channel: grpc.Channel | None = None
        self._port: int | None = None

    # -- properties ---------------------------------------------------------

    @property
    def port(self) -> int:
        """Listening port (fixed at the first :meth:`start`)."""
        if self._port is None:
            raise RuntimeError("FaultProxy is not started")
        return self._port

    @property
    def url(self) -> str:
        """Spark Connect connection string pointing at the proxy."""
        return f"sc://127.0.0.1:{self.port}"

    @property
    def upstream(self) -> str:
        """The ``host:port`` calls are forwarded to."""
        return self._upstream

    @property
    def serving(self) -> bool:
        """Whether the proxy currently accepts connections."""
        with self._lock:
            return self._server is not None

    # -- fault configuration ------------------------------------------------

    def hang(self, name: str) -> None:
        """Calls to ``name`` never complete until the client cancels them
        (or the proxy is killed/stopped, or the fault is cleared); they are
        not forwarded."""
        self._set(name, _Fault("hang"))

    def delay(self, name: str, seconds: float) -> None:
        """Calls to ``name`` are forwarded after sleeping ``seconds``."""
        self._set(name, _Fault("delay", seconds=seconds))

    def fail(
        self,
        name: str,
        code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE,
        details: str = "injected",
    ) -> None:
        """Calls to ``name`` fail immediately with ``code`` / ``details``."""
        self._set(name, _Fault("fail", code=code, details=details))

    def clear(self, name: str | None = None) -> None:
        """Remove the fault on ``name`` (all faults if ``None``).

        Calls currently hanging or delayed are released and forwarded
        upstream at once (as if the server had merely been slow).
        """
        with self._lock:
            if name is None:
                self._faults.clear()
            else:
                self._faults.pop(_short_name(name), None)
            waiters = list(self._waiters)
        for event in waiters:
            event.set()

    def _set(self, name: str, fault: _Fault) -> None:
        with self._lock:
            self._faults[_short_name(name)] = fault

    # -- counters -----------------------------------------------------------

    def calls(self, name: str) -> int:
        """How many calls to ``name`` the proxy has received so far."""
        with self._lock:
            return self._calls[_short_name(name)]

    def hung_now(self, name: str) -> int:
        """How many calls to ``name`` are hanging right now."""
        with self._lock:
            return self._hung[_short_name(name)]

    def wait_calls(self, name: str, n: int = 1, timeout: float = 10.0) -> bool:
        """Block until ``calls(name) >= n``; ``False`` on timeout."""
        short = _short_name(name)
        with self._changed:
            return self._changed.wait_for(lambda: self._calls[short] >= n, timeout)

    def wait_hung(self, name: str, n: int = 1, timeout: float = 10.0) -> bool:
        """Block until ``hung_now(name) >= n``; ``False`` on timeout."""
        short = _short_name(name)
        with self._changed:
            return self._changed.wait_for(lambda: self._hung[short] >= n, timeout)

    # -- lifecycle ----------------------------------------------------------

    def start(self) -> int:
        """Start listening (on a random port the first time); return the port."""
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
                # No SO_REUSEPORT: restart() must really own its port, not
                # share it with whatever else grabbed it meanwhile.
                options=[*_CHANNEL_OPTIONS, ("grpc.so_reuseport", 0)],
            )
            wanted = self._port if self._port is not None else 0
            try:
                port = server.add_insecure_port(f"127.0.0.1:{wanted}")
            except RuntimeError as exc:  # newer grpcio raises instead of returning 0
                raise RuntimeError(
                    f"FaultProxy cannot listen on 127.0.0.1:{wanted}: {exc}"
                ) from exc
            if port == 0:
                raise RuntimeError(f"FaultProxy cannot listen on 127.0.0.1:{wanted}")
            server.start()
            self._server = server
            self._executor = executor
            self._port = port
        _log.debug("FaultProxy 127.0.0.1:%d -> %s", port, self._upstream)
        return port

    def kill(self) -> None:
        """Stop serving at once (grace 0): all connections drop and in-flight
        calls are cancelled, as if the server process died. Faults and
        counters are kept; :meth:`restart` comes back on the same port."""
        with self._lock:
            server, self._server = self._server, None
            executor, self._executor = self._executor, None
        if server is not None:
            # Cancels every in-flight call (which releases hanging ones via
            # their termination callbacks). Wait so the port is free for
            # restart().
            server.stop(grace=0).wait(10)
        with self._lock:
            waiters = list(self._waiters)
        for event in waiters:  # fallback; their contexts are inactive by now
            event.set()
        if executor is not None:
            # grpc does not own the pool; without this every kill/restart
            # would leave idle worker threads behind.
            executor.shutdown(wait=False)

    def restart(self) -> int:
        """Listen again on the same port after :meth:`kill`; return it."""
        self.kill()
        return self.start()

    def stop(self) -> None:
        """Kill the server and close the upstream channel. Idempotent."""
        self.kill()
        with self._lock:
            channel, self._channel = self._channel, None
        if channel is not None:
            channel.close()

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

    # -- the proxying itself ------------------------------------------------

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
                # Belt and braces in case a termination callback was missed.
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
        with self._changed:
            self._calls[short] += 1
            fault = self._faults.get(short)
            channel = self._channel
            self._changed.notify_all()

        if fault is not None and fault.kind == "fail":
            context.abort(fault.code, fault.details)  # raises

        if fault is not None and fault.kind in ("hang", "delay"):
            released = threading.Event()
            # Fires when the client cancels / the call ends; False = already over.
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
                return  # client cancelled or proxy killed: nothing to answer
            # Still wanted (delay elapsed, or clear() released a hang):
            # forward as if the server had just been slow.
            with self._lock:
                channel = self._channel

        if channel is None:
            context.abort(grpc.StatusCode.UNAVAILABLE, "fault proxy stopped")
        assert channel is not None  # abort() raised otherwise
        yield from self._forward(channel, method, request_iterator, context)

    def _forward(
        self,
        channel: grpc.Channel,
        method: str,
        request_iterator: Iterator[bytes],
        context: grpc.ServicerContext,
    ) -> Iterator[bytes]:
        """Relay one call to the upstream server, raw bytes both ways."""
        remaining = context.time_remaining()
        timeout = None if remaining is None or remaining > _NO_DEADLINE_ABOVE else remaining
        multicallable: Callable[..., Any] = channel.stream_stream(method, None, None)
        upstream_call = multicallable(
            request_iterator,
            metadata=_clean_metadata(context.invocation_metadata()),
            timeout=timeout,
        )
        # Client gone (cancel, deadline, proxy killed) => cancel upstream too.
        # On normal completion cancel() is a harmless no-op.
        context.add_callback(upstream_call.cancel)

        error: grpc.RpcError | None = None
        try:
            initial = _clean_metadata(upstream_call.initial_metadata())
            if initial:
                context.send_initial_metadata(initial)
            yield from upstream_call
        except grpc.RpcError as exc:
            error = exc
        # Trailers carry Spark Connect's rich error details
        # (grpc-status-details-bin), so relay them on success and failure.
        context.set_trailing_metadata(_relay_trailers(upstream_call.trailing_metadata()))
        if error is not None and context.is_active():
            code = upstream_call.code()
            details = upstream_call.details()
            # abort() raises; deliberately outside the try above.
            context.abort(code or grpc.StatusCode.UNKNOWN, details or "")


def _relay_trailers(metadata: Any) -> _Metadata:
    """Trailing metadata to re-send, keeping ``grpc-status-details-bin``."""
    if not metadata:
        return ()
    out: list[tuple[str, str | bytes]] = []
    for key, value in metadata:
        k = str(key).lower()
        if k == "grpc-status-details-bin" or not (
            k in _RESERVED_KEYS or k.startswith(_RESERVED_PREFIXES)
        ):
            out.append((k, value))
    return tuple(out)
