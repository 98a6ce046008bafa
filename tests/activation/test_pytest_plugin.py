"""The installed pytest plugin: one real server per xdist worker, suites side by side, the
plugin without the ``.pth``, ``-p no:pyspark_safestop``."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.activation.conftest import Env

pytestmark = pytest.mark.server

#: A user's suite. Each worker writes what its server and sessions were to $RESULTS/<worker>.json.
SUITE = """
import json, os
from pathlib import Path

import pytest

import pyspark_safestop
from pyspark_safestop import connect_session


@pytest.fixture(scope="session", autouse=True)
def record_worker(spark_connect_server, spark_connect_url):
    with connect_session(spark_connect_url) as session:
        app = session.conf.get("spark.app.id")
        rows = session.range(6).count()
    status = pyspark_safestop.status()
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    results = Path(os.environ["RESULTS"])
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{worker}.json").write_text(json.dumps({
        "worker": worker,
        "port": spark_connect_server.port,
        "pid": spark_connect_server.pid,
        "url": spark_connect_url,
        "log": str(spark_connect_server.log_path),
        "app": app,
        "rows": rows,
        "activated_by": status["activated_by"],
        "patches": len(status["patches"]),
    }))


def test_spark(spark):
    assert spark.range(5).count() == 5


class TestShared:
    def test_one(self, spark_per_class):
        assert spark_per_class.range(3).count() == 3

    def test_two(self, spark_per_class):
        assert spark_per_class.range(4).count() == 4


def test_more(spark):
    assert spark.range(2).count() == 2
"""

FAILING = """
def test_failure_shows_the_server_log(spark):
    assert spark.range(1).count() == 2
"""


def make_suite(folder: Path, *extra: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "test_suite.py").write_text(SUITE + "".join(extra))
    return folder


def results(suite: Path) -> list[dict[str, Any]]:
    found = sorted((suite / "results").glob("*.json"))
    return [json.loads(path.read_text()) for path in found]


def test_two_suites_under_xdist_at_once(wheel_env: Env, tmp_path: Path) -> None:
    """Two checkouts' suites at once, two workers each: four servers, no port or log shared,
    each worker's sessions on its own server, every JVM gone afterwards."""
    runs = []
    for name in ("worktree-a", "worktree-b"):
        suite = make_suite(tmp_path / name, FAILING if name == "worktree-a" else "")
        proc = subprocess.Popen(
            [wheel_env.python, "-m", "pytest", "-n", "2", "-p", "no:cacheprovider", "-rA"],
            cwd=suite,
            env=wheel_env.env(RESULTS=str(suite / "results")),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        runs.append((suite, proc))
    outputs = {}
    for suite, proc in runs:
        out, _ = proc.communicate(timeout=600)
        outputs[suite.name] = (proc.returncode, out)

    code_a, out_a = outputs["worktree-a"]
    code_b, out_b = outputs["worktree-b"]
    assert code_b == 0, out_b
    assert code_a == 1, out_a  # the one failing test, on purpose
    assert "4 passed" in out_b
    assert "1 failed, 4 passed" in out_a
    logs_a = {r["log"] for r in results(tmp_path / "worktree-a")}
    assert any(f"Spark Connect server log (tail of {log})" in out_a for log in logs_a), out_a
    for out in (out_a, out_b):
        assert "pyspark-safestop 0.1.0: active (activated by pytest-plugin)" in out

    seen = results(tmp_path / "worktree-a") + results(tmp_path / "worktree-b")
    assert len(seen) == 4, seen
    assert {r["worker"] for r in seen} == {"gw0", "gw1"}
    for key in ("port", "pid", "app", "log"):
        assert len({r[key] for r in seen}) == 4, (key, seen)
    for r in seen:
        assert r["url"].startswith(f"sc://localhost:{r['port']}/;token=")
        assert r["rows"] == 6
        assert r["activated_by"] == "pytest-plugin"
        assert r["patches"] >= 3
        assert not psutil.pid_exists(r["pid"]) or psutil.Process(r["pid"]).status() == "zombie"


def test_plugin_activates_without_the_pth(wheel_env: Env, tmp_path: Path) -> None:
    """``python -S`` with site-packages on PYTHONPATH: no .pth runs, the plugin activates."""
    suite = tmp_path / "suite"
    suite.mkdir()
    result_file = tmp_path / "result.json"
    (suite / "test_status.py").write_text(
        "import json, sys\n"
        "def test_status():\n"
        "    boot = sys.modules.get('_pyspark_safestop_boot')\n"
        "    import pyspark.sql.connect.session\n"
        "    import pyspark_safestop\n"
        "    s = pyspark_safestop.status()\n"
        f"    open({str(result_file)!r}, 'w').write(json.dumps({{\n"
        "        'boot': boot.state if boot else None,\n"
        "        'by': s['activated_by'], 'patches': len(s['patches'])}))\n"
    )
    env = wheel_env.env(PYTHONPATH=str(wheel_env.site_packages))
    proc = wheel_env.run(
        wheel_env.python, "-S", "-m", "pytest", "-p", "no:cacheprovider", cwd=suite, env=env
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(result_file.read_text())
    assert result["boot"] == "off"  # imported by the plugin's entry point, never booted
    assert result["by"] == "pytest-plugin"
    assert result["patches"] >= 3


def test_no_plugin_option_turns_it_off(wheel_env: Env, tmp_path: Path) -> None:
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "test_off.py").write_text(
        "import sys\n"
        "def test_not_loaded(request):\n"
        "    assert 'pyspark_safestop' not in sys.modules\n"
        "    assert request.config.pluginmanager.get_plugin('pyspark_safestop') is None\n"
        "def test_no_fixtures(spark):\n"
        "    pass\n"
    )
    proc = wheel_env.run(
        wheel_env.python, "-m", "pytest", "-p", "no:pyspark_safestop", "-p", "no:cacheprovider",
        cwd=suite,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout
    assert "1 passed, 1 error" in proc.stdout
    assert "fixture 'spark' not found" in proc.stdout
    assert "pyspark-safestop 0.1.0:" not in proc.stdout
