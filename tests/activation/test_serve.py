"""``pyspark-safestop serve``: a real server, its URL, and no JVM left after Ctrl-C or SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from tests.activation.conftest import Env
from tests.children import has_name, server_processes

pytestmark = pytest.mark.server

START_TIMEOUT = 240.0


def start(env: Env) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(env.bin / "pyspark-safestop"), "serve"],
        env=env.env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_ctrl_c_stops_the_server(wheel_env: Env, tmp_path: Path) -> None:
    proc = start(wheel_env)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()  # printed once the server accepts connections
        match = re.fullmatch(r"sc://localhost:(\d+)/;token=[\w-]{43}", url)
        assert match, url
        children = server_processes(proc)
        assert any(has_name(p, "java") for p in children), children
        result = wheel_env.script(
            f"""
            import json
            from pyspark.sql.connect.session import SparkSession
            session = SparkSession.builder.remote({url!r}).create()
            print(json.dumps({{"rows": session.range(4).count()}}))
            session.stop()
            """,
            tmp_path,
        )
        assert result == {"rows": 4}
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
        _, err = proc.communicate()
        assert f"on localhost:{match.group(1)}" in err
        assert url.split("token=")[1] not in err  # stderr often ends up in logs
        _, alive = psutil.wait_procs(children, timeout=10)
        assert not alive, alive
    finally:
        if proc.poll() is None:
            proc.kill()


def test_sigterm_while_starting_leaves_no_jvm(wheel_env: Env) -> None:
    proc = start(wheel_env)
    try:
        deadline = time.monotonic() + START_TIMEOUT
        children: list[psutil.Process] = []
        # spark-submit execs the JVM in place: once a java process is there, it is starting.
        while not any(has_name(p, "java") for p in children) and time.monotonic() < deadline:
            time.sleep(0.05)
            children = server_processes(proc)
        assert children, "the server process never appeared"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        out, _ = proc.communicate()
        _, alive = psutil.wait_procs(children, timeout=10)
        assert not alive, alive
        assert out == "" or out.startswith("sc://")
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
