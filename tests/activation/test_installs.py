"""Installing the package is enough: a script that imports only pyspark gets the shim.

For the wheel and for an editable install, each in a fresh virtual environment, against the
real server of this test session.
"""

from __future__ import annotations

import filecmp
import zipfile
from pathlib import Path

import pytest

from tests.activation.conftest import REPO_ROOT, Env

pytestmark = pytest.mark.server

BOOT_FILES = ("_pyspark_safestop_boot.py", "pyspark_safestop.pth", "pyspark_safestop.start")

#: A user's script: pyspark only. Reports what happened, then works with a real session.
SCRIPT = """
import json, sys
from pyspark.sql.connect.session import SparkSession
loaded = "pyspark_safestop" in sys.modules
boot = sys.modules.get("_pyspark_safestop_boot")
session = SparkSession.builder.remote({url!r}).create()
rows = session.range(10).collect()
session.stop()
status = sys.modules["pyspark_safestop"].status() if loaded else None
print(json.dumps({{
    "loaded": loaded,
    "boot": boot.state if boot else None,
    "rows": len(rows),
    "status": status,
    "package": sys.modules["pyspark_safestop"].__file__ if loaded else None,
}}))
"""


def test_wheel_ships_the_start_up_files_at_the_root(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
        points = archive.read(entry_points).decode()
        for name in BOOT_FILES:
            assert name in names
            assert archive.read(name) == (REPO_ROOT / "boot" / name).read_bytes()
    assert "pyspark_safestop = _pyspark_safestop_boot:pytest_plugin" in points
    assert "pyspark-safestop = pyspark_safestop.cli:main" in points


@pytest.mark.parametrize("kind", ["wheel", "editable"])
def test_script_importing_only_pyspark_gets_the_shim(
    kind: str, request: pytest.FixtureRequest, spark_connect_url: str, tmp_path: Path
) -> None:
    env: Env = request.getfixturevalue(f"{kind}_env")
    for name in BOOT_FILES:
        assert filecmp.cmp(env.site_packages / name, REPO_ROOT / "boot" / name, shallow=False)
    result = env.script(SCRIPT.format(url=spark_connect_url), tmp_path)
    assert result["loaded"] is True
    assert result["boot"] == "fired"
    assert result["rows"] == 10
    assert result["status"]["activated_by"] == "pth"
    assert len(result["status"]["patches"]) >= 3
    package = Path(result["package"])
    if kind == "editable":
        assert package.is_relative_to(REPO_ROOT)  # the checkout's code, not a copy
    else:
        assert package.is_relative_to(env.site_packages)


@pytest.mark.parametrize("kind", ["wheel", "editable"])
def test_switch_off_leaves_pyspark_alone(
    kind: str, request: pytest.FixtureRequest, spark_connect_url: str, tmp_path: Path
) -> None:
    env: Env = request.getfixturevalue(f"{kind}_env")
    result = env.script(
        SCRIPT.format(url=spark_connect_url), tmp_path, env=env.env(PYSPARK_SAFESTOP="0")
    )
    assert (result["loaded"], result["boot"], result["rows"]) == (False, "disabled", 10)


def test_start_up_imports_nothing_heavy(wheel_env: Env, tmp_path: Path) -> None:
    result = wheel_env.script(
        """
        import json, sys
        print(json.dumps({"modules": sorted(sys.modules)}))
        """,
        tmp_path,
    )
    modules = set(result["modules"])
    assert "_pyspark_safestop_boot" in modules
    heavy = {"wrapt", "pyspark", "pyspark_safestop", "importlib.metadata", "typing", "threading"}
    assert not modules & heavy


def test_site_dir_processed_again_arms_once(wheel_env: Env, tmp_path: Path) -> None:
    result = wheel_env.script(
        """
        import json, site, sys
        site.addsitedir(sys.argv[1])
        boot = sys.modules["_pyspark_safestop_boot"]
        finders = [f for f in sys.meta_path if f is boot]
        print(json.dumps({"state": boot.state, "finders": len(finders)}))
        """.replace("sys.argv[1]", repr(str(wheel_env.site_packages))),
        tmp_path,
    )
    assert result == {"state": "armed", "finders": 1}
