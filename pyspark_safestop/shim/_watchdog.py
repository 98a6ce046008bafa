"""The hang watchdog: a Spark Connect RPC that waits too long for its next response is cancelled,
and its caller gets :class:`RpcHangError` naming the call; the session stays usable.

Off unless a hang timeout is set (``PYSPARK_SAFESTOP_HANG_TIMEOUT``, ``install(hang_timeout=)``,
``--safestop-hang-timeout``). Each Spark Connect client created while it is on talks through an
intercepted channel:

- a response stream (``ExecutePlan``, ``ReattachExecute``) is hung when its reader has waited the
  timeout for the *next* response: a query that keeps streaming results is never hung. One
  monitor thread watches the streams being read and cancels the call of the one that ran out;
- a call with a single response (``AnalyzePlan``, ``Config``, ``AddArtifacts``, ...) gets the
  timeout as its deadline, unless the caller's own deadline is shorter.

Only the hung call is cancelled, not the channel, so the next call of the same session works.
Its caller gets ``RpcHangError``, which is no ``grpc.RpcError``: the client's retry policies,
which retry only gRPC errors, do not turn it into another attempt that would hang again. Every
hang is also recorded, with the stacks of all threads at the moment it was declared, for the
pytest plugin's report.

Nothing here uses signals, so it works in any thread, under pytest-xdist and in a debugger.
grpc is imported only when a client is watched (pyspark's client has imported it by then).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from ..client import _layouts, _operations
from . import _reachability
from ._reachability import ServerUnreachableError

__all__ = ["RpcHang", "RpcHangError", "hangs_since", "longest_wait", "watch_client"]

logger = logging.getLogger("pyspark_safestop")

#: Returns the hang timeout in force, in seconds, or None when the watchdog is off.
TimeoutSource = Callable[[], "float | None"]


@dataclass(frozen=True)
class RpcHang:
    """One RPC declared hung: what it was, where it went, how long it waited."""

    method: str
    session_id: str
    operation_id: str
    address: str
    waited: float
    thread: str
    #: The stacks of all threads of the process when the hang was declared.
    stacks: str

    def describe(self) -> str:
        """One sentence naming the call, for error messages and reports."""
        operation = f", operation {self.operation_id}" if self.operation_id else ""
        return (
            f"Spark Connect RPC {self.method} hung: no response for {self.waited:.1f} s "
            f"(session {self.session_id or '?'}{operation}, server {self.address}, "
            f"thread {self.thread!r}); the call was cancelled and the session can go on"
        )


class RpcHangError(TimeoutError):
    """A Spark Connect RPC waited longer than the hang timeout for its next response.

    ``hang`` holds the details: the RPC method, the session and operation ids, the server
    address, the seconds waited and the stacks of all threads when it was declared.
    """

    def __init__(self, hang: RpcHang) -> None:
        super().__init__(hang.describe())
        self.hang = hang


# -- the record of hangs ---------------------------------------------------------------------

_hangs: list[RpcHang] = []
_hangs_lock = threading.Lock()


def _record(hang: RpcHang) -> None:
    with _hangs_lock:
        _hangs.append(hang)
    logger.warning("%s", hang.describe())


#: The longest wait for a response seen while the watchdog was on: (seconds, method).
_longest: list[tuple[float, str]] = [(0.0, "")]


def _note_wait(method: str, seconds: float) -> None:
    if seconds > _longest[0][0]:  # a rare race only loses a record, never corrupts one
        _longest[0] = (seconds, method)


def longest_wait() -> tuple[float, str]:
    """The longest an RPC waited for its next response (a stream) or its response (a single
    one) while the watchdog was on, in seconds, and its method: how close the suite came to
    the hang timeout."""
    return _longest[0]


def hangs_since(index: int) -> tuple[int, list[RpcHang]]:
    """Return the number of hangs recorded so far and those recorded after the first ``index``."""
    with _hangs_lock:
        return len(_hangs), _hangs[index:]


_MONITOR_THREAD = "pyspark-safestop-watchdog"


def _thread_stacks(first: str) -> str:
    """Every thread's stack, the thread named ``first`` (the hung call's) at the top; the
    watchdog's own thread, which only reports, is left out."""
    names = {thread.ident: thread.name for thread in threading.enumerate()}
    parts = []
    for ident, frame in sys._current_frames().items():
        name = names.get(ident, "?")
        if name == _MONITOR_THREAD:
            continue
        stack = "".join(traceback.format_stack(frame))
        parts.append((name != first, f"Thread {name!r} ({ident}):\n{stack}"))
    return "\n".join(text for _, text in sorted(parts, key=lambda part: part[0]))


