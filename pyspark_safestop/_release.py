"""Stopping one session safely: release it on the server with a deadline, close its channel."""

from __future__ import annotations

import functools
import logging
from typing import Any

from . import _layouts
from ._settings import validate_timeout
from ._state import STATE

__all__ = ["release_session_without_shutdown"]

logger = logging.getLogger("pyspark_safestop")


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
    released = False
    if not _layouts.is_closed(client):
        try:
            wants_release = bool(getattr(session, "release_session_on_close", True))
            if wants_release and _layouts.has_release_session_rpc(client):
                try:
                    _layouts.release_server_side(client, seconds)
                    released = True
                except Exception as error:
                    logger.warning(
                        "session %s could not be released on the server within %.3g s: %s",
                        getattr(client, "_session_id", "?"),
                        seconds,
                        error,
                    )
        finally:
            # Even on KeyboardInterrupt: an open channel keeps its hung RPCs (and a pool
            # worker) alive, and the session is already marked stopped, so nothing else
            # would close it and exit would hang.
            _layouts.close_channel(client)
    if not STATE.installed:
        client.close = functools.partial(_layouts.close_channel, client)
    return released
