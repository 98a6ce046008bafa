"""The servers this project starts on a shared machine: only their owner can use them, they listen
on loopback only, they never outlive their owner, and their files are private.

Sail servers get all of it but the first: Sail checks no secret, so any local user can connect
to one (the report header and ``serve`` say so); the rest is tested for both engines.

Another local user is played by ``nobody`` (``tests/foreign_user.py``); owners are killed with a
real SIGKILL. The token's tests depend on the client line and run on every one; the others test
the server side alone (marked ``engine``) and run on one line.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from pyspark_safestop.client import _operations
from pyspark_safestop.servers import (
    SailServer,
    SparkConnectServer,
    find_sail,
    find_spark_home,
)
from pyspark_safestop.servers._local import open_private_log
from pyspark_safestop.servers._workers import worker_python
from tests import children
from tests.children import PLUGIN_ONLY, in_own_session, own_group, process_tree
from tests.foreign_user import ForeignUser

pytestmark = pytest.mark.server

REPO = Path(__file__).resolve().parents[2]
#: Seconds a killed owner's JVM may take to disappear.
GONE_WITHIN = 10.0
#: Only detects a hang.
HANG = 300.0

STRANGER = """
import json, sys

from pyspark.sql.connect.session import SparkSession

port, marker, guess = sys.argv[1], sys.argv[2], sys.argv[3] == "guess"
urls = [f"sc://127.0.0.1:{port}", f"sc://localhost:{port}"]
if guess:  # a guessed token, where the client sends one over a local plain channel
    urls.append(f"sc://localhost:{port}/;token=guessed")
outcome = {}
for url in urls:
    try:
        session = SparkSession.builder.remote(url).create()
        rows = session.sql(f"SELECT TRANSFORM(1) USING 'touch {marker}' AS (o)").collect()
        outcome[url] = f"ran: {rows!r}"
    except Exception as error:
        outcome[url] = f"refused: {str(error)[:400]}"
