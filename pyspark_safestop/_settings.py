"""Settings: the environment switches and the validated values in force.

Environment variables are read by the user's shell, CI or a `.pth` file, where an exception
would break an interpreter that never asked for us; a bad value there gives one warning and
the default. Values passed to functions by code are checked strictly and raise ``ValueError``.
"""

from __future__ import annotations

import math
import os
import threading
import warnings
from dataclasses import dataclass

__all__ = [
    "DEFAULT_RELEASE_TIMEOUT",
    "ENV_ENABLED",
    "ENV_RELEASE_TIMEOUT",
    "SafestopWarning",
    "Settings",
    "enabled_from_env",
    "release_timeout_from_env",
    "validate_timeout",
]

ENV_ENABLED = "PYSPARK_SAFESTOP"
ENV_RELEASE_TIMEOUT = "PYSPARK_SAFESTOP_RELEASE_TIMEOUT"

#: Seconds allowed for the server-side ``ReleaseSession`` RPC when nothing else is configured.
DEFAULT_RELEASE_TIMEOUT = 5.0

_FALSE_WORDS = frozenset({"0", "false", "no", "off", "disable", "disabled"})
_TRUE_WORDS = frozenset({"", "1", "true", "yes", "on", "enable", "enabled"})

_warned: set[tuple[str, str]] = set()
_warned_lock = threading.Lock()


class SafestopWarning(RuntimeWarning):
    """Warned when pyspark-safestop falls back to a safe default or leaves pyspark untouched."""


@dataclass(frozen=True)
class Settings:
    """The settings in force while the shim is installed."""

    release_timeout: float


def _warn_once(name: str, value: str, message: str) -> None:
    # One warning per variable and value: the same bad value read by every install() call
    # (or every subprocess of a test run) must not flood the output.
    with _warned_lock:
        if (name, value) in _warned:
            return
        _warned.add((name, value))
    # A warning, not a log record: it reaches the user once whatever logging is configured.
    warnings.warn(message, SafestopWarning, stacklevel=3)


def enabled_from_env() -> bool:
    """Return whether ``PYSPARK_SAFESTOP`` allows the shim (unset means yes).

    ``0``, ``false``, ``no`` and ``off`` (any case) disable it. Anything unrecognised gives
    one warning and keeps the shim enabled, the safe default for a test suite.
    """
    raw = os.environ.get(ENV_ENABLED)
    if raw is None:
        return True
    word = raw.strip().lower()
    if word in _FALSE_WORDS:
        return False
    if word not in _TRUE_WORDS:
        _warn_once(
            ENV_ENABLED,
            raw,
            f"{ENV_ENABLED}={raw!r} is not understood (use 0 or 1); keeping the shim enabled",
        )
    return True


def validate_timeout(value: object, name: str) -> float:
    """Return ``value`` as a positive, finite number of seconds, or raise ``ValueError``.

    ``name`` is the parameter's name, used in the error message.
    """
    # bool is an int subclass; True seconds is certainly a mistake.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    seconds = float(value)
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"{name} must be a positive, finite number of seconds, got {value!r}")
    return seconds


def release_timeout_from_env() -> float:
    """Return ``PYSPARK_SAFESTOP_RELEASE_TIMEOUT`` in seconds, or the default.

    A value that is not a positive, finite number gives one warning and the default.
    """
    raw = os.environ.get(ENV_RELEASE_TIMEOUT)
    if raw is None or not raw.strip():
        return DEFAULT_RELEASE_TIMEOUT
    try:
        return validate_timeout(float(raw), ENV_RELEASE_TIMEOUT)
    except ValueError:
        _warn_once(
            ENV_RELEASE_TIMEOUT,
            raw,
            f"{ENV_RELEASE_TIMEOUT}={raw!r} is not a positive number of seconds; "
            f"using the default, {DEFAULT_RELEASE_TIMEOUT:g}",
        )
        return DEFAULT_RELEASE_TIMEOUT
