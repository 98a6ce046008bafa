"""``doctor``: the decision, every branch, and the real report on this client line; and what
``doctor``, ``status()`` and the pytest header say of clients the shim does not recognise (fake
``pyspark`` packages in fresh interpreters).

The environments with the site-wide ``.pth`` and the plugin installed (wheel and editable
installs, the switch on and off, no pyspark at all) are covered in ``tests/activation``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from pyspark_safestop.cli._doctor import (
    GRPC_FORK_ENV,
    KNOWN_PROBLEMS,
    PTH_FILE,
    START_FILE,
    _pth_state,
    decide,
    grpc_fork_hazard,
    suite_hazards,
)
from pyspark_safestop.client import _operations
from pyspark_safestop.client._layouts import LAYOUTS
from tests.children import PLUGIN_ONLY, REPO_ROOT, clean_env, run_python

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


def test_a_pth_left_without_its_module_is_named() -> None:
    files: dict[str, str | None] = {PTH_FILE: "/site/pyspark_safestop.pth", START_FILE: None}
    active, text = _pth_state(files, {"boot_processed": True, "boot_missing": True})
    assert not active
    assert text == (
        "/site/pyspark_safestop.pth is left without its module: reinstall pyspark-safestop or "
        "delete it"
    )


def doctor(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return run_python("-m", "pyspark_safestop", "doctor", *args, env=clean_env(**env), timeout=240)


def test_doctor_reports_this_line_with_the_shim_off(client_layout: str) -> None:
    proc = doctor("--json", PYSPARK_SAFESTOP="0")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["pyspark"]["layout"] == client_layout
    assert report["bug"] is True
    assert report["problem"] == KNOWN_PROBLEMS[client_layout]
    assert report["shim"]["active"] == "no"
    assert report["settings"]["enabled"] is False
    # Whether this client sends a token to a local server by itself (3.5 does not).
    needs = _operations.token_needs_channel_builder()
    assert report["pyspark"]["token_needs_channel_builder"] is needs


def test_doctor_tells_the_hang_watchdog_setting() -> None:
    proc = doctor(PYSPARK_SAFESTOP_HANG_TIMEOUT="30")
    assert "PYSPARK_SAFESTOP_HANG_TIMEOUT     '30' -> watchdog 30 s" in proc.stdout, proc.stdout


@pytest.mark.parametrize(
    ("version", "setting", "hazard"),
    [
        ((3, 9), None, True),
        ((3, 9), "1", True),
        ((3, 9), "0", False),
        ((3, 9), " False ", False),
        ((3, 10), None, False),
        ((3, 13), "1", False),
    ],
)
def test_the_grpc_fork_hazard_is_python_3_9_with_fork_support_on(
    version: tuple[int, int], setting: str | None, hazard: bool
) -> None:
    env = {} if setting is None else {GRPC_FORK_ENV: setting}
    assert grpc_fork_hazard(version, env) is hazard


def test_doctor_names_the_grpc_fork_hazard_where_it_is() -> None:
    env = clean_env()
    env.pop(GRPC_FORK_ENV, None)
    proc = run_python("-m", "pyspark_safestop", "doctor", env=env, timeout=240)
    said = f"{GRPC_FORK_ENV}=0 for test runs" in proc.stdout
    assert said is (sys.version_info < (3, 10)), proc.stdout


@pytest.mark.pure
@pytest.mark.parametrize("args", [["--bogus"], ["--json", "extra"]])
def test_doctor_bad_arguments_are_usage_errors(args: list[str]) -> None:
    proc = doctor(*args)
    assert proc.returncode == 2
    assert f"unrecognized arguments: {args[-1]}" in proc.stderr


# -- clients the shim does not recognise --------------------------------------------------------
#
# Fake `pyspark` packages, first on PYTHONPATH in a fresh interpreter: one built like the 3.5
# line (which the shim recognises), and variants that no known line looks like.

REATTACH = """\
class ExecutePlanResponseReattachableIterator:
    _release_thread_pool = None

    @classmethod
    def _initialize_pool_if_necessary(cls):
        pass

    @classmethod
    def shutdown(cls):
        pass
"""
IMPORT_REATTACH = (
    "from pyspark.sql.connect.client.reattach import ExecutePlanResponseReattachableIterator\n"
)
CLIENT_CLASS = """
class SparkConnectClient:
    def close(self):
        pass
"""
CORE = IMPORT_REATTACH + CLIENT_CLASS
SESSION = """\
from pyspark.sql.connect.client.core import SparkConnectClient


class SparkSession:
    def stop(self):
        pass
