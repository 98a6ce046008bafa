"""Which installed distribution provides the ``pyspark`` module: ``pyspark``, ``pyspark-client``,
``pyspark-connect``, ``databricks-connect`` (which ships its own ``pyspark``), or another.

Found from the installed distributions' metadata (their ``RECORD`` files), never by importing
pyspark. The module's own version (``status()["pyspark_version"]``) may differ from its
distribution's: ``databricks-connect`` 16.1.7 installs a ``pyspark`` reporting 3.5.2.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterable
from importlib import metadata
from typing import Any

from . import _layouts

__all__ = ["CANDIDATES", "pyspark_distribution", "pyspark_distributions"]

#: Looked at first (cheap); every other installed distribution only when none of these has it.
CANDIDATES = ("pyspark", "pyspark-client", "pyspark-connect", "databricks-connect")

# The file whose recorded hash tells which of several distributions claiming the module wrote
# the copy on disk: they overwrite one another's files, and version.py differs between them.
_WITNESS = "pyspark/version.py"
_INIT = "pyspark/__init__.py"


def _file_hash(path: str) -> str | None:
    try:
        with open(path, "rb") as handle:
            digest = hashlib.sha256(handle.read()).digest()
    except OSError:
        return None
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _claim(dist: Any, folders: set[str]) -> tuple[bool, bool] | None:
    """``(claims, wrote_the_copy_on_disk)`` for one distribution, or ``None`` if it does not
    install the module found in ``folders``."""
    files = dist.files
    if not files:
        return None
    by_name = {str(path).replace(os.sep, "/"): path for path in files}
    init = by_name.get(_INIT)
    if init is None:
        return None
    located = os.path.dirname(os.path.realpath(str(dist.locate_file(init))))
    if located not in folders:
        return None
    witness = by_name.get(_WITNESS)
    recorded = getattr(witness, "hash", None)
    if witness is None or recorded is None or recorded.mode != "sha256":
        return True, False
    on_disk = _file_hash(str(dist.locate_file(witness)))
    return True, on_disk is not None and on_disk == recorded.value


def _named(dist: Any) -> tuple[str, str]:
    name = dist.metadata["Name"] or "(unnamed)"
    return str(name), str(dist.version)


def _claims(dists: Iterable[Any], folders: set[str]) -> list[tuple[str, str, bool]]:
    found: dict[str, tuple[str, str, bool]] = {}
    for dist in dists:
        try:
            claim = _claim(dist, folders)
            if claim is None:
                continue
            name, version = _named(dist)
        except Exception:  # a broken metadata folder tells nothing; the others may
            continue
        key = name.lower().replace("_", "-")
        if key not in found or claim[1]:
            found[key] = (name, version, claim[1])
    return list(found.values())


def _candidates() -> Iterable[Any]:
    for name in CANDIDATES:
        try:
            yield metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue


def pyspark_distributions() -> list[tuple[str, str]]:
    """Return ``(name, version)`` of every distribution that installed the ``pyspark`` module
    found on ``sys.path``, the one whose files are on disk first. Empty when pyspark is not
    installed or no distribution records it (a source checkout on ``PYTHONPATH``). Never
    raises; never imports pyspark.
    """
    try:
        folders = {os.path.realpath(folder) for folder in _layouts.pyspark_package_dirs()}
        if not folders:
            return []
        claims = _claims(_candidates(), folders)
        if not claims:
            claims = _claims(metadata.distributions(), folders)
    except Exception:  # metadata that cannot be read: nothing can be told
        return []
    claims.sort(key=lambda claim: not claim[2])
    return [(name, version) for name, version, _ in claims]


def pyspark_distribution() -> str | None:
    """Return ``"name version"`` of the distribution that provides the installed ``pyspark``
    module (e.g. ``"databricks-connect 16.1.7"``, ``"pyspark-client 4.1.3"``), or ``None``
    when none can be told. Never raises; never imports pyspark."""
    found = pyspark_distributions()
    return f"{found[0][0]} {found[0][1]}" if found else None