print(json.dumps(outcome))
"""


def transform_touching(path: Path) -> str:
    """A query that runs a shell command on the server: it creates ``path``."""
    return f"SELECT TRANSFORM(1) USING 'touch {path}' AS (o)"


def gone(pid: int, within: float = GONE_WITHIN) -> bool:
    return children.gone(pid, within)


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def listeners(pid: int) -> list[tuple[int, str, int]]:
    found = []
    for process in process_tree(pid):
        try:
            connections = process.net_connections(kind="inet")
        except psutil.Error:
            continue
        for conn in connections:
            if conn.status == psutil.CONN_LISTEN:
                found.append((process.pid, conn.laddr.ip, conn.laddr.port))
    return found


def ipv6_loopback_is_held(port: int) -> bool:
    """Whether no one else can bind ``[::1]:PORT``, where a client of ``localhost`` may go."""
    try:
        probe = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    except OSError:
        return True  # no IPv6 here: no one can listen there
    with probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("::1", port))
        except OSError as error:
            # In use: held. Not available: no ::1 here, so no one can listen there either.
            return error.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL)
        return False


@pytest.fixture(scope="module")
def spark_home() -> Path:
    home = find_spark_home()
    if home is None:
        pytest.skip("no Spark jars (set PYSPARK_SAFESTOP_SPARK_HOME)")
    return home


#: The name of each engine's server process.
SERVER_PROCESS = {"spark": "java", "sail": "sail"}


def require_engine(engine: str) -> None:
    """Skip a Sail variant where ``sail`` is not installed (pyspark-safestop[sail])."""
    if engine == "sail" and find_sail() is None:
        pytest.skip("no sail executable (pip install pysail)")


# -- owner only ---------------------------------------------------------------------------------


def test_the_owner_runs_commands_and_a_stranger_is_refused(
    spark: Any,
    spark_connect_server: SparkConnectServer,
    foreign_user: ForeignUser,
    tmp_path: Path,
) -> None:
    # The owner's session works, commands included: what the stranger tries would work.
    owned = tmp_path / "owner-ran-it"
    spark.sql(transform_touching(owned)).collect()
    assert owned.exists()

    marker = tmp_path / "stranger-ran-it"
    # Where the client sends a token only over TLS (3.5, Databricks Connect 16.1), a guessed one
    # never reaches this plain server: its handshake fails, retried for about a minute.
    guess = "no" if _operations.token_needs_channel_builder() else "guess"
    script = tmp_path / "stranger.py"
    script.write_text(STRANGER)
    copy = foreign_user.copy(script)
    result = foreign_user.run(
        [foreign_user.python, str(copy), str(spark_connect_server.port), str(marker), guess],
        env=foreign_user.env(),
        timeout=HANG,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    for url, what in outcome.items():
        assert what.startswith("refused:"), (url, what)
    assert any("UNAUTHENTICATED" in what for what in outcome.values()), outcome
    assert not marker.exists()


def test_the_token_is_in_no_command_line_log_environment_or_repr(
    spark: Any, spark_connect_server: SparkConnectServer, tmp_path: Path
) -> None:
    assert spark.range(3).count() == 3
    # Spark's foreachBatch worker prints the URL it connects back with, token included.
    printed = not worker_python().problems(find_spark_home(), "connect")
    if printed:
        writer = (
            spark.readStream.format("rate")
            .load()
            .writeStream.foreachBatch(lambda batch, batch_id: None)
            .option("checkpointLocation", str(tmp_path / "checkpoint"))
        )
        try:
            query = children.start_with_worker_retry(writer.start)
        except Exception as error:
            # A machine too loaded for Spark's 10 s worker start: nothing printed, nothing
            # to redact; the rest still holds.
            if children.WORKER_START_TIMED_OUT not in str(error):
                raise
            printed = False
        else:
            query.processAllAvailable()
            query.stop()
    token = spark_connect_server.token
    assert len(token) >= 22  # at least 128 bits in URL-safe base64
    assert f";token={token}" in spark_connect_server.url
    for process in psutil.process_iter():
        try:
            command = "\0".join(process.cmdline())
        except psutil.Error:
            continue
        assert token not in command, (process.pid, process.name())
    log = spark_connect_server.log_path.read_text(errors="replace")
    assert token not in log
    if printed:
        assert ";token=<redacted>" in log, log[-3000:]
    assert token not in repr(spark_connect_server)
    assert token not in "\0".join(f"{k}={v}" for k, v in os.environ.items())


@pytest.mark.engine
def test_extra_conf_cannot_move_a_bind_or_set_the_token(spark_home: Path) -> None:
    for key, value in [
        ("spark.connect.grpc.binding.address", "0.0.0.0"),
        ("spark.driver.bindAddress", "0.0.0.0"),
        ("spark.connect.authenticate.token", "mine"),
    ]:
        with pytest.raises(ValueError, match=key):
            SparkConnectServer(spark_home, extra_conf={key: value})


# -- loopback only, private files -----------------------------------------------------------------


@pytest.mark.engine
def test_every_listener_is_on_loopback_and_the_folder_is_private(
    spark_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPARK_LOCAL_IP", "0.0.0.0")
    server = SparkConnectServer(
        spark_home, log_path=tmp_path / "server.log", extra_conf={"spark.ui.enabled": "true"}
    )
    with server:
        found = listeners(server.pid)
        ports = {port for _, _, port in found}
        assert server.port in ports, found
        assert len(ports) >= 3, found  # gRPC, the driver's RPC and block manager, the UI
        assert [entry for entry in found if not is_loopback(entry[1])] == []
        assert ipv6_loopback_is_held(server.port)
        workdir = Path(psutil.Process(server.pid).cwd())
        assert workdir != tmp_path
        assert stat.S_IMODE(workdir.stat().st_mode) == 0o700
        assert stat.S_IMODE((tmp_path / "server.log").stat().st_mode) == 0o600
    assert not workdir.exists()


@pytest.mark.engine
def test_sail_listens_on_loopback_only_and_its_folder_is_private(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_engine("sail")
    # Where a Sail cluster's own processes would listen, were it asked for every interface.
    monkeypatch.setenv("SAIL_CLUSTER__WORKER_LISTEN_HOST", "0.0.0.0")
    with SailServer(log_path=tmp_path / "server.log") as server:
        assert server.url == f"sc://localhost:{server.port}"
        assert not server.authenticated  # said, not pretended: Sail checks no secret
        found = listeners(server.pid)
        assert server.port in {port for _, _, port in found}, found
        assert [entry for entry in found if not is_loopback(entry[1])] == []
        assert ipv6_loopback_is_held(server.port)
        workdir = Path(psutil.Process(server.pid).cwd())
        assert stat.S_IMODE(workdir.stat().st_mode) == 0o700
        assert stat.S_IMODE((tmp_path / "server.log").stat().st_mode) == 0o600
        assert psutil.Process(server.pid).environ()["SAIL_CLUSTER__WORKER_LISTEN_HOST"] == (
            "127.0.0.1"
        )
    assert not workdir.exists()


@pytest.mark.engine
def test_a_sail_setting_moving_a_listener_or_not_a_sail_setting_is_refused() -> None:
    with pytest.raises(ValueError, match=re.escape("WORKER_LISTEN_HOST='0.0.0.0'")):
        SailServer(extra_env={"SAIL_CLUSTER__WORKER_LISTEN_HOST": "0.0.0.0"})
    with pytest.raises(ValueError, match=re.escape("'spark.ui.enabled'")):
        SailServer(extra_env={"spark.ui.enabled": "true"})


@pytest.mark.engine
def test_a_sail_log_through_a_symlink_is_refused_and_nothing_runs(tmp_path: Path) -> None:
    require_engine("sail")
    target = tmp_path / "precious"
    target.write_text("keep me")
    link = tmp_path / "server.log"
    link.symlink_to(target)
    server = SailServer(log_path=link)
    with pytest.raises(ValueError, match="symbolic link"):
        server.start()
    assert not server.running
    assert target.read_text() == "keep me"


@pytest.mark.engine
def test_the_log_is_never_opened_through_a_symlink_nor_a_strangers_file(tmp_path: Path) -> None:
    target = tmp_path / "precious"
    target.write_text("keep me")
    link = tmp_path / "server.log"
    link.symlink_to(target)
    with pytest.raises(ValueError, match="symbolic link"):
        open_private_log(link)
    assert target.read_text() == "keep me"
    if os.geteuid() == 0:
        planted = tmp_path / "planted.log"
        planted.write_text("theirs")
        os.chown(planted, 65534, 65534)
        with pytest.raises(ValueError, match="another user"):
            open_private_log(planted)
        assert planted.read_text() == "theirs"


# -- never outliving the owner --------------------------------------------------------------------


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO)
    return env


@pytest.mark.engine
@pytest.mark.parametrize("engine", ["spark", "sail"])
def test_sigkill_of_serve_leaves_no_server(engine: str) -> None:
    require_engine(engine)
    serve = [sys.executable, "-m", "pyspark_safestop", "serve", "--engine", engine]
    proc = in_own_session(serve, env=_env())
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        assert url.startswith("sc://localhost:"), url
        (jvm,) = [p for p in process_tree(proc.pid) if p.name() == SERVER_PROCESS[engine]]
        workdir = Path(jvm.cwd())
        proc.kill()
        proc.wait(timeout=HANG)
        assert gone(jvm.pid), f"{engine} server {jvm.pid} outlived its SIGKILLed owner"
        assert gone_path(workdir)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def gone_path(path: Path, within: float = GONE_WITHIN) -> bool:
    deadline = time.monotonic() + within
    while path.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    return not path.exists()


HOLDING_SUITE = """
import json, os, time
from pathlib import Path


