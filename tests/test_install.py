"""install()/uninstall() in every order, without a server.

Each case runs in a fresh interpreter: whether pyspark's modules were imported before or after
the shim is the point, and a test process can only import them once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

pytest.importorskip("pyspark")
pytest.importorskip("grpc")

# Shared by every script: originals captured before the shim can touch anything, and a
# check that walks each attribute's wrapper chain (no attribute may carry two of ours).
PRELUDE = """
import json, sys, threading
TARGETS = [
    ("pyspark.sql.connect.session", "SparkSession", "__init__"),
    ("pyspark.sql.connect.session", "SparkSession", "stop"),
    ("pyspark.sql.connect.client.core", "SparkConnectClient", "close"),
    ("pyspark.sql.connect.client.core", "SparkConnectClient", "release_session"),
]

def attrs():
    out = {}
    for module, cls, attr in TARGETS:
        mod = sys.modules.get(module)
        owner = getattr(mod, cls, None) if mod else None
        if owner is not None and attr in vars(owner):
            out[f"{cls}.{attr}"] = vars(owner)[attr]
    return out

def safestop_layers(value):
    from pyspark_safestop._patcher import SafestopWrapper
    layers = 0
    while value is not None:
        layers += isinstance(value, SafestopWrapper)
        value = getattr(value, "__wrapped__", None)
    return layers

def report(**extra):
    import pyspark_safestop
    current = attrs()
    print(json.dumps({
        "layers": {k: safestop_layers(v) for k, v in current.items()},
        "restored": {k: current.get(k) is v for k, v in ORIGINALS.items()},
        "patches": pyspark_safestop.status()["patches"],
        "installed": pyspark_safestop.is_installed(),
        **extra,
    }))

def import_connect():
    import pyspark.sql.connect.session  # noqa

