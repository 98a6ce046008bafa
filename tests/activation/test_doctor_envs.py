"""``doctor`` tells the truth in real environments: the hang with the shim on, with it off,
with only the pytest plugin, and without pyspark. (A pyspark that fixed the hang does not exist
yet; how doctor decides for one is in tests/cli/test_doctor.py.)"""

from __future__ import annotations

import json
from typing import Any

from tests.activation.conftest import Env


def doctor(env: Env, *flags: str, **extra: str) -> tuple[int, dict[str, Any]]:
    """``python -m pyspark_safestop doctor --json`` in ``env``: exit status and report."""
    proc = env.run(
        env.python, *flags, "-m", "pyspark_safestop", "doctor", "--json", env=env.env(**extra)
    )
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def doctor_text(env: Env, **extra: str) -> tuple[int, str]:
    """The console script, as a person runs it: exit status and text."""
    proc = env.run(str(env.bin / "pyspark-safestop"), "doctor", env=env.env(**extra))
    return proc.returncode, proc.stdout


def test_bug_present_and_shim_active(wheel_env: Env) -> None:
    code, report = doctor(wheel_env)
    assert code == 0
    assert report["bug"] is True
    assert report["pyspark"]["layout"] is not None
    assert report["pyspark"]["distributions"]
    assert report["shim"]["active"] == "everywhere"
    assert report["shim"]["activated_by"] == "pth"
    assert report["activation"]["pth"]["active"] is True
    assert report["activation"]["pytest_plugin"]["active"] is True
    assert report["activation"]["start_file"].endswith("pyspark_safestop.start")


def test_bug_present_and_shim_off(wheel_env: Env) -> None:
    code, text = doctor_text(wheel_env, PYSPARK_SAFESTOP="0")
    assert code == 1
    assert "PROBLEM: the hang is present and the shim is NOT active" in text
    assert ["PYSPARK_SAFESTOP", "'0'", "->", "OFF"] in [line.split() for line in text.splitlines()]


def test_plugin_only_without_the_pth(wheel_env: Env) -> None:
    code, report = doctor(wheel_env, "-S", PYTHONPATH=str(wheel_env.site_packages))
    assert code == 0
    assert (report["bug"], report["shim"]["active"]) == (True, "pytest")
    assert report["activation"]["pth"]["active"] is False


def test_bad_values_with_warnings_as_errors(wheel_env: Env) -> None:
    # The probe interpreter inherits PYTHONWARNINGS: the .pth activates it all the same, and
    # the report names both bad values.
    code, report = doctor(
        wheel_env,
        PYTHONWARNINGS="error",
        PYSPARK_SAFESTOP="maybe",
        PYSPARK_SAFESTOP_RELEASE_TIMEOUT="nan",
    )
    assert code == 0, report
    assert (report["bug"], report["shim"]["active"]) == (True, "everywhere")
    assert report["settings"]["release_timeout"] == 5.0
    problems = report["settings"]["problems"]
    assert [problem.split("=")[0] for problem in problems] == [
        "PYSPARK_SAFESTOP",
        "PYSPARK_SAFESTOP_RELEASE_TIMEOUT",
    ]
    code, text = doctor_text(wheel_env, PYSPARK_SAFESTOP_RELEASE_TIMEOUT="1e10")
    assert code == 0
    assert "bad setting" in text
    assert "PYSPARK_SAFESTOP_RELEASE_TIMEOUT='1e10' is not a positive number" in text


def test_no_pyspark(bare_env: Env) -> None:
    code, text = doctor_text(bare_env)
    assert code == 0
    assert text.rstrip().endswith("OK: pyspark is not installed: nothing to fix")


def test_usage_error(wheel_env: Env) -> None:
    proc = wheel_env.run(str(wheel_env.bin / "pyspark-safestop"), "doctorr")
    assert proc.returncode == 2
    assert "invalid choice: 'doctorr'" in proc.stderr
