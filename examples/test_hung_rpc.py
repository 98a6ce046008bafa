"""A suite proving that it survives a hung RPC, with pyspark-safestop's fault toolkit.

``FaultProxy`` stands between the session and the server (the plugin's ``spark_connect_url``,
token included) and makes chosen RPCs hang until the client gives up on them: here every
``ReleaseExecute``, then only the query whose SQL text carries a marker. Needs ``grpcio``
(``pip install pyspark-safestop[testing]``). Run: ``pytest examples/test_hung_rpc.py``.
"""

from __future__ import annotations

import threading
import time

from pyspark_safestop import connect_session
from pyspark_safestop.testing.faults import FaultProxy


def test_stop_returns_while_a_release_hangs(spark_connect_url: str) -> None:
    with FaultProxy(spark_connect_url) as proxy:
        proxy.hang("ReleaseExecute")
        with connect_session(proxy.url) as spark:
            assert spark.range(10).count() == 10
            started = time.monotonic()
            spark.stop()  # without the shim: hangs up to 4.1, 10 s on 4.2+
            assert time.monotonic() - started < 5
        assert proxy.calls("ReleaseExecute") >= 1


def test_one_chosen_query_hangs(spark_connect_url: str) -> None:
    with FaultProxy(spark_connect_url) as proxy:
        proxy.hang("ExecutePlan", marker=b"SLOW-QUERY")
        with connect_session(proxy.url) as spark:
            ended: list[BaseException] = []

            def slow_query() -> None:
                try:
                    spark.sql("SELECT 'SLOW-QUERY'").collect()
                except Exception as error:  # cancelled when the session stops
                    ended.append(error)

            stuck = threading.Thread(target=slow_query, daemon=True)
            stuck.start()
            assert proxy.wait_hung("ExecutePlan", timeout=60)
            assert spark.range(3).count() == 3  # the others still get through
        # Leaving the block stopped the session: its channel closed, the hung call cancelled.
        stuck.join(10)
        assert not stuck.is_alive()
        assert ended, "the hung query was not cancelled"
