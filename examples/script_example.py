"""A plain script: pyspark only, nothing of pyspark-safestop.

Installed, pyspark-safestop activates itself as soon as pyspark's Spark Connect client is
imported (its site-wide .pth). Where that is skipped (``python -S``), add
``import pyspark_safestop`` at the top. Run: ``SPARK_REMOTE=sc://HOST:PORT python
examples/script_example.py`` (``pyspark-safestop serve`` prints such a URL).
"""

from __future__ import annotations

import os
import time

from pyspark.sql.connect.session import SparkSession


def main() -> None:
    url = os.environ["SPARK_REMOTE"]
    for round_number in range(1, 4):
        session = SparkSession.builder.remote(url).create()
        rows = session.range(round_number * 10).collect()
        started = time.monotonic()
        session.stop()
        took = time.monotonic() - started
        print(f"session {round_number}: {len(rows)} rows, stop() took {took:.2f} s", flush=True)
    print("done", flush=True)


if __name__ == "__main__":
    main()