def _declare(
    method: str,
    *,
    session_id: str,
    request: Any,
    operation_id: str,
    address: str,
    waited: float,
    thread: str,
) -> RpcHang:
    hang = RpcHang(
        method=method,
        session_id=session_id,
        operation_id=operation_id or str(getattr(request, "operation_id", "") or ""),
        address=address,
        waited=waited,
        thread=thread,
        stacks=_thread_stacks(thread),
    )
    _record(hang)
    return hang


def _method_name(details: Any) -> str:
    method = details.method
    if isinstance(method, bytes):
        method = method.decode("utf-8", "replace")
    return str(method).rsplit("/", 1)[-1]


# -- streams: one monitor thread ---------------------------------------------------------------


class _Monitor:
    """Cancels the call of every stream whose reader has waited past its deadline."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._waiting: dict[int, _WatchedStream] = {}
        self._thread: threading.Thread | None = None

    def watch(self, stream: _WatchedStream) -> None:
        with self._condition:
            self._waiting[id(stream)] = stream
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=_MONITOR_THREAD, daemon=True)
                self._thread.start()
            self._condition.notify()

    def unwatch(self, stream: _WatchedStream) -> None:
        with self._condition:
            self._waiting.pop(id(stream), None)

    def _run(self) -> None:
        while True:
            with self._condition:
                now = time.monotonic()
                due = [s for s in self._waiting.values() if s.deadline <= now]
                for stream in due:
                    del self._waiting[id(stream)]
                if not due:
                    nearest = min((s.deadline for s in self._waiting.values()), default=None)
                    self._condition.wait(None if nearest is None else nearest - now)
                    continue
            for stream in due:  # outside the lock: cancelling runs gRPC callbacks
                try:
                    stream.declare_hung()
                except Exception:
                    logger.debug("could not cancel a hung stream", exc_info=True)

    def after_fork(self) -> None:
        # The child has no monitor thread, and the parent's streams are not its own.
        self._condition = threading.Condition()
        self._waiting = {}
        self._thread = None


_MONITOR = _Monitor()


class _WatchedStream:
    """A response stream whose every wait for the next response is bounded."""

    def __init__(self, call: Any, method: str, request: Any, owner: Any) -> None:
        self._call = call
        # gRPC's own calls are iterators; an interceptor of the client's may hand back a mere
        # iterable (Databricks Connect's StreamWrapper, a generator over the call).
        self._responses = call if hasattr(call, "__next__") else iter(call)
        self._method = method
        self._request = request
        self._owner = owner
        self._operation_id = ""
        self._reader = ""
        self._since = 0.0
        self.deadline = 0.0
        self._hang: RpcHang | None = None

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        import grpc

        seconds = self._owner.timeout()
        try:
            if seconds is None:
                response = next(self._responses)
            else:
                self._reader = threading.current_thread().name
                self._since = time.monotonic()
                self.deadline = self._since + seconds
                _MONITOR.watch(self)
                try:
                    response = next(self._responses)
                finally:
                    _MONITOR.unwatch(self)
                    _note_wait(self._method, time.monotonic() - self._since)
        except grpc.RpcError as error:
            if self._hang is not None:
                raise RpcHangError(self._hang) from None
            unreachable = self._owner.unreachable_error(error)
            if unreachable is not None:
                raise unreachable from None
            raise
        _reachability.reached(self._owner.address)
        if not self._operation_id:
            self._operation_id = str(getattr(response, "operation_id", "") or "")
        return response

    def declare_hung(self) -> None:
        """Record the hang and cancel this call (only this one), waking its reader."""
        waited = time.monotonic() - self._since
        owner = self._owner
        self._hang = _declare(
            self._method,
            session_id=owner.session_id,
            request=self._request,
            operation_id=self._operation_id,
            address=owner.address,
            waited=waited,
            thread=self._reader,
        )
        self._call.cancel()

    def __getattr__(self, name: str) -> Any:
        # Everything else a gRPC call offers (cancel, code, trailing_metadata, ...).
        return getattr(self._call, name)


if hasattr(os, "register_at_fork"):  # not on Windows
    os.register_at_fork(after_in_child=_MONITOR.after_fork)


# -- single responses: a deadline --------------------------------------------------------------


class CleanupFailed(TimeoutError):
    """A call that frees server state (a finaliser's) failed within its deadline: it is not
    retried (no ``grpc.RpcError``, which the client's retries and reattachments would send
    again), and the finaliser that sent it goes on."""

    def __init__(self, method: str, seconds: float, error: Any) -> None:
        details = getattr(error, "details", None)
        text = details() if callable(details) else str(error)
        super().__init__(f"cleanup call {method} failed within {seconds:g} s: {text}")


class _CleanupStream:
    """A cleanup call's response stream whose gRPC error comes out as :class:`CleanupFailed`."""

    def __init__(self, call: Any, method: str, seconds: float) -> None:
        self._call = call
        self._responses = call if hasattr(call, "__next__") else iter(call)
        self._method = method
        self._seconds = seconds

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        import grpc

        try:
            return next(self._responses)
        except grpc.RpcError as error:
            raise CleanupFailed(self._method, self._seconds, error) from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._call, name)


