"""Stopping one session safely: release it on the server with a deadline, close its channel.

:func:`release_and_close` is the one path every stop takes (the ``stop()`` wrapper, the exit
hook and the public helper); the public helper alone validates its arguments and handles a
shim that is not installed.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from .._settings import validate_timeout
from ..client import _operations
from ._state import STATE

__all__ = ["release_and_close", "release_session_without_shutdown", "wants_release"]

logger = logging.getLogger("pyspark_safestop")


def wants_release(session: Any) -> bool:
    """Return whether stopping ``session`` should release it on the server (as upstream would)."""
    return bool(getattr(session, "release_session_on_close", True)) and (
        _operations.has_release_session_rpc()
    )


def release_and_close(client: Any, timeout: float, *, release: bool) -> bool:
    """Release ``client``'s session on the server (if ``release``) within ``timeout`` seconds,
    then close its channel; return whether the server confirmed the release.

    A failed release is logged, not raised. A client already closed is not released again
    (upstream also marks a client closed when the server's session changed, a restarted
    server, so its channel is still closed). The channel is closed whatever happens, even on
    ``KeyboardInterrupt``: an open channel keeps its hung RPCs (and a release-pool worker)
    alive, and nothing else would close it.
    """
    if _operations.is_closed(client):
        _operations.close_channel(client)
        return False
    released = False
    try:
        if release:
            try:
                _operations.release_server_side(client, timeout)
                released = True
            except Exception as error:
                logger.warning(
                    "session %s could not be released on the server within %.3g s: %s",
                    getattr(client, "_session_id", "?"),
                    timeout,
                    error,
                )
    finally:
        _operations.close_channel(client)
    return released


def release_session_without_shutdown(session: Any, timeout: float | None = None) -> bool:
    """Release a Spark Connect session on the server and close its own channel.

    The process-global release pool that every session shares is left alone, so no other
    session can deadlock on it. The ``ReleaseSession`` RPC is sent once, with a deadline of
    ``timeout`` seconds (default: the shim's release timeout, 5 s unless configured); its
    failure is logged, not raised. Then this session's gRPC channel is closed, which cancels
    any RPC of this session still in flight (a hung ``ReleaseExecute`` among them). On
    PySpark 3.5, which has no ``ReleaseSession`` RPC, only the channel is closed; so too
    when ``session.release_session_on_close`` is false.

    When the shim is not installed, the session's client ``close`` is also replaced, on that
    instance only, by a channel-only close, so a later ``stop()`` or garbage collection of
    the session cannot shut the shared pool down.

    Returns whether the server confirmed the release. Calling it again is harmless.

    Raises ``ValueError`` if ``timeout`` is not a positive number of seconds, ``TypeError`` if
    ``session`` is not a Spark Connect session (a classic session has no such problem).
    """
    seconds = (
        STATE.settings.release_timeout if timeout is None else validate_timeout(timeout, "timeout")
    )
    client = getattr(session, "client", None)
    if client is None or not hasattr(client, "_channel"):
        raise TypeError(
            "release_session_without_shutdown() needs a Spark Connect SparkSession, "
            f"got {type(session).__name__}"
        )
    released = release_and_close(client, seconds, release=wants_release(session))
    if not STATE.installed:
        client.close = functools.partial(_operations.close_channel, client)
    return released
