"""A differential suite: the same queries on Spark and on Sail, their results compared.

``spark_connect_server_factory`` (from the pytest plugin) starts one server of each engine for
the session; ``connect_session`` opens a session on each and stops it safely. A query whose
results differ fails with both sides shown.

Needs Java and the Spark jars (``pyspark``), and Sail (``pip install "pyspark-safestop[sail]"``);
a missing engine skips the suite (fails it with ``--safestop-require-server``). Run with
``pytest examples/test_differential.py``. Note that a Sail server checks no token: any local
user can connect to it while the suite runs.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from pyspark_safestop.plugin import ServerFactory, connect_session

QUERIES = {
    "arithmetic": "SELECT id, id * 3 + 1 AS y, id % 4 AS m FROM range(20)",
    "aggregate": "SELECT id % 5 AS k, count(*) AS n, sum(id) AS s FROM range(100) GROUP BY 1",
    "join": ("SELECT a.id, b.id AS other FROM range(10) a JOIN range(5, 15) b ON a.id = b.id"),
    "strings": "SELECT upper(concat('row-', CAST(id AS STRING))) AS s FROM range(5)",
    "window": (
        "SELECT id, sum(id) OVER (ORDER BY id ROWS BETWEEN 1 PRECEDING AND CURRENT ROW) AS w "
        "FROM range(8)"
    ),
}


@pytest.fixture(scope="module")
def sessions(spark_connect_server_factory: ServerFactory) -> Iterator[dict[str, Any]]:
    """One session on a Spark server and one on a Sail server, for this module."""
    spark_url = spark_connect_server_factory(engine="spark").url
    sail_url = spark_connect_server_factory(engine="sail").url
    with connect_session(spark_url) as spark, connect_session(sail_url) as sail:
        yield {"spark": spark, "sail": sail}


def rows(session: Any, query: str) -> list[tuple[Any, ...]]:
    """The query's rows as plain tuples, in a stable order (engines may order differently)."""
    return sorted(tuple(row) for row in session.sql(query).collect())


@pytest.mark.parametrize("name", sorted(QUERIES))
def test_same_results_on_spark_and_sail(name: str, sessions: dict[str, Any]) -> None:
    query = QUERIES[name]
    on_spark, on_sail = rows(sessions["spark"], query), rows(sessions["sail"], query)
    assert on_spark == on_sail, f"{name}: {query}\nspark: {on_spark}\nsail:  {on_sail}"