"""
LIKE_3_5: dict[str, str | bytes | None] = {
    "pyspark/__init__.py": '__version__ = "9.9.9"\n',
    "pyspark/sql/__init__.py": "",
    "pyspark/sql/connect/__init__.py": "",
    "pyspark/sql/connect/client/__init__.py": "",
    "pyspark/sql/connect/client/reattach.py": REATTACH,
    "pyspark/sql/connect/client/core.py": CORE,
    "pyspark/sql/connect/session.py": SESSION,
}
CLIENT_PACKAGE = "pyspark/sql/connect/client/"
LAZY_SESSION = """\
class SparkSession:
    def stop(self):
        from pyspark.sql.connect.client import core
"""

#: Variants of LIKE_3_5 (None removes a file).
UNRECOGNISED: dict[str, dict[str, str | bytes | None]] = {
    "no client class": {
        CLIENT_PACKAGE + "core.py": IMPORT_REATTACH,
        "pyspark/sql/connect/session.py": "import pyspark.sql.connect.client.core\n" + LAZY_SESSION,
    },
    "client not a class": {CLIENT_PACKAGE + "core.py": CORE + "SparkConnectClient = 42\n"},
    "no reattach module": {
        CLIENT_PACKAGE + "reattach.py": None,
        CLIENT_PACKAGE + "core.py": CLIENT_CLASS,
    },
    "session module only": {
        **{CLIENT_PACKAGE + name: None for name in ("__init__.py", "reattach.py", "core.py")},
        "pyspark/sql/connect/session.py": LAZY_SESSION,
    },
}
RAISES = {
    CLIENT_PACKAGE + "core.py": 'raise RuntimeError("boom at import")\n',
    "pyspark/sql/connect/session.py": LAZY_SESSION,
}
ODD = {
    "pyspark/__init__.py": "def __getattr__(name):\n    raise RuntimeError(name)\n",
    "pyspark/version.py": b"\xff\xfe not UTF-8",
    CLIENT_PACKAGE + "core.py": "def __getattr__(name):\n    raise RuntimeError(name)\n",
    "pyspark/sql/connect/session.py": "from pyspark.sql.connect.client import core\n",
}


def fake_pyspark(root: Path, changes: dict[str, str | bytes | None] | None = None) -> Path:
    """A folder holding a fake ``pyspark`` package: LIKE_3_5 with ``changes``."""
    for name, text in {**LIKE_3_5, **(changes or {})}.items():
        if text is None:
            continue
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text)
    return root


def _fake_env(fake: Path, **env: str) -> dict[str, str]:
    return clean_env(pythonpath=[fake, REPO_ROOT], no_warnings=True, **env)


STATUS_SCRIPT = """\
import json
import sys
import pyspark_safestop
try:
    import pyspark.sql.connect.session
except Exception:
    pass
