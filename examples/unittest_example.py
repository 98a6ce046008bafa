"""A unittest case with a session per class, stopped in ``tearDownClass``.

``import pyspark_safestop`` activates the shim wherever the site-wide .pth is skipped.
Run: ``SPARK_REMOTE=sc://HOST:PORT python examples/unittest_example.py``.
"""

from __future__ import annotations

import os
import unittest

from pyspark.sql.connect.session import SparkSession

import pyspark_safestop  # noqa: F401  (PYSPARK_SAFESTOP=0 turns it off)


class SessionPerClass(unittest.TestCase):
    session: SparkSession

    @classmethod
    def setUpClass(cls) -> None:
        cls.session = SparkSession.builder.remote(os.environ["SPARK_REMOTE"]).create()

    @classmethod
    def tearDownClass(cls) -> None:
        cls.session.stop()

    def test_count(self) -> None:
        self.assertEqual(self.session.range(20).count(), 20)

    def test_collect(self) -> None:
        self.assertEqual(len(self.session.range(3).collect()), 3)


class AnotherClass(SessionPerClass):
    def test_sql(self) -> None:
        (row,) = self.session.sql("SELECT 6 * 7 AS answer").collect()
        self.assertEqual(row.answer, 42)


if __name__ == "__main__":
    unittest.main(verbosity=2)
