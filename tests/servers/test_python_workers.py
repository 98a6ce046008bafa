"""The servers' Python workers run the tests' interpreter, and the fixtures' sessions are in
Connect mode: what a user's UDFs and ``pyspark.sql.functions`` need, proved against the way
they failed before (workers on another interpreter, a session built outside Connect mode)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from pyspark_safestop.client import _operations
from pyspark_safestop.servers import SparkConnectServer, find_spark_home
from pyspark_safestop.servers._workers import ENV_WORKER_PYTHON, server_pyspark, worker_python
from tests.children import clean_env, run_inner, run_python


@pytest.mark.pure
def test_the_workers_run_the_tests_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_WORKER_PYTHON, raising=False)
    chosen = worker_python()
    assert chosen.executable == sys.executable
    assert chosen.version == sys.version_info[:2]
    assert chosen.source == "this interpreter"
    version = ".".join(map(str, sys.version_info[:2]))
    assert chosen.describe() == f"{sys.executable} (Python {version}, this interpreter)"


@pytest.mark.pure
def test_pyspark_python_set_by_the_user_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_WORKER_PYTHON, sys.executable)
    assert worker_python().source == ENV_WORKER_PYTHON
    assert SparkConnectServer(Path("/nonexistent")).worker_python.source == ENV_WORKER_PYTHON
    assert worker_python("/bin/false").source == "given"


@pytest.mark.pure
def test_a_worker_python_that_cannot_run_is_said(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_WORKER_PYTHON, "/nonexistent/python3")
    chosen = worker_python()
    assert chosen.version is None
    assert chosen.problems(None) == ["the workers' Python /nonexistent/python3 cannot be run"]


@pytest.mark.pure
def test_the_server_pyspark_requirements_are_read_from_its_metadata(tmp_path: Path) -> None:
    home = tmp_path / "site-packages" / "pyspark"
    home.mkdir(parents=True)
    info = tmp_path / "site-packages" / "pyspark-9.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(
        textwrap.dedent(
            """\
            Name: pyspark
            Version: 9.1.0
            Requires-Python: >=3.99
            Requires-Dist: pyarrow>=99.0.0; extra == "connect"
            Requires-Dist: pandas>=2.2.0; extra == "sql"
            """
        )
    )
    server = server_pyspark(home)
    assert server is not None
    assert (server.version, server.python, server.packages) == (
        "9.1.0",
        (3, 99),
        {"pyarrow": "99.0.0"},
    )
    problems = worker_python().problems(home, "arrow")
    assert len(problems) == 2, problems
    assert "need Python 3.99 or newer" in problems[0]
    assert "need pyarrow >= 99.0.0" in problems[1]
    assert problems[1].endswith("mapInPandas and applyInPandas fail")
    assert worker_python().problems(home) == [problems[0]]  # plain UDFs need Python only


# -- against a real server ----------------------------------------------------------------------

PANDAS_UDF = """
import pandas as pd
from pyspark.sql import functions as F

@F.pandas_udf("long")
def plus_one(values: pd.Series) -> pd.Series:
    return values + 1

print(spark.range(3).select(plus_one("id").alias("n")).collect())
"""


def _base_interpreter() -> str:
    """This Python's base interpreter, outside the tests' environment (no pyarrow there): what
    ``python3`` on a server's PATH usually is."""
    base = Path(sys.base_prefix) / "bin" / "python{}.{}".format(*sys.version_info[:2])
    proc = subprocess.run(
        [str(base), "-I", "-c", "import pandas, pyarrow"], capture_output=True, check=False
    )
    if proc.returncode == 0:
        pytest.skip(f"{base} has pandas and pyarrow: it cannot stand for a bare interpreter here")
    return str(base)


@pytest.mark.engine
@pytest.mark.server
def test_udfs_fail_on_another_interpreter_and_pass_on_the_tests() -> None:
    home = find_spark_home()
    problems = worker_python().problems(home, "arrow")
    if problems:
        pytest.skip("; ".join(problems))
    bare = _base_interpreter()
    from pyspark_safestop import connect_session

    outcomes = {}
    for name, python in (("bare", bare), ("default", None)):
        with (
            SparkConnectServer(home, python=python) as server,
            connect_session(server.url) as spark,
        ):
            namespace: dict[str, Any] = {"spark": spark}
            try:
                exec(PANDAS_UDF, namespace)
                outcomes[name] = "passed"
            except Exception as error:
                outcomes[name] = str(error)
    assert "ModuleNotFoundError: No module named" in outcomes["bare"], outcomes
    assert outcomes["default"] == "passed"


FUNCTIONS_ON_A_SESSION = """
import sys
from pyspark.sql import functions as F
from pyspark.sql.connect.session import SparkSession
from pyspark_safestop import connect_session

url = sys.argv[1]
if sys.argv[2] == "raw":
    spark = SparkSession.builder.remote(url).create()
    try:
        print(spark.range(5).agg(F.sum("id")).first()[0])
    finally:
        spark.stop()
else:
    with connect_session(url) as spark:
        print(spark.range(5).agg(F.sum("id")).first()[0])
"""


@pytest.mark.server
def test_functions_work_on_the_fixtures_sessions(spark_connect_url: str, tmp_path: Path) -> None:
    """On the full distribution, a Connect session built without Connect mode (as the fixtures
    did) breaks pyspark.sql.functions; the fixtures' sessions behave as ``remote(url)``'s."""
    script = tmp_path / "functions.py"
    script.write_text(FUNCTIONS_ON_A_SESSION)
    env = clean_env()
    env.pop("SPARK_CONNECT_MODE_ENABLED", None)
    ours = run_python(script, spark_connect_url, "ours", env=env, timeout=120)
    assert ours.returncode == 0, ours.stderr[-3000:]
    assert ours.stdout.split()[-1] == "10"
    # Where pyspark picks Connect or classic by the environment (the full distribution; the
    # thin ones and Databricks Connect are Connect only) and where the builder alone can
    # reach the server (not 3.5's token over TLS only).
    if _mode_by_environment(env) and not _operations.token_needs_channel_builder():
        raw = run_python(script, spark_connect_url, "raw", env=env, timeout=120)
        assert raw.returncode != 0
        assert "SESSION_OR_CONTEXT_NOT_EXISTS" in raw.stderr, raw.stderr[-3000:]


def _mode_by_environment(env: dict[str, str]) -> bool:
    probe = "from pyspark.sql.utils import is_remote; print(is_remote())"
    proc = run_python("-c", probe, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()[-1] == "False"


@pytest.mark.server
def test_the_header_names_the_workers_python(inner: pytest.Pytester) -> None:
    inner.makepyfile("def test_nothing(): pass")
    result = run_inner(inner)
    workers = f"Python workers: {sys.executable} (Python *, this interpreter)"
    result.stdout.fnmatch_lines([f"*fixtures use a local Spark Connect server*{workers}*"])
