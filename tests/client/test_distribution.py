"""Which distribution provides ``pyspark``: the real one on this client line (``status()`` and
``doctor``), and fake site folders in fresh interpreters: several distributions claiming the
module (the one whose files are on disk wins), one outside the known names, none at all."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

import pyspark_safestop
from pyspark_safestop.cli._doctor import render
from pyspark_safestop.client import _distribution, _layouts

REPO_ROOT = Path(__file__).resolve().parents[2]

INIT = "pyspark/__init__.py"
VERSION = "pyspark/version.py"


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return "sha256=" + digest.decode("ascii")


def _dist(site: Path, name: str, version: str, files: dict[str, bytes]) -> None:
    """A dist-info folder for ``name`` recording ``files`` with their hashes."""
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    rows = [f"{path},{_record_hash(data)},{len(data)}" for path, data in files.items()]
    rows.append(f"{info.name}/RECORD,,")
    (info / "RECORD").write_text("\n".join(rows) + "\n")


def _pyspark(site: Path, version_py: bytes) -> dict[str, bytes]:
    files = {INIT: b'__version__ = "3.5.2"\n', VERSION: version_py}
    for path, data in files.items():
        (site / path).parent.mkdir(parents=True, exist_ok=True)
        (site / path).write_bytes(data)
    return files


def _found(site: Path, *after: Path) -> dict[str, object]:
    """What a fresh interpreter with ``site`` first on its path (``after`` behind it) finds."""
    code = (
        "import json\n"
        "from pyspark_safestop.client import _distribution as d\n"
        "print(json.dumps({'all': d.pyspark_distributions(), 'one': d.pyspark_distribution()}))\n"
    )
    env = dict(os.environ, PYSPARK_SAFESTOP="0")
    env["PYTHONPATH"] = os.pathsep.join([str(site), *map(str, after), str(REPO_ROOT)])
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        cwd=site,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    found: dict[str, object] = json.loads(proc.stdout.splitlines()[-1])
    return found


def test_the_distribution_whose_files_are_on_disk_comes_first(tmp_path: Path) -> None:
    ours = _pyspark(tmp_path, b'__version__ = "3.5.2"  # databricks\n')
    # Installed first and overwritten: its recorded version.py is not the one on disk.
    _dist(tmp_path, "pyspark", "3.5.2", {**ours, VERSION: b'__version__ = "3.5.2"\n'})
    _dist(tmp_path, "databricks-connect", "16.1.7", ours)
    found = _found(tmp_path)
    assert found["all"] == [["databricks-connect", "16.1.7"], ["pyspark", "3.5.2"]]
    assert found["one"] == "databricks-connect 16.1.7"


def test_a_distribution_outside_the_known_names_is_found(tmp_path: Path) -> None:
    _dist(tmp_path, "my-spark-fork", "1.2.3", _pyspark(tmp_path, b'__version__ = "4.1.0"\n'))
    assert _found(tmp_path)["one"] == "my-spark-fork 1.2.3"


def test_a_distribution_for_another_pyspark_folder_does_not_count(tmp_path: Path) -> None:
    # On the path and recorded, but behind another pyspark: not the one imported.
    site = tmp_path / "site"
    other = tmp_path / "other"
    site.mkdir()
    other.mkdir()
    _pyspark(site, b'__version__ = "4.1.0"\n')
    _dist(other, "pyspark-client", "4.1.3", _pyspark(other, b'__version__ = "4.1.3"\n'))
    assert _found(site, other) == {"all": [], "one": None}
    assert _found(other, site)["one"] == "pyspark-client 4.1.3"


def test_pyspark_without_any_distribution(tmp_path: Path) -> None:
    _pyspark(tmp_path, b'__version__ = "4.1.0"\n')
    assert _found(tmp_path) == {"all": [], "one": None}


def _installed_claimants() -> set[str]:
    names = set()
    for dist in metadata.distributions():
        if any(str(path).replace(os.sep, "/") == INIT for path in dist.files or ()):
            names.add(f"{dist.metadata['Name']} {dist.version}")
    return names


def test_status_names_this_lines_distribution() -> None:
    named = pyspark_safestop.status()["pyspark_distribution"]
    if not _layouts.pyspark_package_dirs():
        pytest.skip("pyspark is not installed here")
    assert named in _installed_claimants()
    assert named == _distribution.pyspark_distribution()


def _report(distribution: str | None, distributions: dict[str, str]) -> dict[str, object]:
    return {
        "ok": True,
        "summary": "fine",
        "bug": True,
        "problem": None,
        "shim": {"active": "everywhere", "activated_by": "pth", "patches": []},
        "pyspark": {
            "version": "3.5.2",
            "distribution": distribution,
            "distributions": distributions,
            "layout": "4.0",
            "layout_problem": None,
            "connect_error": None,
        },
        "activation": {
            "pth": {"active": True, "state": "active", "file": None},
            "start_file": None,
            "pytest_plugin": {"active": True, "state": "registered"},
            "import": "on",
        },
        "settings": {
            "PYSPARK_SAFESTOP": None,
            "enabled": True,
            "PYSPARK_SAFESTOP_RELEASE_TIMEOUT": None,
            "release_timeout": 5.0,
            "problems": [],
            "spark_home": None,
            "java": True,
        },
        "python": {"version": "3.11.7", "executable": sys.executable},
        "pyspark_safestop": "0",
        "probe_error": None,
    }


def _pyspark_row(report: dict[str, object]) -> str:
    row = next(line for line in render(report).splitlines() if line.startswith("pyspark "))
    return row.split(None, 1)[1]


@pytest.mark.parametrize(
    ("distribution", "distributions", "expected"),
    [
        (
            "databricks-connect 16.1.7",
            {"databricks-connect": "16.1.7"},
            "3.5.2 (from databricks-connect 16.1.7)",
        ),
        (
            "databricks-connect 16.1.7",
            {"databricks-connect": "16.1.7", "pyspark": "3.5.2"},
            "3.5.2 (from databricks-connect 16.1.7; also claimed by pyspark 3.5.2, overwritten)",
        ),
        (None, {}, "3.5.2 (from no installed distribution)"),
    ],
)
def test_doctor_names_the_distribution(
    distribution: str | None, distributions: dict[str, str], expected: str
) -> None:
    assert _pyspark_row(_report(distribution, distributions)) == expected