def test_hold(spark_connect_server):
    Path(os.environ["HOLD_FILE"]).write_text(
        json.dumps({"server": spark_connect_server.pid, "owner": os.getpid()})
    )
    time.sleep(600)
"""


@pytest.fixture
def holding_run(tmp_path: Path) -> tuple[Path, list[str], dict[str, str]]:
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "test_hold.py").write_text(textwrap.dedent(HOLDING_SUITE))
    env = _env()
    env["HOLD_FILE"] = str(tmp_path / "hold.json")
    argv = [sys.executable, "-m", "pytest", *PLUGIN_ONLY]
    return suite, argv, env


@pytest.mark.engine
@pytest.mark.parametrize("engine", ["spark", "sail"])
@pytest.mark.parametrize("who", ["pytest", "xdist-worker"])
def test_sigkill_of_a_pytest_process_holding_the_fixture_leaves_no_server(
    who: str, engine: str, holding_run: tuple[Path, list[str], dict[str, str]]
) -> None:
    require_engine(engine)
    if who == "xdist-worker":
        pytest.importorskip("xdist")
    suite, argv, env = holding_run
    hold = Path(env["HOLD_FILE"])
    extra = ["--safestop-engine", engine]
    extra += ["-n", "1"] if who == "xdist-worker" else []
    with own_group([*argv, *extra, str(suite)], cwd=suite, env=env) as proc:
        deadline = time.monotonic() + HANG
        while not hold.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert hold.exists(), "the inner run never got its server"
        held = json.loads(hold.read_text())
        owner = psutil.Process(held["owner"])
        assert (owner.pid == proc.pid) == (who == "pytest")
        assert psutil.Process(held["server"]).name() == SERVER_PROCESS[engine]
        owner.kill()
        assert gone(held["server"]), f"server {held['server']} outlived its SIGKILLed {who}"


FORKING_OWNER = """
import json, os, signal, sys, time