class _Failed:
    """What a unary interceptor returns for a call it failed: ``result()`` raises the error
    (the hang, the unreachable server)."""

    def __init__(self, error: Exception) -> None:
        self._error = error

    def result(self, timeout: float | None = None) -> Any:
        raise self._error

    def exception(self, timeout: float | None = None) -> BaseException:
        return self._error

    def traceback(self, timeout: float | None = None) -> Any:
        return self._error.__traceback__

    def done(self) -> bool:
        return True

    def cancelled(self) -> bool:
        return False

    def running(self) -> bool:
        return False

    def cancel(self) -> bool:
        return False

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        fn(self)

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> float | None:
        return None

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return False

    def initial_metadata(self) -> Any:
        return None

    def trailing_metadata(self) -> Any:
        return None

    def code(self) -> Any:
        import grpc

        if isinstance(self._error, ServerUnreachableError):
            return grpc.StatusCode.UNAVAILABLE
        return grpc.StatusCode.DEADLINE_EXCEEDED

    def details(self) -> str:
        return str(self._error)


_INTERCEPTOR_CLASS: type | None = None
#: The cleanup RPCs: a server that cannot be reached fails them at once, as it does upstream.
_RELEASES = frozenset({"ReleaseExecute", "ReleaseSession"})
#: The kinds of ``ExecutePlan`` command a finaliser or ``close()`` sends to free server state.
_CLEANUP_COMMANDS = frozenset({"remove_cached_remote_relation_command"})
_CLEANUP_ML_COMMANDS = frozenset({"delete", "clean_cache"})


def _is_cleanup(request: Any) -> bool:
    """Whether ``request`` frees server state for a finaliser or ``close()``: removing a
    cached relation (a checkpointed DataFrame's ``__del__``), deleting cached ML objects (a
    model's ``__del__``, a client's close). Read from the request itself, whichever client
    line and code path sent it."""
    try:
        plan = getattr(request, "plan", None)
        if plan is None or not plan.HasField("command"):
            return False
        command = plan.command
        kind = command.WhichOneof("command_type")
        if kind in _CLEANUP_COMMANDS:
            return True
        return kind == "ml_command" and command.ml_command.WhichOneof("command") in (
            _CLEANUP_ML_COMMANDS
        )
    except Exception:  # not a request of the shape we know
        return False


