"""A session opened and stopped safely, for code that does not use the pytest fixtures.

:func:`connect_session` is what the plugin's session fixtures are built on; it needs no pytest.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from ..client import _operations
from ._release import release_session_without_shutdown
from ._state import STATE

__all__ = ["connect_session", "stop_safely"]


def stop_safely(session: Any) -> None:
    """Stop a Spark Connect session without risking the hang.

    With the shim active this is ``session.stop()``; with it off, the session is released with
    a deadline and its channel closed (:func:`pyspark_safestop.release_session_without_shutdown`),
    leaving the shared release pool alone.
    """
    if STATE.installed:
        session.stop()
    else:
        release_session_without_shutdown(session)


@contextlib.contextmanager
def connect_session(url: str) -> Iterator[Any]:
    """A new Spark Connect session on ``url``, stopped safely on leaving the block.

    A ``;token=`` in the URL is sent on every client line, 3.5 included (see
    :func:`pyspark_safestop.client.session_builder`). For a fixture of another scope::

        @pytest.fixture(scope="module")
        def spark_module(spark_connect_url):
            with connect_session(spark_connect_url) as session:
                yield session
    """
    session = _operations.session_builder(url).create()
    try:
        yield session
    finally:
        stop_safely(session)