from pyspark_safestop.servers import SparkConnectServer, find_spark_home

server = SparkConnectServer(find_spark_home()).start()
child = os.fork()
if child == 0:  # a forked child that lives on: it must not keep the server alive
    time.sleep(120)
    os._exit(0)
with open(sys.argv[1], "w") as out:
    out.write(json.dumps({"server": server.pid, "child": child}))
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.engine
def test_a_forked_child_living_on_does_not_keep_the_server(tmp_path: Path) -> None:
    script = tmp_path / "owner.py"
    script.write_text(FORKING_OWNER)
    result, output = tmp_path / "held.json", tmp_path / "output.txt"
    with output.open("wb") as sink:  # not a pipe: the child keeps its copy open
        code = subprocess.call(
            [sys.executable, str(script), str(result)],
            env=_env(),
            stdout=sink,
            stderr=subprocess.STDOUT,
            timeout=HANG,
        )
    assert code == -signal.SIGKILL, output.read_text()[-3000:]
    held = json.loads(result.read_text())
    try:
        assert gone(held["server"]), f"JVM {held['server']} outlived its owner, held by a child"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(held["child"], signal.SIGKILL)  # the owner's child, started by this test


@pytest.mark.parametrize("cut", [3, 22, 27, 31, 45])
def test_the_launcher_redacts_a_secret_split_across_reads(cut: int) -> None:
    from pyspark_safestop.servers._launcher import _Redactor

    source_read, source_write = os.pipe()
    sink_read, sink_write = os.pipe()
    redactor = _Redactor(source_read, b"s3cr3t-t0ken", sink=sink_write)
    text = b"url sc://h:1/;token=s3cr3t-t0ken and s3cr3t-t0ken again; s3cr3"
    for part in (text[:cut], text[cut:]):
        os.write(source_write, part)
        assert redactor.pump()
    os.close(source_write)
    assert not redactor.pump()  # end of file: what was held back is written
    os.close(sink_write)
    with os.fdopen(sink_read, "rb") as sink:
        written = sink.read()
    os.close(source_read)
    assert written == b"url sc://h:1/;token=<redacted> and <redacted> again; s3cr3"