def _interceptor_class() -> type:
    """The interceptor class, made on first use so that importing this module imports no grpc."""
    global _INTERCEPTOR_CLASS
    if _INTERCEPTOR_CLASS is not None:
        return _INTERCEPTOR_CLASS
    import grpc

    fields = ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")

    class _Details(grpc.ClientCallDetails):
        """The caller's call details with another deadline."""

        def __init__(self, details: Any, timeout: float) -> None:
            for name in fields:
                setattr(self, name, getattr(details, name, None))
            self.timeout = timeout

    class HangInterceptor(
        grpc.UnaryUnaryClientInterceptor,  # type: ignore[type-arg,misc,unused-ignore]
        grpc.UnaryStreamClientInterceptor,  # type: ignore[type-arg,misc,unused-ignore]
        grpc.StreamUnaryClientInterceptor,  # type: ignore[type-arg,misc,unused-ignore]
    ):
        def __init__(
            self,
            address: str,
            session_id: str,
            timeout: TimeoutSource,
            unreachable: TimeoutSource,
            release: TimeoutSource,
        ) -> None:
            self.address = address
            self.session_id = session_id
            self.timeout = timeout
            self.unreachable = unreachable
            self.release = release

        def unreachable_error(
            self, error: Any, until: float | None = None, method: str = ""
        ) -> ServerUnreachableError | None:
            """The error to raise instead of ``error``, a gRPC error, if its server cannot
            be reached (see :mod:`._reachability`), waiting no later than ``until``. Releases
            never wait: they are cleanup, sent from ``stop()``, the release pool and exit."""
            if method in _RELEASES:
                return None
            code = getattr(error, "code", None)
            if not callable(code) or code() != grpc.StatusCode.UNAVAILABLE:
                return None
            details = getattr(error, "details", None)
            text = str(details() if callable(details) else error)
            return _reachability.after_unavailable(self.address, text, self.unreachable(), until)

        def _cleanup_deadline(self, details: Any, request: Any) -> float | None:
            """The deadline of a cleanup call (a release, a finaliser's removal of a cached
            relation or model), which would otherwise have none: the release timeout."""
            if _method_name(details) not in _RELEASES and not _is_cleanup(request):
                return None
            seconds = self.release()
            own = getattr(details, "timeout", None)
            if seconds is None or (own is not None and own <= seconds):
                return None
            return seconds

        def _single(self, continuation: Any, details: Any, request: Any) -> Any:
            cleanup = self._cleanup_deadline(details, request)
            if cleanup is not None:
                # No hang to declare and no server to wait for: cleanup is best effort.
                outcome = continuation(_Details(details, cleanup), request)
                code = getattr(outcome, "code", None)
                if _is_cleanup(request) and callable(code) and code() != grpc.StatusCode.OK:
                    return _Failed(CleanupFailed(_method_name(details), cleanup, outcome))
                return outcome
            own = getattr(details, "timeout", None)
            until = None if own is None else time.monotonic() + own
            outcome = self._bounded(continuation, details, request)
            if isinstance(outcome, _Failed):
                return outcome
            code = getattr(outcome, "code", None)
            if callable(code) and code() == grpc.StatusCode.OK:
                _reachability.reached(self.address)
                return outcome
            unreachable = self.unreachable_error(outcome, until, _method_name(details))
            return outcome if unreachable is None else _Failed(unreachable)

        def _bounded(self, continuation: Any, details: Any, request: Any) -> Any:
            seconds = self.timeout()
            own = getattr(details, "timeout", None)
            if seconds is None or (own is not None and own <= seconds):
                return continuation(details, request)
            started = time.monotonic()
            outcome = continuation(_Details(details, seconds), request)
            _note_wait(_method_name(details), time.monotonic() - started)
            code = getattr(outcome, "code", None)
            if callable(code) and code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                hang = _declare(
                    _method_name(details),
                    session_id=self.session_id,
                    request=request,
                    operation_id="",
                    address=self.address,
                    waited=time.monotonic() - started,
                    thread=threading.current_thread().name,
                )
                return _Failed(RpcHangError(hang))
            return outcome

        def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
            return self._single(continuation, details, request)

        def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
            return self._single(continuation, details, requests)

        def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
            cleanup = self._cleanup_deadline(details, request)
            if cleanup is not None:
                call = continuation(_Details(details, cleanup), request)
                if not _is_cleanup(request):
                    return call
                return _CleanupStream(call, _method_name(details), cleanup)
            call = continuation(details, request)
            if self.timeout() is None and self.unreachable() is None:
                return call
            return _WatchedStream(call, _method_name(details), request, self)

    _INTERCEPTOR_CLASS = HangInterceptor
    return HangInterceptor


def watch_client(
    client: Any,
    layout: _layouts.Layout,
    timeout: TimeoutSource,
    unreachable: TimeoutSource,
    release: TimeoutSource,
) -> bool:
    """Route ``client``'s RPCs through the watchdog; return whether it was done now.

    ``timeout`` (the hang timeout) and ``unreachable`` (see :mod:`._reachability`) are asked
    at every call, so a later change of the settings applies to this client too (both
    ``None``: calls pass through untouched, but for cleanup). ``release`` is the deadline of
    the cleanup calls: the releases and what finalisers send to free server state.
    """
    import grpc

    interceptor_class = _interceptor_class()
    if getattr(client, "_safestop_watched", False):
        return False
    interceptor = interceptor_class(
        _operations.server_address(client),
        str(getattr(client, "_session_id", "")),
        timeout,
        unreachable,
        release,
    )
    channel = grpc.intercept_channel(client._channel, interceptor)
    _operations.replace_channel(client, layout, channel)
    client._safestop_watched = True
    return True
