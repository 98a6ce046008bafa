"""install(), uninstall(), is_installed() and status(): the shim's life cycle."""

from __future__ import annotations

import logging
import threading
from types import ModuleType
from typing import Any

from .._settings import (
    ENV_ENABLED,
    Settings,
    enabled_from_env,
    hang_timeout_from_env,
    release_timeout_from_env,
    unreachable_timeout_from_env,
    validate_hang_timeout,
    validate_timeout,
    warn,
)
from ..client import _distribution, _layouts
from . import _exit, _sessions
from ._patcher import Patcher, watch_imports
from ._state import LOCK, STATE
from ._wrappers import ROLES

__all__ = ["activate", "install", "is_installed", "status", "uninstall"]

logger = logging.getLogger("pyspark_safestop")

# The wrappers run only while installed: a wrapper left behind by uninstall() passes through.
_PATCHER = Patcher(ROLES, enabled=lambda: STATE.installed)
_unknown_warned = threading.Event()


def install(
    *,
    release_timeout: float | None = None,
    hang_timeout: float | None = None,
    unreachable_timeout: float | None = None,
) -> bool:
    """Activate the shim; return whether it is active after the call.

    Patches Spark Connect's ``SparkSession`` and ``SparkConnectClient`` at once if they are
    imported, otherwise as soon as they are (pyspark is never imported by this call).
    Calling it again never wraps twice; it only updates the settings. With
    ``PYSPARK_SAFESTOP=0`` in the environment nothing is touched and ``False`` is returned.

    ``release_timeout`` bounds the server-side release in ``stop()``, in seconds (default:
    ``PYSPARK_SAFESTOP_RELEASE_TIMEOUT``, else 5). Raises ``ValueError`` if it is not a
    positive number of seconds up to ``MAX_TIMEOUT`` (one day).

    ``hang_timeout`` turns the hang watchdog on for the sessions created from now on: an RPC
    that waits that many seconds for its next response is cancelled and its caller gets
    :class:`~pyspark_safestop.RpcHangError` (default: ``PYSPARK_SAFESTOP_HANG_TIMEOUT``, else
    off; ``0`` turns it off). Raises ``ValueError`` as for ``release_timeout``.

    ``unreachable_timeout``: a call to a server that cannot be reached (connection refused,
    the channel failing to connect) fails with
    :class:`~pyspark_safestop.ServerUnreachableError` once the server has been unreachable
    that long, instead of the client's minutes of retries; a server back within it is
    reconnected to (default: ``PYSPARK_SAFESTOP_UNREACHABLE_TIMEOUT``, else 30; ``0``: off).
    For the sessions created from now on. Raises ``ValueError`` as for ``release_timeout``.
    """
    seconds = (
        release_timeout_from_env()
        if release_timeout is None
        else validate_timeout(release_timeout, "release_timeout")
    )
    hang = (
        hang_timeout_from_env()
        if hang_timeout is None
        else validate_hang_timeout(hang_timeout, "hang_timeout")
    )
    unreachable = (
        unreachable_timeout_from_env()
        if unreachable_timeout is None
        else validate_hang_timeout(unreachable_timeout, "unreachable_timeout")
    )
    if not enabled_from_env():
        logger.warning("install() ignored: %s disables pyspark-safestop", ENV_ENABLED)
        return False
    with LOCK:
        STATE.settings = Settings(
            release_timeout=seconds, hang_timeout=hang, unreachable_timeout=unreachable
        )
        if STATE.installed:
            logger.debug("install(): already installed; settings updated")
            return True
        STATE.installed = True
        STATE.activated_by = "install()"
        _exit.register()
        watch_imports(_layouts.WATCHED_MODULES, _on_module_imported)
        _apply_loaded()
    logger.debug("pyspark-safestop installed (release timeout %.3g s)", seconds)
    return True


