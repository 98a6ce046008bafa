"""One server for a whole pytest-xdist run (``--safestop-shared-server``), in real ``pytest -n 2``
runs: one server for the run, every worker on it, none left afterwards; a worker SIGKILLed
leaves it to the others; an interrupted run stops it; the run's main process SIGKILLed takes it
along.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from pyspark_safestop.servers import find_sail
from tests import children
from tests.children import PLUGIN_ONLY, own_group, run_python

# Server-side behaviour, the same whatever the client line: run on one line (noxfile.py).
pytestmark = [pytest.mark.server, pytest.mark.engine]

REPO = Path(__file__).resolve().parents[2]
#: Seconds a server may take to disappear once its owner is gone.
GONE_WITHIN = 15.0
#: Only detects a hang.
HANG = 300.0

RECORDING = """
import json, os, time
from pathlib import Path

import pytest

OUT = Path(os.environ["RECORD_DIR"])


def record(server, what):
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    (OUT / f"{what}-{worker}-{os.getpid()}-{time.monotonic_ns()}.json").write_text(
        json.dumps({"server": server.pid, "url": server.url, "worker": worker})
    )


@pytest.mark.parametrize("n", range(6))
def test_query(n, spark, spark_connect_server):
    assert spark.range(n + 1).count() == n + 1
    record(spark_connect_server, "ran")
    time.sleep(0.3)  # room for the other worker to take its share
"""

CRASHING = """
import os, signal, time
from pathlib import Path

from test_recording import OUT, record


def test_crash(spark, spark_connect_server):
    record(spark_connect_server, "crashed")
    os.kill(os.getpid(), signal.SIGKILL)


def test_after_the_crash(spark, spark_connect_server):
    deadline = time.monotonic() + 120
    while not list(OUT.glob("crashed-*")) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)
    assert spark.range(4).count() == 4
    record(spark_connect_server, "survived")
"""

HOLDING = """
import time

from test_recording import record


def test_hold(spark_connect_server):
    record(spark_connect_server, "holding")
    time.sleep(600)
"""


def records(folder: Path, what: str) -> list[dict[str, object]]:
    return [json.loads(path.read_text()) for path in sorted(folder.glob(f"{what}-*.json"))]


def gone(pid: int, within: float = GONE_WITHIN) -> bool:
    return children.gone(pid, within)


def server_of(record: dict[str, object]) -> int:
    server = record["server"]
    assert isinstance(server, int)
    return server


def assert_gone_with_the_run(record: dict[str, object]) -> None:
    """The recorded server is gone once the run has ended."""
    server = server_of(record)
    assert gone(server, within=1.0), f"server {server} outlived the run"


def wait_holding(out: Path, proc: subprocess.Popen[str]) -> int:
    """The server of the inner run's holding test, once it has one."""
    deadline = time.monotonic() + HANG
    while not records(out, "holding") and proc.poll() is None:
        assert time.monotonic() < deadline, "the inner run never got its server"
        time.sleep(0.2)
    (held,) = records(out, "holding")
    return server_of(held)


@pytest.fixture
def suite(tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    pytest.importorskip("xdist")
    folder = tmp_path / "suite"
    folder.mkdir()
    (folder / "test_recording.py").write_text(textwrap.dedent(RECORDING))
    out = tmp_path / "records"
    out.mkdir()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(folder)])
    env["RECORD_DIR"] = str(out)
    return folder, out, env


def pytest_args(*args: str) -> list[str]:
    """The arguments to Python for an inner ``pytest -n 2`` run on one shared server."""
    return ["-m", "pytest", *PLUGIN_ONLY, "-n", "2", "--safestop-shared-server", *args]


@pytest.mark.parametrize("engine", ["spark", "sail"])
def test_one_server_for_the_run_every_worker_on_it_none_left(
    engine: str, suite: tuple[Path, Path, dict[str, str]]
) -> None:
    if engine == "sail" and find_sail() is None:
        pytest.skip("no sail executable")
    folder, out, env = suite
    run = run_python(
        *pytest_args("--safestop-engine", engine, "test_recording.py"),
        cwd=folder,
        env=env,
        timeout=HANG,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "one for the whole run" in run.stdout
    ran = records(out, "ran")
    assert len(ran) == 6
    assert {r["worker"] for r in ran} == {"gw0", "gw1"}, ran
    servers = {r["server"] for r in ran}
    assert len(servers) == 1, f"more than one server for the run: {servers}"
    assert len({r["url"] for r in ran}) == 1
    assert_gone_with_the_run(ran[0])


def test_a_worker_sigkilled_leaves_the_server_to_the_others_and_the_run_ends_it(
    suite: tuple[Path, Path, dict[str, str]],
) -> None:
    folder, out, env = suite
    (folder / "test_crashing.py").write_text(textwrap.dedent(CRASHING))
    run = run_python(*pytest_args("test_crashing.py"), cwd=folder, env=env, timeout=HANG)
    assert "1 failed, 1 passed" in run.stdout, run.stdout[-4000:]
    (crashed,) = records(out, "crashed")
    (survived,) = records(out, "survived")
    assert crashed["server"] == survived["server"]
    assert crashed["url"] == survived["url"]
    assert_gone_with_the_run(survived)


def test_the_main_process_sigkilled_takes_the_server_along(
    suite: tuple[Path, Path, dict[str, str]],
) -> None:
    folder, out, env = suite
    (folder / "test_holding.py").write_text(textwrap.dedent(HOLDING))
    with own_group([sys.executable, *pytest_args("test_holding.py")], cwd=folder, env=env) as proc:
        server = wait_holding(out, proc)
        assert psutil.Process(server).name() == "java"
        # The server is the main process's (through its launcher), not the worker's.
        ancestors = [p.pid for p in psutil.Process(server).parents()]
        assert proc.pid in ancestors, ancestors
        proc.kill()
        # The workers, orphaned, are in the run's process group: own_group ends them with it.
        assert gone(server), f"server {server} outlived the SIGKILLed main process"


def test_an_interrupted_run_stops_the_server(suite: tuple[Path, Path, dict[str, str]]) -> None:
    folder, out, env = suite
    (folder / "test_holding.py").write_text(textwrap.dedent(HOLDING))
    engine = "sail" if find_sail() else "spark"
    argv = [sys.executable, *pytest_args("--safestop-engine", engine, "test_holding.py")]
    with own_group(argv, cwd=folder, env=env) as proc:
        server = wait_holding(out, proc)
        proc.send_signal(signal.SIGINT)  # Ctrl-C: the run ends in order
        proc.wait(timeout=120)
        assert gone(server, within=1.0), f"server {server} outlived the interrupted run"
