"""Everyday PySpark test patterns, written as a user writes them, on the plugin's fixtures.

The standard imports at the top, the ``spark`` fixture and nothing configured: UDFs of every
kind (they run in the server's Python workers, on the tests' interpreter), pandas, files under
``tmp_path``, tables, views, caching, checkpoints, streaming, artifacts, configuration, joins,
windows, ``pyspark.testing`` and ``pyspark.ml``. A pattern the client line lacks is skipped
with the reason; nothing else is.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("grpc")  # the unit session's Pythons may lack a usable client

import pandas as pd
from pyspark.sql import Row, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from pyspark_safestop.servers import find_spark_home
from pyspark_safestop.servers._workers import worker_python
from tests.children import WORKER_START_TIMED_OUT, start_with_worker_retry

pytestmark = pytest.mark.server


def python_workers(*needs: str) -> None:
    """Skip where the server's Python workers cannot run this code on this interpreter: a
    pyspark 4.3 server's need Python 3.11+ (the 4.0 line runs on 3.9) and pyarrow 18+ for
    Arrow (the 3.5 line has 16). The plugin's report header and ``doctor`` say the same."""
    problems = worker_python().problems(find_spark_home(), *needs)
    if problems:
        pytest.skip("; ".join(problems))


@pytest.fixture(scope="module")
def layout(client_layout: str) -> str:
    return client_layout


def needs(layout: str, *missing_on: str, what: str) -> None:
    if layout in missing_on:
        pytest.skip(f"the {layout} client has no {what} over Spark Connect")


@pytest.fixture(scope="module")
def engine(request: pytest.FixtureRequest) -> str:
    """The engine of the fixtures' server (``--safestop-engine``, else the environment)."""
    chosen = request.config.getoption("safestop_engine", None)
    return str(chosen or os.environ.get("PYSPARK_SAFESTOP_ENGINE") or "spark").strip().lower()


def engine_has(engine: str, what: str) -> None:
    if engine == "sail" and what in SAIL_LACKS:
        pytest.skip(f"Sail has no {what}")


#: What Sail (0.7) does not serve: the module runs on Sail in the engine session.
SAIL_LACKS = ("addArtifacts", "a memory sink", "foreachBatch", "pyspark.ml")


# -- functions, windows, joins, SQL ---------------------------------------------------------


def test_functions_and_aggregates(spark: Any) -> None:
    df = spark.createDataFrame([("a", 1), ("a", 2), ("b", 5)], ["k", "v"])
    out = df.groupBy("k").agg(F.sum("v").alias("s"), F.max("v").alias("m")).orderBy("k")
    assert [tuple(row) for row in out.collect()] == [("a", 3, 2), ("b", 5, 5)]
    when = df.select(F.when(F.col("v") > 1, "big").otherwise("small").alias("w"))
    assert sorted(row.w for row in when.collect()) == ["big", "big", "small"]


def test_window_functions(spark: Any) -> None:
    df = spark.createDataFrame([("a", 1), ("a", 3), ("b", 2)], ["k", "v"])
    window = Window.partitionBy("k").orderBy(F.desc("v"))
    ranked = df.withColumn("rank", F.row_number().over(window)).where("rank = 1").orderBy("k")
    assert [(row.k, row.v) for row in ranked.collect()] == [("a", 3), ("b", 2)]


def test_joins_with_broadcast(spark: Any) -> None:
    left = spark.createDataFrame([(1, "x"), (2, "y")], ["id", "l"])
    right = spark.createDataFrame([(1, "p")], ["id", "r"])
    inner = left.join(F.broadcast(right), "id").collect()
    assert [(row.id, row.l, row.r) for row in inner] == [(1, "x", "p")]
    assert left.join(right, "id", "left_anti").count() == 1


def test_sql_with_parameters_and_temp_view(spark: Any) -> None:
    people = spark.createDataFrame([Row(name="ann", age=31), Row(name="bob", age=17)])
    people.createOrReplaceTempView("people")
    adults = spark.sql("SELECT name FROM people WHERE age >= :limit", args={"limit": 18})
    assert [row.name for row in adults.collect()] == ["ann"]


def test_schema_and_types(spark: Any) -> None:
    schema = T.StructType(
        [T.StructField("id", T.LongType()), T.StructField("tags", T.ArrayType(T.StringType()))]
    )
    df = spark.createDataFrame([(1, ["a", "b"])], schema)
    assert df.schema == schema
    assert df.select(F.size("tags").alias("n")).first().n == 2


def test_configuration(spark: Any) -> None:
    spark.conf.set("spark.sql.shuffle.partitions", "3")
    assert spark.conf.get("spark.sql.shuffle.partitions") == "3"
    assert spark.range(10).groupBy((F.col("id") % 2).alias("p")).count().count() == 2


