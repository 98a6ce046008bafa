"""``doctor``: the decision, every branch, and the real report on this client line.

The environments with the site-wide ``.pth`` and the plugin installed (wheel and editable
installs, the switch on and off, no pyspark at all) are covered in ``tests/activation``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pyspark_safestop._doctor import KNOWN_PROBLEMS, decide
from pyspark_safestop._layouts import LAYOUTS

REPO_ROOT = Path(__file__).resolve().parent.parent

FACTS: dict[str, Any] = {
    "pyspark_version": "4.1.3",
    "connect_error": None,
    "layout": "4.1",
    "layout_problem": None,
    "active_everywhere": False,
    "plugin_active": False,
}


def test_every_known_layout_has_a_known_problem() -> None:
    assert {layout.name for layout in LAYOUTS} == set(KNOWN_PROBLEMS)


@pytest.mark.parametrize("layout", sorted(KNOWN_PROBLEMS))
def test_bug_and_no_shim_is_a_problem(layout: str) -> None:
    verdict = decide(**{**FACTS, "layout": layout})
    assert (verdict.ok, verdict.bug, verdict.active) == (False, True, "no")
    assert "NOT active" in verdict.summary


def test_bug_with_the_pth_is_fine() -> None:
    verdict = decide(**{**FACTS, "active_everywhere": True, "plugin_active": True})
    assert (verdict.ok, verdict.bug, verdict.active) == (True, True, "everywhere")


def test_bug_with_the_plugin_only_is_fine_but_says_so() -> None:
    verdict = decide(**{**FACTS, "plugin_active": True})
    assert (verdict.ok, verdict.bug, verdict.active) == (True, True, "pytest")
    assert "import pyspark_safestop" in verdict.summary


def test_fixed_pyspark_is_not_a_problem() -> None:
    # A client the layout module does not recognise: what a pyspark that fixed the hang (and
    # restructured its release pool) looks like to the shim, which leaves it untouched.
    facts = {**FACTS, "pyspark_version": "5.0.0", "layout": None, "layout_problem": "unknown"}
    verdict = decide(**facts)
    assert (verdict.ok, verdict.bug) == (True, None)
    assert "not known to have the hang" in verdict.summary


def test_no_pyspark_is_not_a_problem() -> None:
    verdict = decide(**{**FACTS, "pyspark_version": None, "layout": None})
    assert (verdict.ok, verdict.bug) == (True, False)


def test_unimportable_client_is_not_a_problem() -> None:
    verdict = decide(**{**FACTS, "layout": None, "connect_error": "No module named 'grpc'"})
    assert (verdict.ok, verdict.bug) == (True, False)
    assert "grpc" in verdict.summary


def doctor(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("PYSPARK_SAFESTOP")}
    child_env["PYTHONPATH"] = str(REPO_ROOT)
    child_env.update(env)
    return subprocess.run(
        [sys.executable, "-m", "pyspark_safestop", "doctor", *args],
        capture_output=True,
        text=True,
        env=child_env,
        timeout=240,
        check=False,
    )


def test_doctor_reports_this_line_with_the_shim_off(client_layout: str) -> None:
    proc = doctor("--json", PYSPARK_SAFESTOP="0")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["pyspark"]["layout"] == client_layout
    assert report["bug"] is True
    assert report["problem"] == KNOWN_PROBLEMS[client_layout]
    assert report["shim"]["active"] == "no"
    assert report["settings"]["enabled"] is False


@pytest.mark.parametrize("args", [["--bogus"], ["--json", "extra"]])
def test_doctor_bad_arguments_are_usage_errors(args: list[str]) -> None:
    proc = doctor(*args)
    assert proc.returncode == 2
    assert f"unrecognized arguments: {args[-1]}" in proc.stderr
