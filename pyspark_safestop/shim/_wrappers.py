"""The wrappers put around Spark Connect's methods, in wrapt's ``(wrapped, instance, args,
kwargs)`` form. wrapt calls them only while the shim is installed (the patcher creates them with
``enabled=``); otherwise, and for a wrapper left behind by ``uninstall()``, calls go straight to
upstream.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ..client import _operations
from . import _sessions, _watchdog
from ._release import release_and_close, wants_release
from ._state import STATE

__all__ = ["ROLES"]

logger = logging.getLogger("pyspark_safestop")

_Wrapped = Callable[..., Any]


def track_session(
    wrapped: _Wrapped, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """``SparkSession.__init__``: remember the session (weakly) for the exit path, and route
    its client's RPCs through the watchdog: the hang and unreachable timeouts, and a deadline
    for cleanup calls."""
    result = wrapped(*args, **kwargs)
    if instance is not None:
        _sessions.add(instance)
        if STATE.layout is not None:
            _watchdog.watch_client(
                instance.client,
                STATE.layout,
                _hang_timeout,
                _unreachable_timeout,
                _release_timeout,
            )
    return result


def _hang_timeout() -> float | None:
    # Read at every call: install() may change it, and uninstall() turns the watchdog off.
    return STATE.settings.hang_timeout if STATE.installed else None


def _unreachable_timeout() -> float | None:
    return STATE.settings.unreachable_timeout if STATE.installed else None


def _release_timeout() -> float | None:
    return STATE.settings.release_timeout if STATE.installed else None


def stop(wrapped: _Wrapped, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``SparkSession.stop``: release with a deadline and close this channel, outside the
    class-level session lock; then let upstream do the rest (default/active session reset,
    local-mode server shutdown), which finds the client closed and so neither sends a second,
    unbounded release nor touches the shared pool."""
    if instance is None:
        return wrapped(*args, **kwargs)
    if not _sessions.mark_stopped(instance):
        logger.debug("stop() of a session already stopped: nothing to do")
        return None
    release_and_close(
        instance.client, STATE.settings.release_timeout, release=wants_release(instance)
    )
    return wrapped(*args, **kwargs)


def close(wrapped: _Wrapped, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """``SparkConnectClient.close``: close this client's channel only. Upstream would shut the
    process-global release pool down (waiting, under its class lock, up to 4.1) or wait 10 s on
    release futures (4.2+). Never waits, so it is safe from ``__del__``."""
    if instance is None:
        return wrapped(*args, **kwargs)
    _operations.close_channel(instance)
    return None


def release_session(
    wrapped: _Wrapped, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """``SparkConnectClient.release_session``: one attempt with the shim's deadline instead of
    upstream's retries with no deadline (or a 10-minute one on 4.3). Raises as upstream does."""
    if instance is None:
        return wrapped(*args, **kwargs)
    _operations.release_server_side(instance, STATE.settings.release_timeout)
    return None


#: Wrapper for each role named by a ``_layouts.Target``.
ROLES = {
    "track_session": track_session,
    "stop": stop,
    "close": close,
    "release_session": release_session,
}
