"""What is done to a Spark Connect client, on every line the layouts describe: close its own
channel, release its session on the server with a deadline, shut the process-global release
pool down without waiting, and build a session whose token reaches a local server on every
line (3.5 and Databricks Connect 16.1 send one only over TLS otherwise).

Each operation reads the client's private attributes the way :mod:`._layouts` records them;
the layout detected says which line it is on.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from ._layouts import (
    CONNECT_MODE_ENV,
    REATTACH_MODULE,
    Layout,
    detect_loaded,
)

__all__ = [
    "call_metadata",
    "close_channel",
    "has_release_session_rpc",
    "is_closed",
    "release_on_exit",
    "release_server_side",
    "replace_channel",
    "server_address",
    "session_builder",
    "shutdown_release_pool_nowait",
    "token_needs_channel_builder",
]

# How long exit may wait for the release pool's class lock. With the shim nothing holds it
# for long; without the bound, a lock held by a stuck pre-shim shutdown would hang exit.
_POOL_LOCK_TIMEOUT = 1.0


def is_closed(client: Any) -> bool:
    """Return whether this client's channel was closed (by upstream or by the shim)."""
    return bool(getattr(client, "_closed", False))


def close_channel(client: Any) -> None:
    """Close this client's gRPC channel only, once, and mark the client closed.

    Closing a channel cancels every RPC in flight on it at once, which frees release-pool
    workers stuck on it. gRPC's close takes the channel's own lock and never waits on the
    server. It is skipped where that lock may belong to a thread that will never release it:
    a channel this function closed before (a stopped session's ``__del__`` closes again) and
    interpreter finalisation, where daemon threads (gRPC's own among them) are halted wherever
    they stood, and the process's exit closes the sockets. So it is safe from ``__del__``.
    """
    channel = getattr(client, "_channel", None)
    try:
        if channel is not None and not _closed_here(client) and not sys.is_finalizing():
            channel.close()
    finally:
        client._safestop_channel_closed = True
        # Upstream's is_stopped/is_closed read this; 4.2+ skips its exit-time RPCs when it is set.
        client._closed = True


def _closed_here(client: Any) -> bool:
    # Not `_closed`: upstream also sets that when the server's session changed (a restarted
    # server), leaving the channel open for close() to close.
    return bool(getattr(client, "_safestop_channel_closed", False))


def has_release_session_rpc() -> bool:
    """Return whether the loaded client line has the ``ReleaseSession`` RPC (3.5 has not), as
    its layout says; ``False`` for a client no layout describes (nothing is sent to it)."""
    layout, _ = detect_loaded()
    return layout is not None and layout.release_session_rpc


def release_on_exit(client: Any) -> bool:
    """Return whether upstream would release this client's session at exit (4.2+ opt-in)."""
    return bool(getattr(client, "_release_session_on_exit", False))


#: Client methods giving the metadata of a call, most specific first. Databricks Connect adds
#: per-thread headers through its own (``metadata()`` in 16.1, ``_builder_metadata()`` later);
#: Apache PySpark's clients have neither and send their channel builder's.
_METADATA_METHODS = ("_builder_metadata", "metadata")


def call_metadata(client: Any) -> Any:
    """Return the metadata ``client`` itself would send with a call."""
    for name in _METADATA_METHODS:
        method = getattr(client, name, None)
        if callable(method):
            return method()
    return client._builder.metadata()


def release_server_side(client: Any, timeout: float) -> None:
    """Send one ``ReleaseSession`` RPC with a deadline, as upstream builds it, without retries.

    Errors are converted the way upstream converts them (``_handle_error`` raises).
    """
    from pyspark.sql.connect import proto

    request = proto.ReleaseSessionRequest()
    request.session_id = client._session_id
    request.client_type = client._builder.userAgent
    if getattr(client, "_user_id", None):
        request.user_context.user_id = client._user_id
    try:
        # `_stub` raises upstream's NO_ACTIVE_SESSION error once the client is closed.
        response = client._stub.ReleaseSession(
            request, metadata=call_metadata(client), timeout=timeout
        )
        verify = getattr(client, "_verify_response_integrity", None)
        if verify is not None:
            verify(response)
    except Exception as error:
        client._handle_error(error)


def shutdown_release_pool_nowait(layout: Layout) -> bool:
    """Shut the process-global release pool down without waiting on its workers.

    Returns whether a pool was shut down. Queued releases are cancelled; a new pool is
    created on demand by upstream if anything still runs a query afterwards.
    """
    reattach_mod = sys.modules.get(REATTACH_MODULE)
    reattach_cls = getattr(reattach_mod, "ExecutePlanResponseReattachableIterator", None)
    if reattach_cls is None:
        return False
    lock = getattr(reattach_cls, "_lock", None)
    acquired = lock.acquire(timeout=_POOL_LOCK_TIMEOUT) if lock is not None else False
    try:
        pool = getattr(reattach_cls, layout.pool_attribute, None)
        if pool is None:
            return False
        setattr(reattach_cls, layout.pool_attribute, None)
    finally:
        if acquired and lock is not None:
            lock.release()
    if layout.pool_shutdown == "close":
        # multiprocessing.pool.ThreadPool: close() refuses new work and returns at once;
        # its workers are daemon threads, so nothing joins them at exit.
        pool.close()
    else:
        pool.shutdown(wait=False, cancel_futures=True)
    return True


