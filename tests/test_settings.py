"""Bad settings: a clear ValueError from code, one warning and the default from the environment."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

import pyspark_safestop
from pyspark_safestop._settings import validate_timeout

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("bad", [-1, 0, -0.5, "x", "5", True, math.inf, math.nan, [1]])
def test_bad_release_timeout_names_the_parameter(bad: object) -> None:
    with pytest.raises(ValueError, match="release_timeout") as info:
        pyspark_safestop.install(release_timeout=bad)  # type: ignore[arg-type]
    assert repr(bad) in str(info.value)


@pytest.mark.parametrize("bad", [-1, 0, "x", math.inf])
def test_bad_helper_timeout_names_the_parameter(bad: object) -> None:
    with pytest.raises(ValueError, match="timeout"):
        pyspark_safestop.release_session_without_shutdown(object(), timeout=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("good", [0.001, 1, 2.5, 600])
def test_good_timeouts(good: float) -> None:
    assert validate_timeout(good, "t") == float(good)


def _interpreter(code: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "case.py"
    script.write_text(code)
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("PYSPARK_SAFESTOP")}
    child_env.update(env, PYTHONPATH=str(REPO_ROOT))
    return subprocess.run(
        [sys.executable, "-W", "always", str(script)],
        capture_output=True,
        text=True,
        env=child_env,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("value", ["abc", "-3", "0", "inf", "nan"])
def test_garbage_timeout_env_warns_once_and_defaults(value: str, tmp_path: Path) -> None:
    proc = _interpreter(
        "import pyspark_safestop as p\n"
        "p.install(); p.install(); p.uninstall(); p.install()\n"
        "print(p.status()['settings']['release_timeout'])\n",
        tmp_path,
        PYSPARK_SAFESTOP_RELEASE_TIMEOUT=value,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "5.0"
    assert proc.stderr.count("PYSPARK_SAFESTOP_RELEASE_TIMEOUT=") == 1, proc.stderr
    assert repr(value) in proc.stderr


def test_timeout_env_is_used(tmp_path: Path) -> None:
    proc = _interpreter(
        "import pyspark_safestop as p\nprint(p.status()['settings']['release_timeout'])\n",
        tmp_path,
        PYSPARK_SAFESTOP_RELEASE_TIMEOUT="1.5",
    )
    assert proc.stdout.strip() == "1.5", proc.stderr


@pytest.mark.parametrize(("value", "installed"), [("0", False), ("off", False), ("1", True)])
def test_switch(value: str, installed: bool, tmp_path: Path) -> None:
    proc = _interpreter(
        "import pyspark_safestop as p\nprint(p.is_installed())\n", tmp_path, PYSPARK_SAFESTOP=value
    )
    assert proc.stdout.strip() == str(installed), proc.stderr


def test_garbage_switch_warns_and_stays_enabled(tmp_path: Path) -> None:
    proc = _interpreter(
        "import pyspark_safestop as p\np.install()\nprint(p.is_installed())\n",
        tmp_path,
        PYSPARK_SAFESTOP="maybe",
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "True"
    assert proc.stderr.count("PYSPARK_SAFESTOP='maybe'") == 1, proc.stderr


def test_import_never_imports_pyspark(tmp_path: Path) -> None:
    proc = _interpreter(
        "import sys, pyspark_safestop as p\np.status()\nprint('pyspark' in sys.modules)\n",
        tmp_path,
    )
    assert proc.stdout.strip() == "False", proc.stderr


def test_helper_refuses_a_non_connect_session() -> None:
    with pytest.raises(TypeError, match="Spark Connect SparkSession, got object"):
        pyspark_safestop.release_session_without_shutdown(object())
