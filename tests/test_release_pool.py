"""A hung ReleaseExecute holds no release-pool worker past the release timeout: upstream sends it
with no deadline, and the worker stays stuck until its session stops. The pool has a handful
of workers (``os.cpu_count()`` on 4.0, 4.1): a few hung releases starve it, and the releases
queued behind them are never sent.

A child interpreter runs queries on one session through the fault proxy, which holds every
ReleaseExecute; while the session is still open, the proxy counts the releases it received,
twice, some release timeouts apart: upstream's count stands still, the shim's keeps growing.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.children import clean_env

pytest.importorskip("grpc")
from pyspark_safestop.testing.faults import FaultProxy

pytestmark = pytest.mark.server

RELEASE_TIMEOUT = 1.0
#: When the releases received are counted after the queries, and again.
FIRST_LOOK = 3.0
SECOND_LOOK = FIRST_LOOK + 3 * RELEASE_TIMEOUT

CHILD = """
import sys
import pyspark_safestop  # a no-op with PYSPARK_SAFESTOP=0
from pyspark_safestop import connect_session

with connect_session(sys.argv[1]) as spark:
    for _ in range(10):
        spark.range(5).collect()
    print("queried", flush=True)
    sys.stdin.readline()  # the session stays open until the parent has looked
"""


def _sent_while_open(tmp_path: Path, url: str, shim: bool) -> tuple[int, int, int]:
    """The releases received FIRST_LOOK and SECOND_LOOK seconds after the queries, and those
    still held at the second look."""
    script = tmp_path / "client.py"
    script.write_text(CHILD)
    env = clean_env(
        PYSPARK_SAFESTOP="1" if shim else "0",
        PYSPARK_SAFESTOP_RELEASE_TIMEOUT=f"{RELEASE_TIMEOUT:g}",
    )
    with FaultProxy(url) as proxy:
        proxy.hang("ReleaseExecute")
        child = subprocess.Popen(
            [sys.executable, str(script), proxy.url],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert child.stdout is not None
            assert child.stdin is not None
            line = child.stdout.readline().strip()
            assert line == "queried", child.stderr.read()[-3000:] if child.stderr else ""
            time.sleep(FIRST_LOOK)
            first = proxy.calls("ReleaseExecute")
            time.sleep(SECOND_LOOK - FIRST_LOOK)
            second = proxy.calls("ReleaseExecute")
            held = proxy.hung_now("ReleaseExecute")
            proxy.clear()  # let the session stop promptly, with or without the shim
            child.stdin.write("done\n")
            child.stdin.flush()
            child.wait(120)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
    return first, second, held


def test_upstream_hung_releases_stall_the_pool(tmp_path: Path, spark_connect_url: str) -> None:
    first, second, held = _sent_while_open(tmp_path, spark_connect_url, shim=False)
    assert first >= 1
    assert second == first, "releases kept flowing with every one of them hung"
    assert held >= 1


def test_the_shim_keeps_the_pool_flowing(tmp_path: Path, spark_connect_url: str) -> None:
    first, second, held = _sent_while_open(tmp_path, spark_connect_url, shim=True)
    # Still sending what was queued behind the held ones, or done with all of them (a line
    # whose pool is not starved by a few): either way none is held past the release timeout.
    assert second > first or held == 0, (first, second, held)
