"""The regression cases of ``tests/shim/test_regressions.py``, against a Sail server.

The deadlock lives in the client, so it must show against any Spark Connect server: here the
catalogue's cases run through the fault proxy in front of a local Sail server (started by the
plugin's ``spark_connect_server_factory``), upstream broken, the shim passing, with the same
tests and the same table of where upstream passes. Skipped where ``sail`` is not installed
(``pip install "pyspark-safestop[sail]"``; fails instead under ``--safestop-require-server``).
"""

from __future__ import annotations

import pytest

from pyspark_safestop.plugin import ServerFactory

# The tests and their module-scoped runs, collected again here: only the server differs.
from tests.shim.test_regressions import (
    outcomes,
    test_shim_passes,
    test_upstream_is_broken,
    test_upstream_waits_ten_seconds_on_42,
)

__all__ = [
    "outcomes",
    "test_shim_passes",
    "test_upstream_is_broken",
    "test_upstream_waits_ten_seconds_on_42",
]

# Server-side behaviour, the same whatever the client line: run on one line (noxfile.py).
pytestmark = [pytest.mark.server, pytest.mark.engine]


#: (case, client line) where upstream does not break against Sail, with what was seen instead.
UPSTREAM_PASSES_ON_SAIL = {
    ("server_killed", "3.5"): (
        "3.5 (no ReleaseSession RPC) against Sail: upstream's stop() after the server is gone "
        "returns at once, nothing of the case is left in flight to retry"
    ),
}


@pytest.fixture(autouse=True)
def _upstream_on_sail(request: pytest.FixtureRequest, client_layout: str) -> None:
    """Skip the upstream check of a case that does not reproduce against Sail on this line."""
    callspec = getattr(request.node, "callspec", None)
    name = None if callspec is None else callspec.params.get("name")
    reason = UPSTREAM_PASSES_ON_SAIL.get((str(name), client_layout))
    if reason is not None and request.node.originalname == "test_upstream_is_broken":
        pytest.skip(reason)


@pytest.fixture(scope="module")
def spark_connect_url(spark_connect_server_factory: ServerFactory) -> str:
    """The URL the catalogue's runs go to: a Sail server's (no token: Sail checks none)."""
    return spark_connect_server_factory(engine="sail").url