# -- Python UDFs of every kind (the server's Python workers) --------------------------------


def test_udf_decorator_and_lambda(spark: Any) -> None:
    python_workers()

    @F.udf(returnType=T.StringType())
    def shout(text: str) -> str:
        return text.upper() + "!"

    plus_one = F.udf(lambda x: x + 1, T.LongType())
    df = spark.createDataFrame([("hi",)], ["t"]).select(shout("t").alias("s"), plus_one(F.lit(1)))
    assert tuple(df.first()) == ("HI!", 2)


def test_udf_registered_for_sql(spark: Any) -> None:
    python_workers()
    spark.udf.register("square", lambda x: x * x, T.LongType())
    assert spark.sql("SELECT square(7) AS s").first().s == 49


def test_pandas_udf_scalar_and_grouped_agg(spark: Any) -> None:
    python_workers("arrow")

    @F.pandas_udf("double")
    def halve(values: pd.Series) -> pd.Series:
        return values / 2

    @F.pandas_udf("double")
    def mean(values: pd.Series) -> float:
        return float(values.mean())

    df = spark.createDataFrame([("a", 1.0), ("a", 3.0), ("b", 4.0)], ["k", "v"])
    assert sorted(row.h for row in df.select(halve("v").alias("h")).collect()) == [0.5, 1.5, 2.0]
    means = df.groupBy("k").agg(mean("v").alias("m")).orderBy("k").collect()
    assert [row.m for row in means] == [2.0, 4.0]


def test_apply_in_pandas_and_map_in_pandas(spark: Any) -> None:
    python_workers("arrow")

    def centre(group: pd.DataFrame) -> pd.DataFrame:
        return group.assign(v=group.v - group.v.mean())

    def double(batches: Any) -> Any:
        for batch in batches:
            yield batch.assign(v=batch.v * 2)

    df = spark.createDataFrame([("a", 1.0), ("a", 3.0)], ["k", "v"])
    centred = df.groupBy("k").applyInPandas(centre, schema="k string, v double")
    assert sorted(row.v for row in centred.collect()) == [-1.0, 1.0]
    assert sorted(row.v for row in df.mapInPandas(double, df.schema).collect()) == [2.0, 6.0]


def test_map_in_arrow(spark: Any) -> None:
    python_workers("arrow")
    import pyarrow as pa
    import pyarrow.compute as pc

    def negate(batches: Any) -> Any:
        for batch in batches:
            yield pa.RecordBatch.from_arrays([pc.negate(batch.column(0))], names=["id"])

    assert sorted(row.id for row in spark.range(3).mapInArrow(negate, "id long").collect()) == [
        -2,
        -1,
        0,
    ]


def test_udtf(spark: Any) -> None:
    python_workers("arrow")

    @F.udtf(returnType="word string")
    class Words:
        def eval(self, text: str) -> Any:
            for word in text.split():
                yield (word,)

    assert [row.word for row in Words(F.lit("to be")).collect()] == ["to", "be"]


def test_udf_importing_a_shipped_module(spark: Any, tmp_path: Path, engine: str) -> None:
    engine_has(engine, "addArtifacts")
    python_workers()
    module = tmp_path / "everyday_helpers.py"
    module.write_text("def greet(name):\n    return 'hello ' + name\n")
    spark.addArtifacts(str(module), pyfile=True)

    @F.udf("string")
    def greet(name: str) -> str:
        import everyday_helpers  # the shipped file, imported in the server's worker

        return str(everyday_helpers.greet(name))

    df = spark.createDataFrame([("ann",)], ["n"])
    assert df.select(greet("n").alias("g")).first().g == "hello ann"


def test_udf_sees_the_tests_python(spark: Any) -> None:
    python_workers()

    @F.udf("string")
    def version(_: int) -> str:
        import sys as worker_sys

        return ".".join(map(str, worker_sys.version_info[:2]))

    expected = ".".join(map(str, sys.version_info[:2]))
    assert spark.range(1).select(version("id").alias("v")).first().v == expected


# -- pandas, files, tables, caching, checkpoints -------------------------------------------


def test_pandas_round_trip(spark: Any) -> None:
    frame = pd.DataFrame({"id": [1, 2], "name": ["a", "b"]})
    df = spark.createDataFrame(frame)
    back = df.orderBy("id").toPandas()
    assert back.to_dict("list") == {"id": [1, 2], "name": ["a", "b"]}


