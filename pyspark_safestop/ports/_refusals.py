"""The rules that decide which processes may be signalled, and the errors that refuse the rest.

A process may be signalled only if it belongs to the current user (real and effective uid,
also when that user is root), is not PID 1 or lower, the calling process or one of its
ancestors, and its command line matches what the caller expects.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re

import psutil

from ._checks import owner_name
from ._listeners import ProcessInfo


class KillRefusedError(PermissionError):
    """A process was not signalled because a safety check failed; nothing was signalled.

    Attributes:
        pid: The process that failed the check (``None`` if its PID is not visible).
        owner: Its owner, as ``"name (uid N)"``.
        port: The port being cleared, if any.
    """

    def __init__(self, message: str, *, pid: int | None, owner: str, port: int | None) -> None:
        super().__init__(errno.EPERM, message)
        self.pid = pid
        self.owner = owner
        self.port = port

    def __str__(self) -> str:
        return str(self.strerror)


class ForeignProcessError(KillRefusedError):
    """The process belongs to another user (real or effective uid differs from ours)."""


class ProtectedProcessError(KillRefusedError):
    """The process is PID 1 or lower, the calling process or one of its ancestors."""


class UnexpectedProcessError(KillRefusedError):
    """The process's command line does not match ``expect``."""


#: The refusals from the most serious to the least: the first found is reported first.
_SEVERITY = (ForeignProcessError, ProtectedProcessError, UnexpectedProcessError)


def _protected_pids() -> set[int]:
    """The calling process and its ancestors."""
    protected = {os.getpid()}
    with contextlib.suppress(psutil.Error):
        protected.update(parent.pid for parent in psutil.Process().parents())
    return protected


def _matches(expect: str | re.Pattern[str], command: str) -> bool:
    if isinstance(expect, str):
        return expect in command
    return expect.search(command) is not None


def _refusal(
    info: ProcessInfo,
    port: int | None,
    expect: str | re.Pattern[str] | None,
    protected: set[int],
) -> KillRefusedError | None:
    """The reason not to signal ``info``, or ``None`` if it may be signalled."""
    uid = os.getuid()
    kind: type[KillRefusedError]
    if info.uid != uid or info.euid != uid:
        effective = f" (effective {owner_name(info.euid)})" if info.euid != info.uid else ""
        kind, reason = ForeignProcessError, f"it is not owned by {owner_name(uid)}{effective}"
    elif info.pid <= 1:
        kind, reason = ProtectedProcessError, "it is PID 1 or lower"
    elif info.pid in protected:
        what = "the calling process" if info.pid == os.getpid() else "an ancestor of the caller"
        kind, reason = ProtectedProcessError, f"it is {what}"
    elif expect is not None and not _matches(expect, info.command):
        shown = expect if isinstance(expect, str) else expect.pattern
        kind, reason = UnexpectedProcessError, f"its command line does not match {shown!r}"
    else:
        return None
    where = f" listening on port {port}" if port is not None else ""
    described = f"PID {info.pid}{where} (owner {info.owner}, command {info.command[:200]!r})"
    return kind(
        f"refusing to signal {described}: {reason}", pid=info.pid, owner=info.owner, port=port
    )


def check_all(
    infos: list[ProcessInfo], port: int | None, expect: str | re.Pattern[str] | None
) -> None:
    """Raise the most serious refusal among ``infos`` (all are checked), if there is one."""
    protected = _protected_pids()
    refusals = [r for r in (_refusal(i, port, expect, protected) for i in infos) if r is not None]
    if not refusals:
        return
    refusals.sort(key=lambda r: next(n for n, kind in enumerate(_SEVERITY) if isinstance(r, kind)))
    first = refusals[0]
    message = str(first)
    if len(refusals) > 1:
        message += " (also " + "; ".join(str(r) for r in refusals[1:]) + ")"
    raise type(first)(
        f"{message}; nothing was signalled", pid=first.pid, owner=first.owner, port=first.port
    )
