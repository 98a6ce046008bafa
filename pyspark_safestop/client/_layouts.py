"""Everything that depends on how a PySpark Spark Connect client line is built.

This is the only module that knows PySpark's private attribute names. A new PySpark release
that moves things around means a new :class:`Layout` here and nothing elsewhere.

Layouts are recognised by structure, not by version strings: ``pyspark``, ``pyspark-client``
and ``pyspark-connect`` all install the module ``pyspark`` and backports move code between
patch releases, so the shape of the classes is the only reliable witness.

=========  =====================================================================  ==========
layout     release pool on the reattachable iterator                              ReleaseSession
=========  =====================================================================  ==========
``3.5``    ``_release_thread_pool`` (a ``ThreadPool``), joined under a class lock  no such RPC
``4.0``    ``_release_thread_pool_instance`` (``ThreadPoolExecutor``), shut down   yes
           waiting, under a class lock; the iterator's ``__del__`` closes it
``4.1``    as 4.0, without the iterator's ``__del__``                             yes
``4.2+``   per-iterator release futures; ``close()`` waits 10 s on them           yes
=========  =====================================================================  ==========
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from dataclasses import dataclass, replace
from typing import Any

__all__ = [
    "CLIENT_MODULE",
    "LAYOUTS",
    "REATTACH_MODULE",
    "SESSION_MODULE",
    "Layout",
    "Target",
    "call_metadata",
    "close_channel",
    "detect",
    "detect_loaded",
    "has_release_session_rpc",
    "installed_pyspark_version",
    "is_closed",
    "pyspark_package_dirs",
    "release_on_exit",
    "release_server_side",
    "replace_channel",
    "server_address",
    "session_builder",
    "shutdown_release_pool_nowait",
    "token_needs_channel_builder",
]

SESSION_MODULE = "pyspark.sql.connect.session"
#: Set by pyspark's own builder for a Connect session: the process is in Connect mode.
CONNECT_MODE_ENV = "SPARK_CONNECT_MODE_ENABLED"
CLIENT_MODULE = "pyspark.sql.connect.client.core"
REATTACH_MODULE = "pyspark.sql.connect.client.reattach"

#: Modules whose import makes patches applicable; the post-import hooks watch these.
WATCHED_MODULES = (CLIENT_MODULE, SESSION_MODULE)

# How long exit may wait for the release pool's class lock. With the shim nothing holds it
# for long; without the bound, a lock held by a stuck pre-shim shutdown would hang exit.
_POOL_LOCK_TIMEOUT = 1.0


@dataclass(frozen=True)
class Target:
    """One attribute to wrap: ``module:cls.attribute``, handled by the wrapper named ``role``."""

    module: str
    cls: str
    attribute: str
    role: str

    def __str__(self) -> str:
        return f"{self.module}:{self.cls}.{self.attribute}"


_TRACK = Target(SESSION_MODULE, "SparkSession", "__init__", "track_session")
_STOP = Target(SESSION_MODULE, "SparkSession", "stop", "stop")
_CLOSE = Target(CLIENT_MODULE, "SparkConnectClient", "close", "close")
_RELEASE = Target(CLIENT_MODULE, "SparkConnectClient", "release_session", "release_session")


@dataclass(frozen=True)
class Layout:
    """What the shim needs to know about one client line."""

    name: str
    #: Whether the client has the ``ReleaseSession`` RPC (absent on 3.5).
    release_session_rpc: bool
    #: Class attribute of the reattachable iterator holding the process-global pool.
    pool_attribute: str
    #: How that pool is shut down without waiting: ``"close"`` (a ``multiprocessing`` thread
    #: pool, whose daemon workers nothing joins) or ``"shutdown"`` (a ``ThreadPoolExecutor``).
    pool_shutdown: str
    #: What goes wrong on this line without the shim, as the regression tests reproduce it
    #: (``doctor`` reports it).
    symptom: str
    #: The client's gRPC stubs, as dotted attribute paths from the client: the watchdog gives
    #: each a stub on its intercepted channel (the client holds the channel's stubs, not it).
    stubs: tuple[str, ...]
    targets: tuple[Target, ...]


_HANGS_AT_EXIT = "the interpreter hangs at exit while an RPC is in flight"

LAYOUT_3_5 = Layout(
    name="3.5",
    release_session_rpc=False,
    pool_attribute="_release_thread_pool",
    pool_shutdown="close",
    symptom="stop() hangs forever when a ReleaseExecute RPC hangs, and so does every session "
    "after it",
    stubs=("_stub", "_artifact_manager._stub"),
    targets=(_TRACK, _STOP, _CLOSE),
)
LAYOUT_4_0 = Layout(
    name="4.0",
    release_session_rpc=True,
    pool_attribute="_release_thread_pool_instance",
    pool_shutdown="shutdown",
    symptom="stop() hangs forever when a ReleaseExecute or ReleaseSession RPC hangs; "
    + _HANGS_AT_EXIT,
    # 4.0 made _stub a property that refuses a closed client; the stub itself moved. Databricks
    # Connect 16.1, built like 4.0 otherwise, keeps it in _stub.
    stubs=("_internal_stub", "_stub", "_artifact_manager._stub"),
    targets=(_TRACK, _STOP, _CLOSE, _RELEASE),
)
LAYOUT_4_1 = replace(LAYOUT_4_0, name="4.1")
LAYOUT_4_2 = replace(
    LAYOUT_4_0,
    name="4.2+",
    symptom="stop() waits 10 s for each hung ReleaseExecute and forever for a hung "
    "ReleaseSession (4.3: 10 min); " + _HANGS_AT_EXIT,
)

LAYOUTS = (LAYOUT_3_5, LAYOUT_4_0, LAYOUT_4_1, LAYOUT_4_2)


def _has(cls: type, *names: str) -> bool:
    return all(hasattr(cls, name) for name in names)


def detect(reattach_cls: type, client_cls: type, session_cls: type | None = None) -> Layout | None:
    """Return the layout of these classes, or ``None`` when the structure is not known."""
    if not _has(client_cls, "close") or (session_cls is not None and not _has(session_cls, "stop")):
        return None
    own = vars(reattach_cls)
    if "_instances" in own and _has(reattach_cls, "shutdown_threadpool_if_idle"):
        layout = LAYOUT_4_2
    elif "_release_thread_pool_instance" in own and _has(
        reattach_cls, "_get_or_create_release_thread_pool", "shutdown"
    ):
        # 4.1 dropped the iterator's __del__ (SPARK-52076); nothing else differs for us.
        layout = LAYOUT_4_0 if "__del__" in own else LAYOUT_4_1
    elif "_release_thread_pool" in own and _has(
        reattach_cls, "_initialize_pool_if_necessary", "shutdown"
    ):
        layout = LAYOUT_3_5
    else:
        return None
    if layout.release_session_rpc and not _has(client_cls, "release_session"):
        return None
    return layout


def _executing(module: Any, ready: str | None) -> bool:
    """Whether ``module`` is still executing (a circular import), its classes perhaps not yet
    defined. The import system marks a module as initialising until its post-import hooks
    have run: ``ready`` names the module whose hook is running, which has finished."""
    if getattr(module, "__name__", None) == ready:
        return False
    return bool(getattr(getattr(module, "__spec__", None), "_initializing", False))


def detect_loaded(ready: str | None = None) -> tuple[Layout | None, str]:
    """Detect the layout from the modules already imported, without importing anything.

    Returns ``(layout, "")``, or ``(None, reason)``: ``"not-imported"`` while the client is not
    imported yet, or still executing (normal, the hooks try again), ``"unknown"`` for a client
    that finished importing without a structure this module knows (classes missing or not
    classes, a session module without the client module). ``ready`` names a module whose
    post-import hook is running. Never raises, whatever the modules look like.
    """
    try:
        return _detect_loaded(ready)
    except Exception:  # an attribute access that raises, in a module built otherwise
        return None, "unknown"


def _detect_loaded(ready: str | None) -> tuple[Layout | None, str]:
    session_mod = sys.modules.get(SESSION_MODULE)
    client_mod = sys.modules.get(CLIENT_MODULE)
    reattach_mod = sys.modules.get(REATTACH_MODULE)
    if client_mod is None:
        # Every known line's session module imports the client module as it starts: a session
        # module done without it comes from a distribution built otherwise.
        finished = session_mod is not None and not _executing(session_mod, ready)
        return None, "unknown" if finished else "not-imported"
    client_cls = getattr(client_mod, "SparkConnectClient", None)
    reattach_cls = (
        getattr(reattach_mod, "ExecutePlanResponseReattachableIterator", None)
        if reattach_mod is not None
        else None
    )
    if not isinstance(client_cls, type) or not isinstance(reattach_cls, type):
        modules = (client_mod, reattach_mod)
        if any(m is not None and _executing(m, ready) for m in modules):
            return None, "not-imported"
        return None, "unknown"
    session_cls = getattr(session_mod, "SparkSession", None) if session_mod else None
    layout = detect(
        reattach_cls, client_cls, session_cls if isinstance(session_cls, type) else None
    )
    if layout is None:
        return None, "unknown"
    return layout, ""


_VERSION_RE = re.compile(r"""__version__\s*(?::\s*str\s*)?=\s*["']([^"']+)["']""")


def pyspark_package_dirs() -> list[str]:
    """Return the folders of the installed ``pyspark`` package, found without importing it.

    Empty when pyspark is not installed; never raises.
    """
    try:
        spec = importlib.util.find_spec("pyspark")
    except (ImportError, ValueError):
        # ValueError: a module object without a spec is already in sys.modules.
        return []
    if spec is None or not spec.submodule_search_locations:
        return []
    return [str(folder) for folder in spec.submodule_search_locations]


def installed_pyspark_version() -> str | None:
    """Return the installed ``pyspark`` module's version without importing pyspark.

    All three distributions install the same module, so its own ``version.py`` is read
    rather than any distribution's metadata. ``None`` when it cannot be told; never raises.
    """
    try:
        return _pyspark_version()
    except Exception:  # a pyspark built otherwise (odd attributes, an unreadable version.py)
        return None


def _pyspark_version() -> str | None:
    module = sys.modules.get("pyspark")
    version = getattr(module, "__version__", None) if module is not None else None
    if isinstance(version, str):
        return version
    for folder in pyspark_package_dirs():
        try:
            with open(f"{folder}/version.py", encoding="utf-8") as handle:
                match = _VERSION_RE.search(handle.read())
        except (OSError, UnicodeDecodeError):
            continue
        if match:
            return match.group(1)
    return None


# --- client internals ------------------------------------------------------------------------


def is_closed(client: Any) -> bool:
    """Return whether this client's channel was closed (by upstream or by the shim)."""
    return bool(getattr(client, "_closed", False))


def close_channel(client: Any) -> None:
    """Close this client's gRPC channel only, and mark the client closed.

    Closing a channel cancels every RPC in flight on it at once, which frees release-pool
    workers stuck on it. It neither locks nor waits, so it is safe from ``__del__``.
    """
    channel = getattr(client, "_channel", None)
    if channel is not None:
        channel.close()
    # Upstream's is_stopped/is_closed read this; 4.2+ skips its exit-time RPCs when it is set.
    client._closed = True


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
