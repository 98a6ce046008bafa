"""Everything that depends on how a PySpark Spark Connect client line is built.

With :mod:`._operations` (what is done to a client: close its channel, release its session,
shut the pool down, build a session), the only module that knows PySpark's private attribute
names. A new PySpark release that moves things around means a new :class:`Layout` here (and,
where an operation changes, a branch there) and nothing elsewhere.

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
    "detect",
    "detect_loaded",
    "installed_pyspark_version",
    "pyspark_package_dirs",
]

SESSION_MODULE = "pyspark.sql.connect.session"
#: Set by pyspark's own builder for a Connect session: the process is in Connect mode.
CONNECT_MODE_ENV = "SPARK_CONNECT_MODE_ENABLED"
CLIENT_MODULE = "pyspark.sql.connect.client.core"
REATTACH_MODULE = "pyspark.sql.connect.client.reattach"

#: Modules whose import makes patches applicable; the post-import hooks watch these.
WATCHED_MODULES = (CLIENT_MODULE, SESSION_MODULE)


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
