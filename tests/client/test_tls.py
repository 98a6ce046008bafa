"""Faults behind TLS, with a token, where users meet them most (Databricks, an ingress): the
fault proxy terminates TLS with a test certificate, and a client trusting it meets a hung
call, a server that went away and a port where nothing listens.

Each client runs in a child interpreter whose environment trusts the certificate (gRPC reads
its roots once per process).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.children import clean_env

pytest.importorskip("grpc")
from pyspark_safestop.testing.faults import FaultProxy
from pyspark_safestop.testing.tls import TestCertificate

pytestmark = pytest.mark.server

MARKER = "SAFESTOP_TLS_MARKER"
BOUND = 3.0
CHILD_TIMEOUT = 180.0

CHILD = """
import json, sys, time
import pyspark_safestop

mode, url, MARKER, BOUND = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
pyspark_safestop.install(hang_timeout=BOUND, unreachable_timeout=BOUND)
from pyspark_safestop import connect_session


def attempt(action):
    started = time.monotonic()
    try:
        action()
        error = None
    except Exception as caught:
        error = caught
    return {
        "error": type(error).__name__ if error else None,
        "message": str(error) if error else "",
        "seconds": round(time.monotonic() - started, 2),
    }


found = {}
if mode == "unreachable":
    with connect_session(url) as spark:
        found["query"] = attempt(lambda: spark.range(3).collect())
else:
    with connect_session(url) as spark:
        found["first"] = attempt(lambda: spark.range(3).collect())
        if mode == "hang":
            found["held"] = attempt(lambda: spark.sql(f"SELECT '{MARKER}'").collect())
            found["after"] = attempt(lambda: spark.range(2).collect())
        else:  # the parent kills the proxy between the two queries
            print("ready", flush=True)
            sys.stdin.readline()
            found["gone"] = attempt(lambda: spark.range(3).collect())
print(json.dumps(found), flush=True)
"""


@pytest.fixture(scope="module")
def certificate() -> Iterator[TestCertificate]:
    try:
        made = TestCertificate.create()
    except RuntimeError as error:
        pytest.skip(str(error))
    yield made
    made.remove()


def _child(
    tmp_path: Path, certificate: TestCertificate, mode: str, url: str
) -> subprocess.Popen[str]:
    script = tmp_path / "client.py"
    script.write_text(CHILD)
    env = clean_env(**certificate.client_env())
    return subprocess.Popen(
        [sys.executable, str(script), mode, url, MARKER, str(BOUND)],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _result(child: subprocess.Popen[str]) -> dict[str, dict[str, object]]:
    out, err = child.communicate(timeout=CHILD_TIMEOUT)
    assert child.returncode == 0, err[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def test_a_hung_call_over_tls_is_declared_and_the_session_goes_on(
    tmp_path: Path, certificate: TestCertificate, spark_connect_url: str
) -> None:
    with FaultProxy(spark_connect_url, tls=certificate) as proxy:
        proxy.hang("ExecutePlan", marker=MARKER.encode())
        assert ";token=" in proxy.url
        assert "use_ssl=true" in proxy.url
        found = _result(_child(tmp_path, certificate, "hang", proxy.url))
    assert found["first"]["error"] is None, found
    assert found["held"]["error"] == "RpcHangError", found
    assert BOUND <= float(found["held"]["seconds"]) < BOUND + 10, found  # type: ignore[arg-type]
    assert found["after"]["error"] is None, found


def test_a_server_gone_over_tls_fails_within_the_bound(
    tmp_path: Path, certificate: TestCertificate, spark_connect_url: str
) -> None:
    with FaultProxy(spark_connect_url, tls=certificate) as proxy:
        child = _child(tmp_path, certificate, "dead", proxy.url)
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "ready", child.stderr.read()[-3000:]  # type: ignore[union-attr]
        proxy.kill()
        assert child.stdin is not None
        child.stdin.write("go\n")
        child.stdin.flush()
        found = _result(child)
    assert found["first"]["error"] is None, found
    gone = found["gone"]
    assert gone["error"] == "ServerUnreachableError", found
    assert f"localhost:{proxy.port}" in str(gone["message"]), found
    assert float(gone["seconds"]) < BOUND + 10, found  # type: ignore[arg-type]


def test_nothing_listening_over_tls_fails_within_the_bound(
    tmp_path: Path, certificate: TestCertificate, spark_connect_url: str
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    token = spark_connect_url.split(";token=", 1)[1]
    url = f"sc://localhost:{port}/;token={token};use_ssl=true"
    found = _result(_child(tmp_path, certificate, "unreachable", url))
    query = found["query"]
    assert query["error"] == "ServerUnreachableError", found
    assert f"localhost:{port}" in str(query["message"]), found
    assert float(query["seconds"]) < BOUND + 10, found  # type: ignore[arg-type]