def activate(source: str) -> bool:
    """Install with the settings from the environment, recording ``source`` as the path that
    activated the shim ("import", "pth", "pytest-plugin"). Never raises: activation paths run
    where an exception would break an import, an interpreter or a test session."""
    try:
        if not enabled_from_env():
            return False
        with LOCK:
            first = not STATE.installed
            active = install()
            if active and first:
                STATE.activated_by = source
            return active
    except Exception:
        logger.warning(
            "pyspark-safestop could not activate (%s); pyspark is left untouched",
            source,
            exc_info=True,
        )
        return False


def uninstall() -> None:
    """Deactivate the shim and restore every patched attribute to its original object.

    Harmless when the shim is not installed.
    """
    with LOCK:
        if not STATE.installed:
            logger.debug("uninstall(): not installed; nothing to do")
            return
        STATE.installed = False
        restored = _PATCHER.revert()
    logger.debug("pyspark-safestop uninstalled; restored %s", restored)


def is_installed() -> bool:
    """Return whether the shim is active in this process."""
    return STATE.installed


def status() -> dict[str, Any]:
    """Describe the shim in this process (without importing pyspark). Never raises.

    Keys: ``enabled`` (the environment switch), ``installed``, ``activated_by`` (``"import"``,
    ``"pth"``, ``"pytest-plugin"`` or ``"install()"``), ``pyspark_version``,
    ``pyspark_distribution`` (the distribution that installed the module, ``"name version"``,
    e.g. ``"databricks-connect 16.1.7"``, or ``None``),
    ``layout`` (``"3.5"``, ``"4.0"``, ``"4.1"``, ``"4.2+"`` or ``None``), ``layout_problem``
    (``"not-imported"``, ``"unknown"`` or ``None``: ``"unknown"`` is a client imported but not
    recognised, whatever is missing or odd in it), ``release_session_rpc``, ``stop_mode``,
    ``patches`` (the attributes wrapped now), ``settings`` and ``live_sessions``.
    """
    with LOCK:
        layout, problem = STATE.layout, STATE.layout_problem
        if layout is None:
            layout, problem = _layouts.detect_loaded()
        if layout is None:
            stop_mode = None
        elif layout.release_session_rpc:
            stop_mode = "release-then-close"
        else:
            stop_mode = "close-only (this line has no ReleaseSession RPC)"
        return {
            "enabled": enabled_from_env(),
            "installed": STATE.installed,
            "activated_by": STATE.activated_by if STATE.installed else None,
            "pyspark_version": _layouts.installed_pyspark_version(),
            "pyspark_distribution": _distribution.pyspark_distribution(),
            "layout": layout.name if layout else None,
            "layout_problem": problem or None,
            "release_session_rpc": layout.release_session_rpc if layout else None,
            "stop_mode": stop_mode,
            "patches": _PATCHER.applied(),
            "settings": {
                "release_timeout": STATE.settings.release_timeout,
                "hang_timeout": STATE.settings.hang_timeout,
                "unreachable_timeout": STATE.settings.unreachable_timeout,
            },
            "live_sessions": len(_sessions.live()),
        }


def _on_module_imported(module: ModuleType) -> None:
    _apply_loaded(module.__name__)


def _apply_loaded(ready: str | None = None) -> None:
    # `ready`: the module whose post-import hook calls this, done executing although the
    # import system still marks it as initialising.
    with LOCK:
        if not STATE.installed:
            return
        layout, problem = _layouts.detect_loaded(ready)
        if layout is None:
            STATE.layout_problem = problem
            if problem == "unknown" and not _unknown_warned.is_set():
                _unknown_warned.set()
                version = _layouts.installed_pyspark_version() or "(version unknown)"
                message = (
                    f"pyspark {version} has a Spark Connect client this version of "
                    "pyspark-safestop does not recognise; pyspark is left untouched"
                )
                # Logged too, for log readers (a warning that could not be issued already is).
                if warn(message):
                    logger.warning("%s", message)
            return
        STATE.layout, STATE.layout_problem = layout, None
        _PATCHER.apply(layout.targets)
