"""Checks of the values given to the ports functions, and how a user is named in messages."""

from __future__ import annotations

import pwd
import re

from .._settings import validate_timeout

MAX_PORT = 65535


def check_port(port: object, name: str = "port") -> int:
    """Return ``port`` if it is an ``int`` in 1-65535, else raise naming it."""
    # bool is an int subclass: True would otherwise be port 1.
    if isinstance(port, bool) or not isinstance(port, int):
        raise TypeError(f"{name} must be an int in 1-65535, got {port!r}")
    if not 1 <= port <= MAX_PORT:
        raise ValueError(f"{name} must be in 1-65535, got {port!r}")
    return port


def parse_port(text: str, name: str | None = None) -> int:
    """Return the TCP port written in ``text`` (ASCII digits, surrounding blanks allowed).

    ``name`` (an environment variable, an argument) is named in the error message.

    Raises:
        ValueError: ``text`` is not an integer in 1-65535 written in plain digits.
    """
    stripped = text.strip()
    # int() would also take "+80", "8_080" and "٨٠": accept plain ASCII digits only.
    if not re.fullmatch(r"[0-9]{1,5}", stripped) or not 1 <= int(stripped) <= MAX_PORT:
        shown = f"{name}={text!r}" if name else repr(text)
        raise ValueError(f"{shown} is not a TCP port (an integer in 1-65535)")
    return int(stripped)


def check_timeout(timeout: object, name: str = "timeout") -> float:
    """Return ``timeout`` as seconds in 0-``MAX_TIMEOUT``, else raise ``ValueError`` naming it."""
    # 0 is allowed here (SIGKILL at once for whatever is still alive); any other value goes
    # through the library's one timeout check, bounds included.
    if timeout == 0 and not isinstance(timeout, bool):
        return 0.0
    return validate_timeout(timeout, name)


def check_expect(expect: object) -> str | re.Pattern[str] | None:
    """Return ``expect`` if it is ``None``, a non-empty ``str`` or a ``str`` pattern."""
    if expect is None:
        return None
    if isinstance(expect, str):
        if not expect:
            # An empty string matches every command line: certainly not what was meant.
            raise ValueError("expect must not be an empty string")
        return expect
    if isinstance(expect, re.Pattern) and isinstance(expect.pattern, str):
        return expect
    raise TypeError(f"expect must be a str or a compiled str pattern, got {expect!r}")


def owner_name(uid: int) -> str:
    """``"name (uid N)"``, or ``"uid N"`` for a uid without a passwd entry."""
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except (KeyError, OverflowError):
        return f"uid {uid}"