status = pyspark_safestop.status()
core = sys.modules.get("pyspark.sql.connect.client.core")
status["early"] = vars(core).get("EARLY") if core else None  # set by one fake
print(json.dumps(status, default=str))
"""


def status_with(fake: Path) -> tuple[dict[str, Any], str]:
    """Import pyspark's Spark Connect session over the fake pyspark, the shim imported first;
    return status() and stderr."""
    path = fake.parent / "status_script.py"
    path.write_text(STATUS_SCRIPT)
    proc = run_python("-W", "always", path, env=_fake_env(fake), timeout=120)
    assert proc.returncode == 0, proc.stderr
    found: dict[str, Any] = json.loads(proc.stdout.splitlines()[-1])
    return found, proc.stderr


def doctor_with(fake: Path) -> dict[str, Any]:
    proc = run_python(
        "-m", "pyspark_safestop", "doctor", "--json", env=_fake_env(fake), timeout=240
    )
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr
    report: dict[str, Any] = json.loads(proc.stdout)
    return report


def header_with(fake: Path) -> str:
    """The plugin's report header line, in a pytest run over the fake pyspark (which passes)."""
    folder = fake.parent / "suite"
    folder.mkdir()
    (folder / "test_one.py").write_text("def test_one():\n    pass\n")
    (folder / "pytest.ini").write_text("[pytest]\n")
    proc = run_python(
        *("-m", "pytest", *PLUGIN_ONLY),
        env=_fake_env(fake, PYTEST_DISABLE_PLUGIN_AUTOLOAD="1"),  # the checkout's plugin only
        cwd=folder,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (line,) = [line for line in proc.stdout.splitlines() if line.startswith("pyspark-safestop ")]
    return line


@pytest.mark.pure
def test_the_fake_like_3_5_is_recognised(tmp_path: Path) -> None:
    # The other fakes differ from this one only where they say.
    found, _ = status_with(fake_pyspark(tmp_path / "fake"))
    assert (found["installed"], found["layout"], found["layout_problem"]) == (True, "3.5", None)
    assert "pyspark.sql.connect.client.core:SparkConnectClient.close" in found["patches"]


@pytest.mark.pure
def test_a_client_still_executing_is_not_imported_yet(tmp_path: Path) -> None:
    # Asked while the client module runs (a circular import), the answer is "not yet", not
    # "unknown"; once it is done, the layout is recognised.
    early = "import pyspark_safestop\nEARLY = pyspark_safestop.status()['layout_problem']\n"
    fake = fake_pyspark(tmp_path / "fake", {CLIENT_PACKAGE + "core.py": early + CORE})
    found, _ = status_with(fake)
    assert (found["early"], found["layout"], found["layout_problem"]) == (
        "not-imported",
        "3.5",
        None,
    )


@pytest.mark.pure
@pytest.mark.parametrize("case", sorted(UNRECOGNISED))
def test_an_unrecognised_client_is_reported_as_such(case: str, tmp_path: Path) -> None:
    fake = fake_pyspark(tmp_path / "fake", UNRECOGNISED[case])
    found, stderr = status_with(fake)
    assert (found["installed"], found["layout"], found["layout_problem"]) == (True, None, "unknown")
    assert found["patches"] == []
    assert stderr.count("does not recognise; pyspark is left untouched") == 1, stderr
    report = doctor_with(fake)
    assert report["pyspark"]["layout_problem"] == "unknown"
    assert (report["ok"], report["bug"]) == (True, None)
    assert "Spark Connect client is not recognised" in report["summary"]
    assert "client not recognised (left untouched)" in header_with(fake)


@pytest.mark.pure
def test_a_client_that_raises_at_import_is_reported_with_its_error(tmp_path: Path) -> None:
    fake = fake_pyspark(tmp_path / "fake", RAISES)
    report = doctor_with(fake)
    assert report["pyspark"]["connect_error"] == "RuntimeError: boom at import"
    assert "client cannot be imported: RuntimeError: boom at import" in report["summary"]
    assert "client not importable (RuntimeError: boom at import)" in header_with(fake)


@pytest.mark.pure
def test_status_and_the_header_never_raise_for_an_odd_pyspark(tmp_path: Path) -> None:
    # Module attributes that raise, a version.py that is not text.
    fake = fake_pyspark(tmp_path / "fake", ODD)
    found, _ = status_with(fake)
    assert (found["layout"], found["layout_problem"]) == (None, "unknown")
    header = header_with(fake)
    assert ": active (activated by import); pyspark (version unknown), Spark Connect " in header
    report = doctor_with(fake)
    assert report["pyspark"]["layout_problem"] == "unknown"
    assert "pyspark (version unknown)'s Spark Connect client is not recognised" in report["summary"]


@pytest.mark.pure
def test_an_unrecognised_client_with_warnings_as_errors(tmp_path: Path) -> None:
    # pyspark first, then the shim: install() meets the unknown client at once. The warning
    # cannot be issued (it would raise inside the import): it is logged, once, and the shim
    # is active all the same.
    fake = fake_pyspark(tmp_path / "fake", UNRECOGNISED["client not a class"])
    script = tmp_path / "case.py"
    script.write_text(
        "import json, logging\n"
        "logging.basicConfig(format='log: %(message)s')\n"
        "import pyspark.sql.connect.session\n"
        "import pyspark_safestop\n"
        "status = pyspark_safestop.status()\n"
        "print(json.dumps([status['activated_by'], status['layout_problem']]))\n"
    )
    proc = run_python("-W", "error", script, env=_fake_env(fake), timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == ["import", "unknown"]
    assert proc.stderr.count("log: ") == 1, proc.stderr
    assert "does not recognise; pyspark is left untouched" in proc.stderr


@pytest.mark.parametrize(
    ("pyspark", "pandas", "pyarrow", "warns", "expected"),
    [
        ("4.3.0", "3.0.1", "18.0.0", True, ["pandas 3.0.1 with pyspark 4.3.0"]),
        ("4.1.3", "3.0.0", "18.0.0", False, ["pandas 3.0.0 with pyspark 4.1.3"]),
        ("4.4.0", "3.0.0", "18.0.0", False, []),  # says nothing against it: not known to break
        ("4.1.3", "2.3.3", "18.0.0", False, []),
        ("4.1.3", "2.3.3", None, False, ["no pyarrow: pandas UDFs"]),
        ("4.1.3", None, "18.0.0", False, ["no pandas: pandas UDFs"]),
        (None, "3.0.0", None, False, []),  # no pyspark, nothing to break
    ],
)
def test_suite_hazards(
    pyspark: str | None, pandas: str | None, pyarrow: str | None, warns: bool, expected: list[str]
) -> None:
    found = suite_hazards(
        pyspark_version=pyspark,
        pandas_version=pandas,
        pyarrow_version=pyarrow,
        pyspark_warns_pandas3=warns,
    )
    assert len(found) == len(expected), found
    for sentence, start in zip(found, expected):
        assert sentence.startswith(start), sentence
