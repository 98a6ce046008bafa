"""Warms a fresh server up: ``python _warmup.py URL``.

A new JVM compiles its hot paths during its first queries, which then take seconds; the
benchmarks run this once so that no measured run pays for it.
"""

from __future__ import annotations

import sys

from pyspark.sql.connect.session import SparkSession


def main() -> None:
    """A few sessions, each with a few queries."""
    for _ in range(3):
        session = SparkSession.builder.remote(sys.argv[1]).create()
        for n in (10, 100, 1000):
            session.range(n).selectExpr("id * 2 AS x").collect()
        session.stop()


if __name__ == "__main__":
    main()
