"""The client wing: everything that knows how a PySpark Spark Connect client line is built.

:mod:`._layouts` holds the four layouts (recognised by structure, never by version string) and
every operation on the client's private attributes; :mod:`._distribution` says which installed
distribution provides ``pyspark``; :mod:`._probe` imports the client in a fresh interpreter the
way a user's script would. A new PySpark release that moves things means a new layout here and
nothing elsewhere. Importing this package never imports pyspark.
"""

from __future__ import annotations

from ._operations import session_builder

__all__ = ["session_builder"]