ORIGINALS = {}
"""


def run_script(tmp_path: Path, body: str, **env: str) -> dict[str, Any]:
    """Run PRELUDE + body in a fresh interpreter; return the JSON it printed last."""
    script = tmp_path / "case.py"
    # A file, not `python -c`: pyspark-client 4.2's dependency check mistakes -c for doctest.
    script.write_text(PRELUDE + textwrap.dedent(body))
    child_env = dict(os.environ)
    child_env.pop("PYSPARK_SAFESTOP", None)
    child_env.pop("PYSPARK_SAFESTOP_RELEASE_TIMEOUT", None)
    child_env.update(env)
    child_env["PYTHONPATH"] = str(REPO_ROOT)
    proc = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        env=child_env,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, proc.stdout + proc.stderr
    result: dict[str, Any] = json.loads(lines[-1])
    result["stderr"] = proc.stderr
    return result


def assert_patched_once(result: dict[str, Any]) -> None:
    assert result["installed"]
    assert result["patches"], result
    assert all(n == 1 for n in result["layers"].values()), result["layers"]


def assert_pristine(result: dict[str, Any]) -> None:
    assert not result["patches"], result
    assert all(n == 0 for n in result["layers"].values()), result["layers"]
    assert all(result["restored"].values()), result["restored"]


def test_import_pyspark_then_shim(tmp_path: Path) -> None:
    result = run_script(
        tmp_path,
        """
        import_connect(); ORIGINALS.update(attrs())
        import pyspark_safestop
        report()
        """,
    )
    assert_patched_once(result)


def test_shim_then_import_pyspark(tmp_path: Path) -> None:
    result = run_script(
        tmp_path,
        """
        import pyspark_safestop
        before = "pyspark" in sys.modules
        pending = pyspark_safestop.status()
        import_connect()
        report(pyspark_imported_by_shim=before, pending=pending["patches"],
               problem=pending["layout_problem"])
        """,
    )
    assert result["pyspark_imported_by_shim"] is False
    assert result["pending"] == []
    assert result["problem"] == "not-imported"
    assert_patched_once(result)


def test_install_twice_never_double_wraps(tmp_path: Path) -> None:
    result = run_script(
        tmp_path,
        """
        import pyspark_safestop
        pyspark_safestop.install(); import_connect()
        pyspark_safestop.install(); pyspark_safestop.install(release_timeout=2)
        report(timeout=pyspark_safestop.status()["settings"]["release_timeout"])
        """,
    )
    assert_patched_once(result)
    assert result["timeout"] == 2


def test_uninstall_restores_originals_exactly(tmp_path: Path) -> None:
    result = run_script(
        tmp_path,
        """
        import_connect(); ORIGINALS.update(attrs())
        import pyspark_safestop
        pyspark_safestop.uninstall()
        pyspark_safestop.uninstall()
        report()
        """,
    )
    assert not result["installed"]
    assert_pristine(result)


def test_uninstall_install_cycles(tmp_path: Path) -> None:
    result = run_script(
        tmp_path,
        """
        import_connect(); ORIGINALS.update(attrs())
        import pyspark_safestop
        for _ in range(5):
            pyspark_safestop.uninstall(); pyspark_safestop.install()
        report()
        """,
    )
    assert_patched_once(result)


def test_uninstall_before_import_leaves_pyspark_untouched(tmp_path: Path) -> None:
    result = run_script(
        tmp_path,
        """
        import pyspark_safestop
        pyspark_safestop.uninstall()
        import_connect()
        report()
        """,
    )
    assert not result["installed"]
    assert_pristine(result)


def test_concurrent_install_uninstall(tmp_path: Path) -> None:
    result = run_script(
        tmp_path,
        """
        import_connect(); ORIGINALS.update(attrs())
        import pyspark_safestop
        def churn():
            for _ in range(200):
                pyspark_safestop.install(); pyspark_safestop.uninstall()
        threads = [threading.Thread(target=churn) for _ in range(8)]
        [t.start() for t in threads]; [t.join() for t in threads]
        pyspark_safestop.install()
        report()
        """,
    )
    assert_patched_once(result)


def test_disabled_by_environment(tmp_path: Path) -> None:
    result = run_script(
        tmp_path,
        """
        import_connect(); ORIGINALS.update(attrs())
        import pyspark_safestop
        active = pyspark_safestop.install()
        report(active=active, enabled=pyspark_safestop.status()["enabled"])
        """,
        PYSPARK_SAFESTOP="0",
    )
    assert result["active"] is False
    assert result["enabled"] is False
    assert not result["installed"]
    assert_pristine(result)


def test_third_party_wrapper_on_top_survives_uninstall(tmp_path: Path) -> None:
    result = run_script(
        tmp_path,
        """
        import functools, logging
        logging.basicConfig(level=logging.WARNING)
        import pyspark_safestop
        import_connect()
        from pyspark.sql.connect.session import SparkSession
        ours = vars(SparkSession)["stop"]
        @functools.wraps(ours)
        def theirs(*a, **k):
            return ours(*a, **k)
        SparkSession.stop = theirs
        pyspark_safestop.uninstall()
        report(kept=vars(SparkSession)["stop"] is theirs)
        """,
    )
    assert result["kept"] is True
    assert "SparkSession.stop was replaced after pyspark-safestop patched it" in result["stderr"]


def test_classic_session_untouched(tmp_path: Path) -> None:
    result = run_script(
        tmp_path,
        """
        import pyspark_safestop
        import_connect()
        from pyspark.sql.session import SparkSession as Classic
        report(classic_layers=safestop_layers(vars(Classic)["stop"]))
        """,
    )
    assert result["classic_layers"] == 0


def test_status_describes_the_line(tmp_path: Path) -> None:
    result = run_script(
        tmp_path,
        """
        import pyspark_safestop
        import_connect()
        import pyspark
        report(status=pyspark_safestop.status(), version=pyspark.__version__)
        """,
    )
    status = result["status"]
    assert status["pyspark_version"] == result["version"]
    assert status["layout"] in {"3.5", "4.0", "4.1", "4.2+"}
    assert status["release_session_rpc"] is (status["layout"] != "3.5")
    assert status["settings"] == {"release_timeout": 5.0}
