"""A suite the way many are written: one Spark Connect session per test class, stopped in the
class's teardown with plain ``session.stop()``.

On a healthy network it passes with or without pyspark-safestop. When one ``ReleaseExecute``
RPC hangs (a flaky network, an overloaded server; ``examples/demo.py`` makes one hang through a
proxy), ``stop()`` hangs without the shim, or waits 10 s per class on 4.2+ and then the
interpreter hangs at exit; with the shim every ``stop()`` returns at once.

Run it against a local server the plugin starts (``pytest examples/test_class_sessions.py``),
an existing one (``--safestop-remote sc://HOST:PORT``), or under xdist (``-n 2``).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pyspark.sql.connect.session import SparkSession


@pytest.fixture(scope="class")
def session(spark_connect_url: str) -> Iterator[SparkSession]:
    session = SparkSession.builder.remote(spark_connect_url).create()
    yield session
    session.stop()  # plain stop(): what the shim makes safe


class TestNumbers:
    def test_count(self, session: SparkSession) -> None:
        assert session.range(100).count() == 100

    def test_collect(self, session: SparkSession) -> None:
        rows = session.range(5).collect()  # a result stream: its release goes to the pool
        assert [row.id for row in rows] == [0, 1, 2, 3, 4]


class TestSql:
    def test_sum(self, session: SparkSession) -> None:
        (row,) = session.sql("SELECT sum(id) AS total FROM range(10)").collect()
        assert row.total == 45


class TestDataFrames:
    def test_filter(self, session: SparkSession) -> None:
        df = session.createDataFrame([(1, "a"), (2, "b"), (3, "c")], ["n", "letter"])
        assert [r.letter for r in df.filter("n > 1").collect()] == ["b", "c"]


class TestMore:
    def test_group(self, session: SparkSession) -> None:
        rows = session.sql("SELECT id % 3 AS k, count(*) AS c FROM range(9) GROUP BY k").collect()
        assert sorted(r.c for r in rows) == [3, 3, 3]
