"""Where the lease files live: a directory only the current user can write, found or made.

Every process of the user has to find the same directory, and no other user may be able to
plant, replace or remove anything in it or in the folder holding it.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import stat
import tempfile
from pathlib import Path

from .._settings import warn
from ._checks import owner_name

logger = logging.getLogger("pyspark_safestop")

#: Overrides the directory holding the lease files (it must belong to the current user).
ENV_LEASE_DIR = "PYSPARK_SAFESTOP_PORT_LEASE_DIR"


class LeaseDirectoryError(PermissionError):
    """The lease directory, or the folder holding it, could be used by another user."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(
            errno.EPERM,
            f"port lease directory {path}: {problem}; another user could plant or remove "
            f"lease files there. Remove it, or set {ENV_LEASE_DIR} to a directory of your own",
        )
        self.path = path

    def __str__(self) -> str:
        return str(self.strerror)


def _others_can_write(info: os.stat_result) -> bool:
    return bool(info.st_mode & (stat.S_IWGRP | stat.S_IWOTH))


def _check_parent(parent: Path, child: Path) -> None:
    """Refuse ``parent`` if another user could rename or replace ``child`` inside it.

    That is the case when ``parent`` belongs to another user (root aside) or is writable by
    others without the sticky bit (``/tmp`` has it: there only an entry's owner may remove it).
    """
    info = os.stat(parent)  # followed: /tmp is a symlink on some systems
    if info.st_uid not in (os.getuid(), 0):
        raise LeaseDirectoryError(
            child, f"its folder {parent} belongs to {owner_name(info.st_uid)}"
        )
    if _others_can_write(info) and not info.st_mode & stat.S_ISVTX:
        raise LeaseDirectoryError(
            child, f"its folder {parent} is writable by others and not sticky"
        )


def _private_dir(path: Path) -> None:
    """Create ``path`` (mode 0700) if missing; refuse it unless it is our own private directory."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise LeaseDirectoryError(path, "not a directory (or a symlink)")
    if info.st_uid != os.getuid():
        raise LeaseDirectoryError(
            path, f"it belongs to {owner_name(info.st_uid)}, not to {owner_name(os.getuid())}"
        )
    if _others_can_write(info):
        # Whatever it holds may have been planted: refused, not repaired.
        raise LeaseDirectoryError(
            path, f"it is writable by others (mode {info.st_mode & 0o7777:o})"
        )
    if stat.S_IMODE(info.st_mode) & 0o077:
        # Ours, only readable by others: nothing planted, but which ports we use is ours to know.
        os.chmod(path, 0o700)


def _runtime_dir() -> Path | None:
    """``$XDG_RUNTIME_DIR`` if it is an absolute path to our own directory of mode 0700."""
    value = os.environ.get("XDG_RUNTIME_DIR")
    if not value or not os.path.isabs(value):
        return None
    try:
        info = os.stat(value)
    except OSError:
        return None
    if (
        not stat.S_ISDIR(info.st_mode)
        or info.st_uid != os.getuid()
        or stat.S_IMODE(info.st_mode) & 0o077
    ):
        logger.debug("not using XDG_RUNTIME_DIR=%s: not a private directory of ours", value)
        return None
    return Path(value)


#: ``(path, st_dev, st_ino)`` of the lease directory last checked in full. A later call only
#: checks, with one ``lstat``, that the path still leads to that same private directory.
_checked_dir: tuple[str, int, int] | None = None


def _still_checked(path: Path) -> bool:
    cached = _checked_dir
    if cached is None or cached[0] != str(path):
        return False
    try:
        info = os.lstat(path)
    except OSError:
        return False
    return (
        (info.st_dev, info.st_ino) == cached[1:]
        and stat.S_ISDIR(info.st_mode)
        and info.st_uid == os.getuid()
        and not stat.S_IMODE(info.st_mode) & 0o077
    )


@functools.cache
def _warn_relative(value: str) -> None:
    # Once per value: every allocation reads the variable.
    warn(
        f"{ENV_LEASE_DIR}={value!r} is not an absolute path (processes started elsewhere would "
        "find another directory); using the default lease directory"
    )


def _override() -> Path | None:
    """The directory named by ``PYSPARK_SAFESTOP_PORT_LEASE_DIR``, if it is set and absolute."""
    value = os.environ.get(ENV_LEASE_DIR)
    if not value:
        return None
    if not os.path.isabs(value):
        _warn_relative(value)
        return None
    return Path(value)


def _default_lease_chain() -> list[Path]:
    """The default lease directory and the folders to create on the way, outermost first."""
    runtime = _runtime_dir()
    if runtime is not None:
        # Already private: only the folders below it need creating.
        return [runtime / "pyspark-safestop", runtime / "pyspark-safestop" / "ports"]
    top = Path(tempfile.gettempdir()) / f"pyspark-safestop-{os.getuid()}"
    return [top, top / "ports"]


def lease_directory() -> Path:
    """Return the directory holding the lease files, creating it (mode 0700) when missing.

    ``$PYSPARK_SAFESTOP_PORT_LEASE_DIR`` if set to an absolute path (a relative one gives
    one warning and is ignored); else ``pyspark-safestop/ports`` in
    ``$XDG_RUNTIME_DIR`` when that is a private directory of the current user; else
    ``pyspark-safestop-<uid>/ports`` in the temporary folder (``tempfile.gettempdir()``).
    Processes coordinate only if they find the same directory: one started without
    ``XDG_RUNTIME_DIR`` (cron, sudo, some CI runners) should be given the variable.

    Raises:
        LeaseDirectoryError: The directory is not a directory of the current user, is
            writable by others, or sits in a folder another user could change (writable by
            others and not sticky, or owned by another user than root). The message names
            ``PYSPARK_SAFESTOP_PORT_LEASE_DIR``, which picks another one.
    """
    global _checked_dir
    override = _override()
    chain = [override] if override else _default_lease_chain()
    path = chain[-1]
    if _still_checked(path):
        return path
    if override:
        # Missing folders above an explicit choice are created private.
        os.makedirs(path.parent, mode=0o700, exist_ok=True)
    _check_parent(chain[0].parent, chain[0])
    for folder in chain:
        _private_dir(folder)
    info = os.lstat(path)
    _checked_dir = (str(path), info.st_dev, info.st_ino)
    return path


def state_directory(name: str, *, create: bool = True) -> Path | None:
    """A private folder ``name`` beside the lease directory's default one (mode 0700, created
    when missing): ``pyspark-safestop/NAME`` in ``$XDG_RUNTIME_DIR`` when that is a private
    directory of the current user, else ``pyspark-safestop-<uid>/NAME`` in the temporary
    folder. The same checks as :func:`lease_directory`; :class:`LeaseDirectoryError` names the
    folder another user could change. Without ``create``, ``None`` where it does not exist
    (a look creates nothing)."""
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"state folder name {name!r} must be one path component")
    top = _default_lease_chain()[0]
    if not create and not (top / name).exists():
        return None
    _check_parent(top.parent, top)
    _private_dir(top)
    _private_dir(top / name)
    return top / name
