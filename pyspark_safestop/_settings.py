"""Settings: the environment switches and the validated values in force.

Environment variables are read by the user's shell, CI or a `.pth` file, where an exception
would break an interpreter that never asked for us; a bad value there gives one warning and
the default. Values passed to functions by code are checked strictly and raise ``ValueError``.

Warnings may be errors (``python -W error``, ``PYTHONWARNINGS=error``, pytest's
``filterwarnings = error``): a warning about a bad value is then logged instead, and the
default still applies, so that an import, the ``.pth`` hook or pytest's start never fails
because of it.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
import warnings
from dataclasses import dataclass

__all__ = [
    "DEFAULT_MASTER",
    "DEFAULT_RELEASE_TIMEOUT",
    "DEFAULT_REUSE_IDLE",
    "DEFAULT_UNREACHABLE_TIMEOUT",
    "ENV_ENABLED",
    "ENV_HANG_TIMEOUT",
    "ENV_MASTER",
    "ENV_RELEASE_TIMEOUT",
    "ENV_REUSE_IDLE",
    "ENV_REUSE_SERVER",
    "ENV_UNREACHABLE_TIMEOUT",
    "MAX_TIMEOUT",
    "SafestopWarning",
    "Settings",
    "enabled_from_env",
    "environment_problems",
    "hang_timeout_from_env",
    "master_from_env",
    "parse_conf",
    "parse_count",
    "parse_seconds",
    "release_timeout_from_env",
    "reuse_idle_from_env",
    "reuse_server_from_env",
    "unreachable_timeout_from_env",
    "validate_hang_timeout",
    "validate_master",
    "validate_timeout",
    "warn",
]

logger = logging.getLogger("pyspark_safestop")

ENV_ENABLED = "PYSPARK_SAFESTOP"
ENV_RELEASE_TIMEOUT = "PYSPARK_SAFESTOP_RELEASE_TIMEOUT"
ENV_HANG_TIMEOUT = "PYSPARK_SAFESTOP_HANG_TIMEOUT"
ENV_UNREACHABLE_TIMEOUT = "PYSPARK_SAFESTOP_UNREACHABLE_TIMEOUT"
#: The master of the local Spark servers the package starts (as ``--safestop-master``).
ENV_MASTER = "PYSPARK_SAFESTOP_MASTER"
#: ``1``: the plugin's local server is a warm one, kept up between runs
#: (``--safestop-reuse-server``).
ENV_REUSE_SERVER = "PYSPARK_SAFESTOP_REUSE_SERVER"
#: Seconds a warm server stays up unused (``--safestop-reuse-idle``).
ENV_REUSE_IDLE = "PYSPARK_SAFESTOP_REUSE_IDLE"
#: Two task threads in the server's JVM: small test queries, and room for a concurrent one.
DEFAULT_MASTER = "local[2]"

#: Seconds allowed for the server-side ``ReleaseSession`` RPC when nothing else is configured.
DEFAULT_RELEASE_TIMEOUT = 5.0

#: Seconds a Spark Connect server may stay unreachable before a call to it fails with
#: ``ServerUnreachableError``: long enough for a server to restart (a JVM starts in 5-20 s),
#: far below the client's own retries (10 minutes and more).
DEFAULT_UNREACHABLE_TIMEOUT = 30.0
#: Seconds a warm server stays up with no run attached and no client connected.
DEFAULT_REUSE_IDLE = 1800.0

#: The longest timeout accepted anywhere, in seconds (one day). No release or server start
#: needs more, and it stays far from the limits of what the timeouts are handed to: gRPC
#: deadlines (about 292 years in int64 nanoseconds; beyond, the RPC fails at once) and
#: ``threading.TIMEOUT_MAX``.
MAX_TIMEOUT = 86_400.0

# The same words are read by boot/_pyspark_safestop_boot.py (a test keeps the two in step).
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
    #: Seconds an RPC may wait for its next response before it is declared hung (None: off).
    hang_timeout: float | None = None
    #: Seconds a server may stay unreachable before a call to it fails (None: off).
    unreachable_timeout: float | None = DEFAULT_UNREACHABLE_TIMEOUT


def warn(message: str, stacklevel: int = 2) -> bool:
    """Issue ``message`` as a :class:`SafestopWarning`; never raises.

    Where warnings are turned into errors, the message goes to the ``pyspark_safestop``
    logger instead: the callers run inside imports, start-up hooks and pytest's start, which
    must carry on with the defaults. Returns whether the warning was issued (``False``: it
    was logged instead).
    """
    try:
        warnings.warn(message, SafestopWarning, stacklevel=stacklevel + 1)
    except Exception:
        logger.warning("%s", message)
        return False
    return True


def _warn_once(name: str, value: str, message: str) -> None:
    # One warning per variable and value: the same bad value read by every install() call
    # (or every subprocess of a test run) must not flood the output.
    with _warned_lock:
        if (name, value) in _warned:
            return
        _warned.add((name, value))
    # A warning, not only a log record: it reaches the user whatever logging is configured.
    warn(message, stacklevel=3)


def _read_enabled() -> tuple[bool, str | None]:
    raw = os.environ.get(ENV_ENABLED)
    if raw is None:
        return True, None
    word = raw.strip().lower()
    if word in _FALSE_WORDS:
        return False, None
    if word in _TRUE_WORDS:
        return True, None
    return True, f"{ENV_ENABLED}={raw!r} is not understood (use 0 or 1); keeping the shim enabled"


def _read_seconds(
    name: str, default: float | None, *, off: bool, fallback: str
) -> tuple[float | None, str | None]:
    """A seconds variable through :func:`parse_seconds`: its value (``None`` for ``0`` where
    ``off``), else ``default`` and what to warn, ending with ``fallback``."""
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default, None
    try:
        seconds = parse_seconds(raw, name, zero=off)
    except ValueError:
        limit = (
            f"a number of seconds up to {MAX_TIMEOUT:g} (0: off)"
            if off
            else f"a positive number of seconds up to {MAX_TIMEOUT:g}"
        )
        return default, f"{name}={raw!r} is not {limit}; {fallback}"
    return (None if seconds == 0 else seconds), None


def _read_release_timeout() -> tuple[float, str | None]:
    seconds, problem = _read_seconds(
        ENV_RELEASE_TIMEOUT,
        DEFAULT_RELEASE_TIMEOUT,
        off=False,
        fallback=f"using the default, {DEFAULT_RELEASE_TIMEOUT:g}",
    )
    return (DEFAULT_RELEASE_TIMEOUT if seconds is None else seconds), problem


def _read_hang_timeout() -> tuple[float | None, str | None]:
    return _read_seconds(ENV_HANG_TIMEOUT, None, off=True, fallback="the hang watchdog stays off")


def _read_unreachable_timeout() -> tuple[float | None, str | None]:
    return _read_seconds(
        ENV_UNREACHABLE_TIMEOUT,
        DEFAULT_UNREACHABLE_TIMEOUT,
        off=True,
        fallback=f"using the default, {DEFAULT_UNREACHABLE_TIMEOUT:g}",
    )


def enabled_from_env() -> bool:
    """Return whether ``PYSPARK_SAFESTOP`` allows the shim (unset means yes).

    ``0``, ``false``, ``no``, ``off``, ``disable`` and ``disabled`` (any case, surrounding
    blanks ignored) disable it. Anything unrecognised gives one warning and keeps the shim
    enabled, the safe default for a test suite.
    """
    enabled, problem = _read_enabled()
    if problem is not None:
        _warn_once(ENV_ENABLED, os.environ.get(ENV_ENABLED, ""), problem)
    return enabled


def release_timeout_from_env() -> float:
    """Return ``PYSPARK_SAFESTOP_RELEASE_TIMEOUT`` in seconds, or the default.

    A value that is not a positive number of seconds up to :data:`MAX_TIMEOUT` gives one
    warning and the default.
    """
    seconds, problem = _read_release_timeout()
    if problem is not None:
        _warn_once(ENV_RELEASE_TIMEOUT, os.environ.get(ENV_RELEASE_TIMEOUT, ""), problem)
    return seconds


def hang_timeout_from_env() -> float | None:
    """Return ``PYSPARK_SAFESTOP_HANG_TIMEOUT`` in seconds, or ``None`` (the watchdog is off).

    Unset, blank or ``0`` means off. Any other value that is not a positive number of seconds
    up to :data:`MAX_TIMEOUT` gives one warning and leaves the watchdog off.
    """
    seconds, problem = _read_hang_timeout()
    if problem is not None:
        _warn_once(ENV_HANG_TIMEOUT, os.environ.get(ENV_HANG_TIMEOUT, ""), problem)
    return seconds


def _read_master() -> tuple[str, str | None]:
    raw = os.environ.get(ENV_MASTER)
    if raw is None or not raw.strip():
        return DEFAULT_MASTER, None
    try:
        return validate_master(raw, ENV_MASTER), None
    except ValueError as error:
        return DEFAULT_MASTER, f"{error}; using {DEFAULT_MASTER}"


def master_from_env() -> str:
    """Return ``PYSPARK_SAFESTOP_MASTER``, or :data:`DEFAULT_MASTER`; a value
    :func:`validate_master` refuses gives one warning and the default."""
    master, problem = _read_master()
    if problem is not None:
        _warn_once(ENV_MASTER, os.environ.get(ENV_MASTER, ""), problem)
    return master


def unreachable_timeout_from_env() -> float | None:
    """Return ``PYSPARK_SAFESTOP_UNREACHABLE_TIMEOUT`` in seconds (``0``: off, ``None``), or
    :data:`DEFAULT_UNREACHABLE_TIMEOUT`; a bad value gives one warning and the default."""
    seconds, problem = _read_unreachable_timeout()
    if problem is not None:
        _warn_once(ENV_UNREACHABLE_TIMEOUT, os.environ.get(ENV_UNREACHABLE_TIMEOUT, ""), problem)
    return seconds


def _read_reuse_server() -> tuple[bool, str | None]:
    raw = os.environ.get(ENV_REUSE_SERVER)
    word = "" if raw is None else raw.strip().lower()
    if word in _FALSE_WORDS or not word:
        return False, None
    if word in _TRUE_WORDS:
        return True, None
    return False, f"{ENV_REUSE_SERVER}={raw!r} is not understood (use 0 or 1); not reusing"


def _read_reuse_idle() -> tuple[float, str | None]:
    seconds, problem = _read_seconds(
        ENV_REUSE_IDLE,
        DEFAULT_REUSE_IDLE,
        off=False,
        fallback=f"using the default, {DEFAULT_REUSE_IDLE:g}",
    )
    return (DEFAULT_REUSE_IDLE if seconds is None else seconds), problem


def reuse_server_from_env() -> bool:
    """Return whether ``PYSPARK_SAFESTOP_REUSE_SERVER`` asks for a warm server (unset: no); an
    unrecognised value gives one warning and no."""
    reuse, problem = _read_reuse_server()
    if problem is not None:
        _warn_once(ENV_REUSE_SERVER, os.environ.get(ENV_REUSE_SERVER, ""), problem)
    return reuse


def reuse_idle_from_env() -> float:
    """Return ``PYSPARK_SAFESTOP_REUSE_IDLE`` in seconds, or :data:`DEFAULT_REUSE_IDLE`; a bad
    value gives one warning and the default."""
    seconds, problem = _read_reuse_idle()
    if problem is not None:
        _warn_once(ENV_REUSE_IDLE, os.environ.get(ENV_REUSE_IDLE, ""), problem)
    return seconds


def environment_problems() -> list[str]:
    """Return a message for each environment variable whose value is replaced by a default.

    Nothing is warned: this is for reports (pytest's header, ``doctor``), which show the
    problem however warnings and logging are configured.
    """
    found = (
        _read_enabled()[1],
        _read_release_timeout()[1],
        _read_hang_timeout()[1],
        _read_unreachable_timeout()[1],
        _read_master()[1],
        _read_reuse_server()[1],
        _read_reuse_idle()[1],
    )
    return [problem for problem in found if problem is not None]


def _shown(value: object) -> str:
    try:
        text = repr(value)
    except Exception:  # an int too long to print (sys.set_int_max_str_digits), a broken repr
        text = f"an object of type {type(value).__name__}"
    return text if len(text) <= 80 else f"{text[:60]}... ({len(text)} characters)"


def validate_timeout(value: object, name: str) -> float:
    """Return ``value`` as a number of seconds above 0 and at most :data:`MAX_TIMEOUT`.

    Raises ``ValueError`` naming ``name`` (the parameter or option) and the value otherwise:
    not an ``int`` or ``float``, not positive, infinite, NaN, or above the maximum.
    """
    # bool is an int subclass; True seconds is certainly a mistake.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a positive number of seconds, got {_shown(value)}")
    # Compared before float(): int and float compare exactly, where float() of a huge int
    # raises OverflowError. NaN fails every comparison.
    if not 0 < value <= MAX_TIMEOUT:
        raise ValueError(
            f"{name} must be a positive number of seconds, at most {MAX_TIMEOUT:g} (one day), "
            f"got {_shown(value)}"
        )
    return float(value)


def validate_hang_timeout(value: object, name: str = "hang_timeout") -> float | None:
    """Return the hang timeout ``value`` in seconds, or ``None`` for ``0`` (off).

    Raises ``ValueError`` naming ``name`` as :func:`validate_timeout` does.
    """
    if not isinstance(value, bool) and isinstance(value, (int, float)) and value == 0:
        return None
    return validate_timeout(value, name)


def parse_seconds(text: object, name: str, *, zero: bool = False) -> float:
    """Seconds written as text (a command line, an ini file), checked as
    :func:`validate_timeout` checks a number; with ``zero``, ``0`` is accepted too (it turns the
    setting off, or means "at once").

    The one parser of every seconds setting: the pytest options, the ini keys and the command
    line accept and refuse the same values. Raises ``ValueError`` naming ``name`` and the text.
    """
    try:
        value = float(str(text).strip())
        if zero and value == 0:
            return 0.0
        return validate_timeout(value, name)
    except ValueError:
        least = "0 or more" if zero else "a positive number of"
        raise ValueError(
            f"{name} must be {least} seconds, at most {MAX_TIMEOUT:g}, got {str(text)!r}"
        ) from None


def parse_count(text: object, name: str, low: int, high: int) -> int:
    """A whole number from ``low`` to ``high`` written as text; ``ValueError`` naming ``name``
    and the text otherwise."""
    stripped = str(text).strip()
    if re.fullmatch(r"[0-9]{1,9}", stripped) and low <= int(stripped) <= high:
        return int(stripped)
    raise ValueError(f"{name} must be a whole number from {low} to {high}, got {_shown(text)}")


def parse_conf(text: object, name: str) -> tuple[str, str]:
    """``KEY=VALUE`` (a Spark conf, a Sail setting) as its key and value, blanks around either
    removed; ``ValueError`` naming ``name`` and the text when there is no ``=`` or no key."""
    key, sep, value = str(text).partition("=")
    if not sep or not key.strip():
        raise ValueError(f"{name} must be KEY=VALUE, got {_shown(text)}")
    return key.strip(), value.strip()


_LOCAL_MASTER = re.compile(r"local(\[(\*|[1-9]\d*)(,[1-9]\d*)?\])?")
_LOCAL_CLUSTER = re.compile(r"local-cluster\[([1-9]\d*),([1-9]\d*),([1-9]\d*)\]")
_STANDALONE = re.compile(r"spark://([^/\s:,]+|\[[0-9a-fA-F:]+\]):([1-9]\d{0,4})")


def _on_this_machine(host: str) -> bool:
    """Whether ``host`` names this machine: its executors can then reach a driver on loopback."""
    import psutil

    try:
        addresses = {str(info[4][0]) for info in socket.getaddrinfo(host.strip("[]"), None)}
    except (OSError, UnicodeError):
        return False
    local = {
        address.address.split("%", 1)[0]
        for nic in psutil.net_if_addrs().values()
        for address in nic
        if address.family in (socket.AF_INET, socket.AF_INET6)
    }
    return bool(addresses) and all(
        address in local or address.startswith("127.") or address == "::1" for address in addresses
    )


def validate_master(value: object, name: str = "master") -> str:
    """Return ``value`` as the master of a local Spark server, or raise ``ValueError`` naming
    ``name`` (the parameter, option or variable) and the value.

    Accepted: ``local``, ``local[N]``, ``local[*]``, ``local[N,F]``; ``local-cluster[N,C,M]``
    (N executors of C cores and M MiB, each a JVM of its own); ``spark://HOST:PORT`` of a
    standalone cluster whose workers run on this machine. The server's driver listens on
    loopback only, which executors elsewhere cannot reach: for a remote cluster, run a Spark
    Connect server there and give the fixtures its URL (``--safestop-remote``).
    """
    master = value.strip() if isinstance(value, str) else ""
    if _LOCAL_MASTER.fullmatch(master) or _LOCAL_CLUSTER.fullmatch(master):
        return master
    standalone = _STANDALONE.fullmatch(master)
    if standalone:
        if not _on_this_machine(standalone.group(1)):
            raise ValueError(
                f"{name}={master!r}: the server's driver listens on 127.0.0.1, which the "
                f"workers of {standalone.group(1)} cannot reach; run a Spark Connect server on "
                "that cluster and use --safestop-remote instead"
            )
        return master
    raise ValueError(
        f"{name} must be local, local[N], local[*], local-cluster[N,CORES,MEMORY_MB] or "
        f"spark://HOST:PORT (a standalone cluster on this machine), got {_shown(value)}"
    )