def test_files_under_tmp_path(spark: Any, tmp_path: Path) -> None:
    df = spark.createDataFrame([(1, "a"), (2, "b")], ["id", "v"])
    for fmt in ("parquet", "json", "csv"):
        target = str(tmp_path / fmt)
        df.write.mode("overwrite").option("header", True).format(fmt).save(target)
        read = spark.read.option("header", True).schema("id long, v string").format(fmt)
        assert sorted(tuple(row) for row in read.load(target).collect()) == [(1, "a"), (2, "b")]


def test_tables(spark: Any) -> None:
    spark.sql("DROP TABLE IF EXISTS everyday_table")
    spark.createDataFrame([(1,), (2,)], ["id"]).write.saveAsTable("everyday_table")
    try:
        assert spark.table("everyday_table").count() == 2
        assert spark.catalog.tableExists("everyday_table")
    finally:
        spark.sql("DROP TABLE everyday_table")


def test_caching(spark: Any) -> None:
    df = spark.range(100).withColumn("sq", F.col("id") * F.col("id"))
    df.cache()
    try:
        assert df.count() == 100
        assert df.storageLevel.useMemory
    finally:
        df.unpersist()


def test_checkpoints(spark: Any, layout: str) -> None:
    needs(layout, "3.5", what="checkpoints")
    df = spark.range(10).localCheckpoint()
    assert df.count() == 10
    assert spark.range(5).checkpoint().count() == 5  # the server's own checkpoint folder


# -- streaming ------------------------------------------------------------------------------


def test_streaming_to_the_memory_sink(spark: Any, tmp_path: Path, engine: str) -> None:
    engine_has(engine, "a memory sink")
    source = tmp_path / "in"
    source.mkdir()
    (source / "1.json").write_text('{"n": 1}\n{"n": 2}\n')
    stream = spark.readStream.schema("n long").json(str(source))
    query = (
        stream.writeStream.format("memory")
        .queryName("everyday_stream")
        .option("checkpointLocation", str(tmp_path / "checkpoint"))
        .trigger(availableNow=True)
        .start()
    )
    query.awaitTermination(120)
    assert sorted(row.n for row in spark.table("everyday_stream").collect()) == [1, 2]


def test_streaming_foreach_batch(spark: Any, tmp_path: Path, engine: str) -> None:
    engine_has(engine, "foreachBatch")
    python_workers("connect")
    source, sink = tmp_path / "in", tmp_path / "out"
    source.mkdir()
    (source / "1.json").write_text('{"n": 1}\n{"n": 2}\n')
    target = str(sink)

    def write(batch: Any, batch_id: int) -> None:  # runs in the server's Python worker
        batch.write.mode("append").parquet(target)

    writer = (
        spark.readStream.schema("n long")
        .json(str(source))
        .writeStream.foreachBatch(write)
        .option("checkpointLocation", str(tmp_path / "checkpoint"))
        .trigger(availableNow=True)
    )
    try:
        query = start_with_worker_retry(writer.start)
    except Exception as error:
        if WORKER_START_TIMED_OUT not in str(error):
            raise
        pytest.skip("the machine is too loaded for Spark's fixed 10 s Python worker start")
    query.awaitTermination(120)
    assert sorted(row.n for row in spark.read.parquet(target).collect()) == [1, 2]


# -- pyspark.testing and pyspark.ml ---------------------------------------------------------


def test_pyspark_testing(spark: Any) -> None:
    from pyspark.testing import assertDataFrameEqual, assertSchemaEqual

    actual = spark.createDataFrame([(1, "a")], ["id", "v"])
    expected = spark.createDataFrame([(1, "a")], ["id", "v"])
    assertDataFrameEqual(actual, expected)
    assertDataFrameEqual(actual, [Row(id=1, v="a")])
    assertSchemaEqual(actual.schema, expected.schema)
    with pytest.raises(AssertionError):
        assertDataFrameEqual(actual, [Row(id=2, v="a")])


def test_pyspark_ml_pipeline(spark: Any, engine: str) -> None:
    engine_has(engine, "pyspark.ml")
    import pyspark.ml.util

    if not hasattr(pyspark.ml.util, "try_remote_fit"):  # 3.5, Databricks Connect 16.1
        pytest.skip("this client's pyspark.ml does not run over Spark Connect")
    from pyspark.ml import Pipeline
    from pyspark.ml.classification import LogisticRegression
    from pyspark.ml.feature import VectorAssembler

    rows = [(float(x), float(x > 2)) for x in range(6)]
    train = spark.createDataFrame(rows, ["x", "label"])
    pipeline = Pipeline(
        stages=[VectorAssembler(inputCols=["x"], outputCol="features"), LogisticRegression()]
    )
    model = pipeline.fit(train)
    predictions = model.transform(train).select("label", "prediction").collect()
    assert sum(row.label == row.prediction for row in predictions) >= 5
