"""The local Spark server's master: ``--safestop-master`` and its checks, ``local-cluster`` and a
real standalone cluster on loopback, each running a Python UDF."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from pyspark_safestop._settings import (
    DEFAULT_MASTER,
    SafestopWarning,
    master_from_env,
    validate_master,
)
from pyspark_safestop.servers import SparkConnectServer, find_spark_home
from pyspark_safestop.testing.cluster import StandaloneCluster
from tests.children import run_inner

# Imported before any inner run: pytester unloads what an inner run imported, and numpy cannot
# be imported twice in a process.
pytest.importorskip("pandas")


@pytest.mark.parametrize(
    "master",
    ["local", "local[1]", "local[*]", "local[4,2]", "local-cluster[2,1,1024]",
     "spark://127.0.0.1:7077", "spark://localhost:7077"],
)  # fmt: skip
def test_masters_that_run_here(master: str) -> None:
    assert validate_master(f" {master} ") == master


@pytest.mark.parametrize(
    "master",
    ["yarn", "k8s://https://k:443", "local[0]", "local-cluster[2,1]", "spark://", "mesos://m:5050",
     "local[x]", "", 7077],
)  # fmt: skip
def test_other_masters_are_refused_by_name(master: object) -> None:
    with pytest.raises(ValueError, match=r"--safestop-master must be local.*got") as raised:
        validate_master(master, "--safestop-master")
    assert repr(master) in str(raised.value)


def test_a_cluster_elsewhere_is_refused_with_the_way_to_use_it() -> None:
    with pytest.raises(ValueError, match=r"cannot reach; .* --safestop-remote"):
        validate_master("spark://cluster.invalid:7077")


def test_a_bad_master_in_the_environment_warns_once_and_defaults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PYSPARK_SAFESTOP_MASTER", "yarn-unknown")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert master_from_env() == DEFAULT_MASTER
        assert master_from_env() == DEFAULT_MASTER
    said = [str(w.message) for w in caught if issubclass(w.category, SafestopWarning)]
    assert len(said) == 1
    assert "PYSPARK_SAFESTOP_MASTER" in said[0]
    assert "'yarn-unknown'" in said[0]


def test_the_server_takes_the_master_once(tmp_path: Path) -> None:
    home = tmp_path  # not started: no jars needed
    assert SparkConnectServer(home, master="local[1]").master == "local[1]"
    assert SparkConnectServer(home, extra_conf={"spark.master": "local[3]"}).master == "local[3]"
    assert SparkConnectServer(home).master == DEFAULT_MASTER
    with pytest.raises(ValueError, match="the master is given twice"):
        SparkConnectServer(home, master="local[1]", extra_conf={"spark.master": "local[3]"})
    with pytest.raises(ValueError, match=r"spark\.master must be"):
        SparkConnectServer(home, extra_conf={"spark.master": "yarn"})


def test_a_secret_conf_never_reaches_the_command_line(tmp_path: Path) -> None:
    server = SparkConnectServer(
        tmp_path, extra_conf={"spark.authenticate.secret": "s3cr3t", "spark.x": "1"}
    )
    workdir = tmp_path / "work"
    workdir.mkdir(mode=0o700)
    command = server._command(workdir)
    assert "s3cr3t" not in " ".join(command)
    properties = Path(command[command.index("--properties-file") + 1])
    assert properties.read_text() == "spark.authenticate.secret=s3cr3t\n"
    assert properties.stat().st_mode & 0o777 == 0o600
    assert "spark.x=1" in command


# -- real masters -------------------------------------------------------------------------------

UDF_ON_THE_MASTER = """
from pyspark.sql import functions as F


def test_udf(spark):
    assert spark.conf.get("spark.master") == {master!r}
    plus_one = F.udf(lambda x: x + 1, "long")
    rows = spark.range(4).repartition(4).select(plus_one("id").alias("n")).collect()
    assert sorted(row.n for row in rows) == [1, 2, 3, 4]
"""


@pytest.mark.server
@pytest.mark.engine
def test_local_cluster_runs_a_udf(inner: pytest.Pytester) -> None:
    master = "local-cluster[2,1,1024]"
    inner.makepyfile(UDF_ON_THE_MASTER.format(master=master))
    result = run_inner(inner, "--safestop-master", master, "--safestop-require-server")
    result.assert_outcomes(passed=1)
    assert f"; master {master}; Python workers: " in result.stdout.str()


@pytest.mark.server
@pytest.mark.engine
def test_a_standalone_cluster_on_loopback_runs_a_udf(inner: pytest.Pytester) -> None:
    home = find_spark_home()
    if home is None:
        pytest.fail("no Spark home: the standalone cluster needs one")
    with StandaloneCluster(home, cores=2, memory_mb=2048) as cluster:
        # The secret in an ini file, not on a command line.
        confs = "\n    ".join(f"{key}={value}" for key, value in cluster.conf.items())
        inner.makeini(
            f"[pytest]\nsafestop_master = {cluster.master_url}\nsafestop_server_conf =\n"
            f"    {confs}\n"
        )
        inner.makepyfile(UDF_ON_THE_MASTER.format(master=cluster.master_url))
        result = run_inner(inner, "--safestop-require-server")
        result.assert_outcomes(passed=1)
        logs = "".join(path.read_text() for path in cluster.log_paths)
    assert "Launching executor" in logs or "Asked to launch executor" in logs, logs[-3000:]
