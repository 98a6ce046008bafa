"""Applying and reverting wrappers, exactly and at most once, now or when a module is imported.

Each applied wrapper is recorded with what the class held before, so reverting restores the
original object itself (or removes the attribute when the class did not define it). Wrappers
are instances of :class:`SafestopWrapper`, so a wrapper already in place is recognised and
never wrapped again, even by a second copy of this state (a reloaded module).
"""

from __future__ import annotations

import inspect
import logging
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import wrapt

from ..client._layouts import Target

__all__ = ["Patcher", "SafestopWrapper", "WrapperFunction", "watch_imports"]

logger = logging.getLogger("pyspark_safestop")

#: wrapt's wrapper signature: ``(wrapped, instance, args, kwargs) -> result``.
WrapperFunction = Callable[[Callable[..., Any], Any, tuple[Any, ...], dict[str, Any]], Any]


class SafestopWrapper(wrapt.FunctionWrapper):  # type: ignore[type-arg,misc,unused-ignore]
    """A wrapt function wrapper that marks an attribute as patched by pyspark-safestop."""


@dataclass(frozen=True)
class _Record:
    target: Target
    owner: type
    had_own: bool
    original: Any
    wrapper: SafestopWrapper


def is_safestop_wrapper(value: object) -> bool:
    """Return whether ``value`` is (or wraps, at any depth) a pyspark-safestop wrapper."""
    seen = 0
    while value is not None and seen < 64:
        if isinstance(value, SafestopWrapper):
            return True
        value = getattr(value, "__wrapped__", None)
        seen += 1
    return False


class Patcher:
    """Applies the wrappers named by targets and reverts exactly what it applied."""

    def __init__(self, roles: Mapping[str, WrapperFunction], enabled: Callable[[], bool]) -> None:
        """``roles`` maps a target's role to its wrapper; ``enabled`` tells wrapt, at each call,
        whether the wrappers run or calls go straight to the original."""
        self._roles = dict(roles)
        self._enabled = enabled
        self._records: dict[str, _Record] = {}
        self._lock = threading.RLock()

    def applied(self) -> list[str]:
        """Return the targets currently wrapped, as ``module:Class.attribute`` strings."""
        with self._lock:
            return list(self._records)

    def apply(self, targets: Iterable[Target]) -> list[str]:
        """Wrap every target whose module is loaded and which is not wrapped yet.

        Targets whose module is not imported yet are skipped; call again when it is.
        Returns the targets wrapped by this call.
        """
        done: list[str] = []
        with self._lock:
            for target in targets:
                key = str(target)
                if key in self._records:
                    continue
                owner = getattr(sys.modules.get(target.module), target.cls, None)
                if not isinstance(owner, type):
                    continue
                had_own = target.attribute in vars(owner)
                try:
                    # getattr_static: the function itself, never a bound method.
                    original = inspect.getattr_static(owner, target.attribute)
                except AttributeError:
                    logger.warning("%s does not exist; not patched", key)
                    continue
                if is_safestop_wrapper(original):
                    logger.debug(
                        "%s is already wrapped by pyspark-safestop; not wrapped again", key
                    )
                    continue
                wrapper = SafestopWrapper(original, self._roles[target.role], enabled=self._enabled)
                setattr(owner, target.attribute, wrapper)
                self._records[key] = _Record(target, owner, had_own, original, wrapper)
                done.append(key)
                logger.debug("patched %s", key)
        return done

    def revert(self) -> list[str]:
        """Restore every attribute this patcher wrapped; return the targets restored."""
        restored: list[str] = []
        with self._lock:
            for key in reversed(list(self._records)):
                record = self._records.pop(key)
                attribute = record.target.attribute
                current = vars(record.owner).get(attribute)
                if current is not record.wrapper:
                    # Someone wrapped or replaced it after us: removing ours would drop theirs.
                    # Our wrapper stays buried there and passes calls straight through.
                    logger.warning(
                        "%s was replaced after pyspark-safestop patched it; left in place", key
                    )
                    continue
                if record.had_own:
                    setattr(record.owner, attribute, record.original)
                else:
                    delattr(record.owner, attribute)
                restored.append(key)
                logger.debug("restored %s", key)
        return restored


_watched: set[str] = set()
_watched_lock = threading.Lock()


def watch_imports(modules: Iterable[str], callback: Callable[[ModuleType], None]) -> None:
    """Call ``callback(module)`` when each module is imported (at once if it already is).

    Registered at most once per module name for the life of the process: wrapt's post-import
    hooks cannot be removed, so the callback itself must do nothing while the shim is off.
    """

    def guarded(module: ModuleType) -> None:
        # An exception escaping a post-import hook would fail the user's `import pyspark...`.
        try:
            callback(module)
        except Exception:
            logger.warning("pyspark-safestop could not patch %s", module.__name__, exc_info=True)

    for name in modules:
        with _watched_lock:
            if name in _watched:
                continue
            _watched.add(name)
        wrapt.register_post_import_hook(guarded, name)