# -- sending a token to a local server ----------------------------------------------------------


def token_needs_channel_builder() -> bool:
    """Whether the installed client line ignores a ``;token=`` URL on a plain local channel.

    4.0+ clients send the token over local credentials when the URL's host is ``localhost``
    (their channel builder is ``DefaultChannelBuilder``, with a ``use_ssl`` apart from
    ``secure``). 3.5 sends a token only over TLS, so a ``remote(url)`` with a token cannot
    reach a plain local server there; neither can Databricks Connect 16.1, whose
    ``DefaultChannelBuilder`` has no ``use_ssl`` and no local path. Imports pyspark's Spark
    Connect client.
    """
    from pyspark.sql.connect.client import core

    builder = getattr(core, "DefaultChannelBuilder", None)
    return builder is None or not hasattr(builder, "use_ssl")


def session_builder(url: str) -> Any:
    """Return a ``SparkSession.Builder`` for ``url`` that sends its token on every client line.

    On 4.0+ this is ``builder.remote(url)``. On 3.5, for a ``sc://localhost:PORT/;token=...``
    URL, the builder gets a channel builder that sends the token over gRPC local credentials
    (which gRPC allows on loopback connections only), as 4.0+ does by itself. Like pyspark's
    ``pyspark.sql.SparkSession.builder.remote(url)``, it puts the process in Connect mode.
    """
    from pyspark.sql.connect.session import SparkSession

    # What pyspark.sql.SparkSession.builder.remote(url) does before it builds a Connect
    # session: in the full distribution, pyspark.sql.functions, Window, pyspark.ml and
    # pyspark.testing choose Connect or classic by this variable, and without it fail with
    # SESSION_OR_CONTEXT_NOT_EXISTS (pyspark-client and Databricks Connect are Connect only).
    os.environ[CONNECT_MODE_ENV] = "1"
    builder = SparkSession.builder
    if not token_needs_channel_builder() or ";token=" not in url:
        return builder.remote(url)
    channel_builder = _local_token_channel_builder(url)
    if channel_builder is None:
        return builder.remote(url)
    return builder.channelBuilder(channel_builder)


def _local_token_channel_builder(url: str) -> Any:
    import grpc
    from pyspark.sql.connect.client import core

    # Databricks Connect 16.1 parses URLs in DefaultChannelBuilder (3.5: in ChannelBuilder).
    base = getattr(core, "DefaultChannelBuilder", core.ChannelBuilder)

    class LocalTokenChannelBuilder(base):  # type: ignore[misc,valid-type]
        """The client's channel builder, with 4.0's local-credentials path for a token."""

        def toChannel(self) -> Any:
            token = _param(self, core.ChannelBuilder.PARAM_TOKEN) or ""
            credentials = grpc.composite_channel_credentials(
                grpc.local_channel_credentials(), grpc.access_token_call_credentials(token)
            )
            if base is not core.ChannelBuilder:
                # Its own helper adds the channel options and the client's interceptors.
                return self._secure_channel(self.endpoint, credentials)
            return grpc.secure_channel(
                f"{self.host}:{self.port}", credentials, options=self._channel_options
            )

    built = LocalTokenChannelBuilder(url)
    # Anything but localhost, or TLS asked for, keeps the client's own behaviour (TLS), as
    # 4.0+ does.
    wants_tls = str(_param(built, core.ChannelBuilder.PARAM_USE_SSL)).lower() == "true"
    if (
        built.host != "localhost"
        or wants_tls
        or _param(built, core.ChannelBuilder.PARAM_TOKEN) is None
    ):
        return None
    return built


def _param(builder: Any, name: str) -> str | None:
    """One URL parameter of a channel builder (3.5 keeps them in ``params``, later lines behind
    ``getDefault``)."""
    if hasattr(builder, "getDefault"):
        value = builder.getDefault(name, None)
    else:
        value = builder.params.get(name)
    return None if value is None else str(value)


def server_address(client: Any) -> str:
    """Return ``host:port`` of the client's server (never its URL, which may hold a token)."""
    try:
        return str(client._builder.endpoint)
    except Exception:
        return "?"


def replace_channel(client: Any, layout: Layout, channel: Any) -> None:
    """Make ``client`` talk through ``channel`` (a wrapper of its own channel): every stub the
    client holds is rebuilt on it. Closing the wrapper closes the client's real channel."""
    import pyspark.sql.connect.proto.base_pb2_grpc as grpc_lib

    for path in layout.stubs:
        *parents, name = path.split(".")
        owner = client
        for parent in parents:
            owner = getattr(owner, parent, None)
        # The object's own attribute only: 4.0's _stub is a read-only property.
        if owner is not None and name in getattr(owner, "__dict__", {}):
            setattr(owner, name, grpc_lib.SparkConnectServiceStub(channel))
    client._channel = channel
