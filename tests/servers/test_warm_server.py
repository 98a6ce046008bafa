"""Warm servers (``--safestop-reuse-server``), in real pytest runs one after the other: the second
run attaches to the server the first one left up (xdist workers and the factory too), another
fingerprint gets another server, ``pyspark-safestop servers`` lists them and ``--stop`` ends
them; a server left alone stops after its idle time, or when its files are removed; a stale
record (its host SIGKILLed, its port answered by another process, a token the server refuses)
is replaced, never trusted; another user can neither read the record nor find the server.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from pyspark_safestop.servers import find_sail
from tests import children
from tests.children import PLUGIN_ONLY, run_python
from tests.foreign_user import ForeignUser

# Server-side behaviour, the same whatever the client line: run on one line (noxfile.py).
pytestmark = [pytest.mark.server, pytest.mark.engine]

REPO = Path(__file__).resolve().parents[2]
#: Only detects a hang.
HANG = 300.0
#: Seconds a server may take to go once its host is told to stop (or is gone).
GONE_WITHIN = 30.0

SUITE = """
import json, os, time
from pathlib import Path

import pytest

OUT = Path(os.environ["RECORD_DIR"])


@pytest.mark.parametrize("n", range(int(os.environ.get("TESTS", "1"))))
def test_query(n, spark, spark_connect_server):
    assert spark.range(n + 1).count() == n + 1
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    (OUT / f"ran-{worker}-{os.getpid()}-{time.monotonic_ns()}.json").write_text(
        json.dumps({"server": spark_connect_server.pid, "url": spark_connect_server.url,
                    "worker": worker})
    )
"""

FACTORY = """
import json, os
from pathlib import Path


def test_factory(spark_connect_server_factory):
    server = spark_connect_server_factory(engine="sail", reuse=True)
    (Path(os.environ["RECORD_DIR"]) / f"factory-{os.getpid()}.json").write_text(
        json.dumps({"server": server.pid})
    )
"""


class Runs:
    """Inner pytest runs of one suite, sharing a private folder of warm servers."""

    def __init__(self, tmp_path: Path, engine: str) -> None:
        if engine == "sail" and find_sail() is None:
            pytest.skip("no sail executable (pip install pysail)")
        self.engine = engine
        self.folder = tmp_path / "suite"
        self.folder.mkdir()
        (self.folder / "test_suite.py").write_text(textwrap.dedent(SUITE))
        (self.folder / "test_factory.py").write_text(textwrap.dedent(FACTORY))
        self.out = tmp_path / "records"
        self.out.mkdir()
        self.warm = tmp_path / "warm"
        self.env = dict(os.environ)
        self.env.update(
            PYTHONPATH=os.pathsep.join([str(REPO), str(self.folder)]),
            RECORD_DIR=str(self.out),
            PYSPARK_SAFESTOP_WARM_DIR=str(self.warm),
        )

    def pytest(self, *args: str, tests: int = 1, target: str = "test_suite.py") -> int:
        """Run the suite with a warm server; return the one server its tests ran on."""
        for old in self.out.glob("*.json"):
            old.unlink()
        run = run_python(
            "-m",
            "pytest",
            *PLUGIN_ONLY,
            "--safestop-reuse-server",
            "--safestop-engine",
            self.engine,
            *args,
            target,
            cwd=self.folder,
            env={**self.env, "TESTS": str(tests)},
            timeout=HANG,
        )
        assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
        ran = [json.loads(path.read_text()) for path in self.out.glob("*.json")]
        servers = {record["server"] for record in ran}
        assert len(servers) == 1, ran
        self.last_output = run.stdout
        self.last_records = ran
        return int(servers.pop())

    def cli(self, *args: str) -> Any:
        """``pyspark-safestop servers ARGS --json``, its output parsed."""
        run = run_python(
            "-m", "pyspark_safestop", "servers", *args, "--json", env=self.env, timeout=HANG
        )
        assert run.returncode == 0, run.stderr
        return json.loads(run.stdout)

    def records(self) -> list[Path]:
        """The warm servers' folders."""
        return sorted(self.warm.iterdir()) if self.warm.exists() else []

    def stop_all(self) -> None:
        """End whatever the test left up (also when it failed)."""
        if self.warm.exists():
            self.cli("--stop")


