"""The shim's process-wide state, shared by the installer, the wrappers and the exit path."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from .._settings import (
    Settings,
    hang_timeout_from_env,
    release_timeout_from_env,
    unreachable_timeout_from_env,
)
from ..client._layouts import Layout

__all__ = ["LOCK", "STATE", "State"]


@dataclass
class State:
    """Whether the shim is installed, with which settings, on which detected layout."""

    installed: bool = False
    settings: Settings = field(
        default_factory=lambda: Settings(
            release_timeout_from_env(), hang_timeout_from_env(), unreachable_timeout_from_env()
        )
    )
    layout: Layout | None = None
    #: Why no layout is known: "not-imported" (yet) or "unknown" (structure not recognised).
    layout_problem: str | None = "not-imported"
    #: How the shim was first activated: "import", "pth", "pytest-plugin" or "install()".
    activated_by: str | None = None


STATE = State()
#: Serialises install, uninstall and patch application (re-entrant: a post-import hook can
#: fire inside install() when the modules are already loaded).
LOCK = threading.RLock()
