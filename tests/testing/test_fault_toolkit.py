"""The fault toolkit (``pyspark_safestop.testing``) against a real Spark Connect server: a
marker hangs one chosen query and nothing else, every k-th call is picked, the client's
metadata (its token) reaches the server, and bad arguments are refused by name; gRPC kept busy
for a child's sake stops at the end of its block."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from pyspark_safestop import connect_session
from pyspark_safestop.testing.runner import parked_in

grpc = pytest.importorskip("grpc")

from pyspark_safestop.testing.faults import FaultProxy  # noqa: E402  (needs grpcio)
from pyspark_safestop.testing.traffic import busy_grpc  # noqa: E402

MARKER = "MARKER-5f1c"


@pytest.mark.engine
@pytest.mark.server
def test_a_marker_hangs_only_the_query_that_carries_it(spark_connect_url: str) -> None:
    with FaultProxy(spark_connect_url) as proxy:
        proxy.hang("ExecutePlan", marker=MARKER.encode())
        # Through the proxy at all: the server checks the token the client sends.
        with connect_session(proxy.url) as spark:
            assert len(spark.range(3).collect()) == 3
            found: dict[str, Any] = {}
            marked = threading.Thread(
                target=lambda: found.update(rows=spark.sql(f"SELECT '{MARKER}' AS m").collect()),
                daemon=True,
            )
            marked.start()
            assert proxy.wait_hung("ExecutePlan", 1, timeout=60), "the marked query never hung"
            assert len(spark.range(5).collect()) == 5  # other queries still go through
            assert marked.is_alive()
            proxy.clear("ExecutePlan")  # released: forwarded as if the server had been slow
            marked.join(60)
            assert not marked.is_alive()
            assert found["rows"][0]["m"] == MARKER
            assert proxy.faulted("ExecutePlan") == 1


@pytest.mark.engine
@pytest.mark.server
def test_every_kth_call_is_picked(spark_connect_url: str) -> None:
    with FaultProxy(spark_connect_url) as proxy:
        proxy.fail("ExecutePlan", grpc.StatusCode.FAILED_PRECONDITION, "injected", every=2)
        with connect_session(proxy.url) as spark:
            outcomes = []
            for _ in range(4):
                try:
                    spark.range(2).collect()
                    outcomes.append("ok")
                except Exception:
                    outcomes.append("failed")
        assert outcomes == ["ok", "failed", "ok", "failed"]
        assert proxy.faulted("ExecutePlan") == 2
        assert proxy.calls("ExecutePlan") == 4


@pytest.mark.pure
def test_the_proxy_keeps_the_url_of_its_upstream() -> None:
    proxy = FaultProxy("sc://localhost:15002/;token=abc;use_ssl=false")
    proxy.start()
    try:
        assert proxy.upstream == "localhost:15002"
        assert proxy.url == f"sc://localhost:{proxy.port}/;token=abc;use_ssl=false"
    finally:
        proxy.stop()


@pytest.mark.pure
@pytest.mark.parametrize(
    ("call", "named"),
    [
        (lambda p: p.hang("ExecutePlan", every=0), "every"),
        (lambda p: p.hang("ExecutePlan", marker="text"), "marker"),
        (lambda p: p.delay("ExecutePlan", -1.0), "seconds"),
    ],
)
def test_bad_arguments_are_refused_by_name(call: Any, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        call(FaultProxy("127.0.0.1:15002"))


@pytest.mark.pure
def test_a_bad_upstream_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="upstream"):
        FaultProxy("localhost")


@pytest.mark.pure
def test_a_parked_thread_proves_the_hang() -> None:
    """The evidence rule: a thread whose frames show a signature, in order, is parked there;
    the same frames out of order, or a bounded wait, are not."""
    signature = ("ThreadPoolExecutor.shutdown", "Thread.join")
    parked = {
        "thread": "MainThread",
        "frames": [
            "pyspark.sql.connect.session.SparkSession.stop:1",
            "concurrent.futures.thread.ThreadPoolExecutor.shutdown:2",
            "threading.Thread.join:3",
        ],
    }
    bounded = {"thread": "t", "frames": ["x.SparkConnectClient.close:1", "y._base.wait:2"]}
    backwards = {"thread": "t", "frames": parked["frames"][::-1]}
    found = parked_in([bounded, parked], [signature])
    assert found is not None
    assert found["thread"] == "MainThread"
    assert parked_in([bounded, backwards], [signature]) is None


@pytest.mark.pure
def test_busy_grpc_keeps_its_callers_calling_until_the_end_of_the_block() -> None:
    def callers() -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name.startswith("busy-grpc-")]

    with busy_grpc(callers=2):
        assert len(callers()) == 2
        assert all(thread.is_alive() for thread in callers())
    assert callers() == []
    with pytest.raises(ValueError, match="callers=0"), busy_grpc(callers=0):
        pass