@pytest.fixture
def runs(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    made = Runs(tmp_path, request.param)
    yield made
    made.stop_all()


def gone(pid: int, within: float = GONE_WITHIN) -> bool:
    return children.gone(pid, within)


def alive(pid: int) -> bool:
    return not children.gone(pid, 0.0)


def host_of(folder: Path) -> int:
    return int(json.loads((folder / "host.json").read_text())["pid"])


@pytest.mark.parametrize("runs", ["spark", "sail"], indirect=True)
def test_the_next_run_attaches_and_servers_stop_ends_it(runs: Runs) -> None:
    first = runs.pytest()
    assert "a warm one kept between runs" in runs.last_output
    # The run is over; its server is not.
    assert alive(first)
    (listed,) = runs.cli()
    assert (listed["engine"], listed["pid"], listed["state"]) == (runs.engine, first, "up")
    doctor = run_python("-m", "pyspark_safestop", "doctor", "--json", env=runs.env, timeout=HANG)
    (shown,) = json.loads(doctor.stdout)["warm_servers"]
    assert f"{runs.engine} up: port {listed['port']} pid {first}" in shown, shown
    # The next run, xdist workers included, finds it: no start.
    assert runs.pytest("-n", "2", tests=4) == first
    assert {record["worker"] for record in runs.last_records} == {"gw0", "gw1"}
    (folder,) = runs.records()
    host = host_of(folder)
    stopped = runs.cli("--stop")
    assert [server["pid"] for server in stopped] == [first]
    assert gone(first), "the warm server outlived `servers --stop`"
    assert gone(host)
    assert runs.cli() == []
    assert runs.records() == []


@pytest.mark.parametrize("runs", ["sail"], indirect=True)
def test_another_fingerprint_gets_another_server_and_the_factory_reuses_too(runs: Runs) -> None:
    plain = runs.pytest()
    other = runs.pytest("--safestop-server-conf", "SAIL_SPARK__SESSION_TIMEOUT_SECS=300")
    assert other != plain
    assert alive(plain)
    assert len(runs.cli()) == 2
    # The factory's reuse=True finds the plain one, from a run that asks for no warm server.
    factory = run_python(
        "-m", "pytest", *PLUGIN_ONLY, "test_factory.py", cwd=runs.folder, env=runs.env, timeout=HANG
    )
    assert factory.returncode == 0, factory.stdout[-3000:]
    (record,) = [json.loads(path.read_text()) for path in runs.out.glob("factory-*.json")]
    assert record["server"] == plain


@pytest.mark.parametrize("runs", ["sail"], indirect=True)
def test_left_alone_it_stops_after_its_idle_time(runs: Runs) -> None:
    server = runs.pytest("--safestop-reuse-idle", "2")
    (folder,) = runs.records()
    host = host_of(folder)
    assert gone(server), "the warm server outlived its idle time"
    assert gone(host)
    assert not folder.exists()


@pytest.mark.parametrize("runs", ["sail"], indirect=True)
def test_its_files_removed_it_stops(runs: Runs) -> None:
    server = runs.pytest()
    (folder,) = runs.records()
    host = host_of(folder)
    shutil.rmtree(folder)
    assert gone(server), "the warm server outlived its files"
    assert gone(host)


@pytest.mark.parametrize("runs", ["sail"], indirect=True)
def test_a_sigkilled_host_takes_its_server_and_the_next_run_starts_another(runs: Runs) -> None:
    server = runs.pytest()
    (folder,) = runs.records()
    os.kill(host_of(folder), signal.SIGKILL)
    assert gone(server), "the warm server outlived its SIGKILLed host"
    replaced = runs.pytest()
    assert replaced != server
    assert alive(replaced)


@pytest.mark.parametrize("runs", ["sail"], indirect=True)
def test_a_record_whose_port_another_process_answers_is_replaced(runs: Runs) -> None:
    server = runs.pytest()
    (folder,) = runs.records()
    host = host_of(folder)
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        record = json.loads((folder / "server.json").read_text())
        record["port"] = squatter.getsockname()[1]
        record["url"] = f"sc://localhost:{record['port']}"
        (folder / "server.json").write_text(json.dumps(record))
        replaced = runs.pytest()
    assert replaced != server
    # The host of the record it did not trust was ended, and its server with it.
    assert gone(host)
    assert gone(server)


@pytest.mark.parametrize("runs", ["spark"], indirect=True)
def test_a_token_refused_is_replaced_and_a_stranger_finds_nothing(
    runs: Runs, foreign_user: ForeignUser, tmp_path: Path
) -> None:
    server = runs.pytest()
    (folder,) = runs.records()
    # Another user: the record is not theirs to read, and their own runs find no server of ours.
    script = tmp_path / "stranger.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import json, os
            from pyspark_safestop.servers import _warm
            try:
                open({str(folder / "server.json")!r}).read()
                record = "read"
            except OSError as error:
                record = type(error).__name__
            os.environ["PYSPARK_SAFESTOP_WARM_DIR"] = {str(runs.warm)!r}
            theirs = [s.pid for s in _warm.warm_servers()]
            os.environ.pop("PYSPARK_SAFESTOP_WARM_DIR")
            own = [s.pid for s in _warm.warm_servers()]
            print(json.dumps({{"record": record, "theirs": theirs, "own": own}}))
            """
        )
    )
    result = foreign_user.run(
        [foreign_user.python, str(foreign_user.copy(script))],
        env=foreign_user.env(children.clean_env(), path=[foreign_user.package()]),
        timeout=HANG,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen == {"record": "PermissionError", "theirs": [], "own": []}, seen
    # A record whose token the server refuses is not used: another server is started.
    record = json.loads((folder / "server.json").read_text())
    record["url"] = record["url"].split(";token=")[0] + ";token=not-the-token"
    (folder / "server.json").write_text(json.dumps(record))
    replaced = runs.pytest()
    assert replaced != server
    assert gone(server)


def test_a_bad_idle_time_is_a_usage_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "test_nothing.py").write_text("def test_nothing():\n    pass\n")
    run = run_python(
        "-m",
        "pytest",
        *PLUGIN_ONLY,
        "--safestop-reuse-idle",
        "soon",
        cwd=tmp_path,
        env=children.clean_env(),
        timeout=HANG,
    )
    assert run.returncode == 4, run.stdout + run.stderr
    assert "--safestop-reuse-idle" in run.stderr
    assert "'soon'" in run.stderr


def test_a_bad_reuse_variable_warns_once_and_reuses_nothing(tmp_path: Path) -> None:
    (tmp_path / "test_nothing.py").write_text("def test_nothing():\n    pass\n")
    run = run_python(
        "-m",
        "pytest",
        *PLUGIN_ONLY,
        "-W",
        "error",
        cwd=tmp_path,
        env=children.clean_env(PYSPARK_SAFESTOP_REUSE_SERVER="perhaps"),
        timeout=HANG,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "'perhaps' is not understood" in run.stdout + run.stderr
    assert "kept between runs" not in run.stdout


def test_the_fingerprint_tells_settings_apart() -> None:
    from pyspark_safestop.servers import SparkConnectServer
    from pyspark_safestop.servers._warm import fingerprint

    home = Path(sys.prefix)
    plain = SparkConnectServer(home)
    other = SparkConnectServer(home, extra_conf={"spark.sql.shuffle.partitions": "3"})
    secret = SparkConnectServer(home, extra_conf={"spark.authenticate.secret": "hunter2"})
    assert fingerprint("spark", plain)[0] == fingerprint("spark", SparkConnectServer(home))[0]
    assert fingerprint("spark", plain)[0] != fingerprint("spark", other)[0]
    _digest, parts = fingerprint("spark", secret)
    assert "hunter2" not in json.dumps(parts)


def test_a_record_naming_a_reused_pid_is_not_its_host() -> None:
    import psutil

    from pyspark_safestop.servers._warm import host_is_alive

    me = psutil.Process()
    # This very process, but not a warm server's host (its command line), then a start time
    # that is not its own (a PID reused since the record was written), then no process.
    assert not host_is_alive({"pid": me.pid, "create_time": me.create_time()})
    assert not host_is_alive({"pid": me.pid, "create_time": me.create_time() - 100})
    assert not host_is_alive({"pid": 1, "create_time": psutil.Process(1).create_time()})
    assert not host_is_alive({"pid": "not a pid"})


def test_a_folder_others_can_write_is_refused_naming_it(tmp_path: Path) -> None:
    from pyspark_safestop.servers import ServerRequest
    from pyspark_safestop.servers._warm import attach

    if find_sail() is None:
        pytest.skip("no sail executable (pip install pysail)")
    folder = tmp_path / "warm"
    folder.mkdir(mode=0o777)
    folder.chmod(0o777)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYSPARK_SAFESTOP_WARM_DIR", str(folder))
        with pytest.raises(PermissionError, match="PYSPARK_SAFESTOP_WARM_DIR") as refused:
            attach("sail", ServerRequest())
    assert str(folder) in str(refused.value)
    assert list(folder.iterdir()) == []
