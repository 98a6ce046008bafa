"""The shim wing: the patches of the Spark Connect client and what they do.

:mod:`._install` applies and reverts them (:func:`install`, :func:`uninstall`) through the
:mod:`._patcher`, which records every attribute it replaced; :mod:`._wrappers` are the wrappers
themselves, :mod:`._release` the one path every ``stop()`` takes, :mod:`._exit` the interpreter
exit hook, :mod:`._sessions` the live sessions, :mod:`._state` the process-wide state,
:mod:`._watchdog` the hang watchdog and :mod:`._reachability` the fail-fast on a server that
cannot be reached; :mod:`._connect` opens and stops a session for code outside the fixtures.
"""

from __future__ import annotations

from ._connect import connect_session, stop_safely
from ._install import install, is_installed, status, uninstall
from ._reachability import ServerUnreachableError
from ._release import release_session_without_shutdown
from ._watchdog import RpcHangError

__all__ = [
    "RpcHangError",
    "ServerUnreachableError",
    "connect_session",
    "install",
    "is_installed",
    "release_session_without_shutdown",
    "status",
    "stop_safely",
    "uninstall",
]
