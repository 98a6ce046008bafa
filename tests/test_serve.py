"""``serve``: usage errors here; a real server stopped by Ctrl-C and SIGTERM in tests/activation."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


def serve(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYSPARK_SAFESTOP")}
    env["PYTHONPATH"] = str(REPO_ROOT)
    return subprocess.run(
        [sys.executable, "-m", "pyspark_safestop", "serve", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )


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
