"""A hung ReleaseExecute holds no release-pool worker past the release timeout: upstream sends it
with no deadline, and the worker stays stuck until its session stops. The pool has a handful
of workers (``os.cpu_count()`` on 4.0, 4.1): a few hung releases starve it, and the releases
queued behind them are never sent.

A child interpreter runs queries on one session through the fault proxy, which holds every
ReleaseExecute; while the session is still open, the proxy counts the releases it received,
twice, some release timeouts apart: upstream's count stands still, the shim's keeps growing.
"""

from __future__ import annotations

import pytest

pytest.importorskip("grpc")
from pyspark_safestop.testing.pool import hold_releases

pytestmark = pytest.mark.server

RELEASE_TIMEOUT = 1.0
#: When the releases received are counted after the queries, and again.
LOOKS = (3.0, 3.0 + 3 * RELEASE_TIMEOUT)


def _sent_while_open(url: str, shim: bool) -> tuple[int, int, int]:
    """The releases received at the two looks, and those still held at the second."""
    run = hold_releases(url, shim=shim, release_timeout=RELEASE_TIMEOUT, looks=LOOKS)
    assert not run.stalled, run
    first, second = run.received
    return first, second, run.held


def test_upstream_hung_releases_stall_the_pool(spark_connect_url: str) -> None:
    first, second, held = _sent_while_open(spark_connect_url, shim=False)
    assert first >= 1
    assert second == first, "releases kept flowing with every one of them hung"
    assert held >= 1


def test_the_shim_keeps_the_pool_flowing(spark_connect_url: str) -> None:
    first, second, held = _sent_while_open(spark_connect_url, shim=True)
    # Still sending what was queued behind the held ones, or done with all of them (a line
    # whose pool is not starved by a few): either way none is held past the release timeout.
    assert second > first or held == 0, (first, second, held)
