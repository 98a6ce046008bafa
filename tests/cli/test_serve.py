"""``serve``: usage errors, its log file, a pipe to ``head``, a server that exits by itself, a
closed stdout; a real server stopped by Ctrl-C and SIGTERM in tests/activation."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from pyspark_safestop.servers import find_spark_home
from tests.children import clean_env, has_name, in_own_session, run_python, server_processes

# The command's behaviour is the same whatever the client line: run on one line (noxfile.py).
pytestmark = pytest.mark.engine


def serve(*args: str) -> subprocess.CompletedProcess[str]:
    return run_python("-m", "pyspark_safestop", "serve", *args, env=clean_env(), timeout=60)


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--conf", "novalue"], "'novalue'"),
        (["--conf", "=x"], "'=x'"),
        (["--start-timeout", "-1"], "'-1'"),
        (["--start-timeout", "soon"], "'soon'"),
    ],
)
def test_bad_arguments_are_usage_errors(args: list[str], named: str) -> None:
    proc = serve(*args)
    assert proc.returncode == 2, proc.stderr
    assert "usage: pyspark-safestop serve" in proc.stderr
    assert named in proc.stderr


def test_unknown_option_is_a_usage_error() -> None:
    proc = serve("--port", "15002")
    assert proc.returncode == 2
    assert "unrecognized arguments: --port 15002" in proc.stderr


# -- a real server ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def spark_home() -> str:
    home = find_spark_home()
    if home is None:
        pytest.skip("no Spark jars (set PYSPARK_SAFESTOP_SPARK_HOME)")
    return str(home)


def test_log_through_a_symlink_is_refused(spark_home: str, tmp_path: Path) -> None:
    target = tmp_path / "precious"
    target.write_text("keep me")
    link = tmp_path / "server.log"
    link.symlink_to(target)
    proc = serve("--spark-home", spark_home, "--log", str(link))
    assert proc.returncode == 1, proc.stderr
    assert f"log file {str(link)!r} is a symbolic link: refusing it" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert target.read_text() == "keep me"


@pytest.mark.server
def test_piped_to_head_and_exited_by_itself_quotes_its_temporary_log(spark_home: str) -> None:
    """``serve | head -1``: the URL reaches head; when the JVM dies on its own, serve says so
    with the end of its log (a temporary log is gone afterwards), without a traceback."""
    command = f"{shlex.quote(sys.executable)} -m pyspark_safestop serve --spark-home "
    command += f"{shlex.quote(spark_home)} | head -1"
    shell = in_own_session(["bash", "-o", "pipefail", "-c", command], env=clean_env())
    try:
        assert shell.stdout is not None
        url = shell.stdout.readline().strip()
        assert re.fullmatch(r"sc://localhost:\d+/;token=[\w-]{43}", url), url
        jvms = [p for p in server_processes(shell) if has_name(p, "java")]
        assert len(jvms) == 1, jvms
        jvms[0].kill()  # our own server's JVM, dying "by itself"
        _, err = shell.communicate(timeout=120)
        assert shell.returncode == 1, err  # serve's status, through pipefail
        assert "exited by itself; the end of its log:" in err
        assert "Spark Connect server started" in err
        assert "Traceback" not in err
        assert url.split("token=")[1] not in err
    finally:
        if shell.poll() is None:
            os.killpg(shell.pid, signal.SIGKILL)
            shell.wait()


@pytest.mark.server
def test_stdout_closed_before_the_url_stops_without_a_traceback(spark_home: str) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody will read the URL
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "pyspark_safestop", "serve", "--spark-home", spark_home],
            env=clean_env(),
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=300,
            check=False,
        )
    finally:
        os.close(write_end)
    assert proc.returncode == 1, proc.stderr
    assert "stdout was closed before the URL could be written; stopped" in proc.stderr
    assert "Traceback" not in proc.stderr
