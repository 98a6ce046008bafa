"""Steps the scenarios share: a timed stop and the new session that must still work."""

from __future__ import annotations

import time
from typing import Any

from pyspark_safestop.testing.child import event, new_session, query

#: How long a stop, a forked child or a result-iterating thread may take before it is given
#: up on (and reported as such) inside a scenario.
CAP = 30.0


def timed_stop(session: Any, label: str) -> float:
    """``stop()``, timed; the duration is printed as a ``stopped`` event."""
    started = time.monotonic()
    session.stop()
    seconds = time.monotonic() - started
    event("stopped", label=label, seconds=round(seconds, 4))
    return seconds


def next_session(url: str) -> None:
    """A new session, its first query (``next_session_ok``) and its stop."""
    session = new_session(url)
    query(session, 5)
    event("next_session_ok")
    timed_stop(session, "next")
