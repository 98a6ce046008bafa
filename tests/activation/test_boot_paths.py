"""Activation paths checked once, on the activation session's client line: the package
imported first, an uninstalled shim, the plugin's entry point, warnings as errors in a real
install, and a ``.pth`` left behind without its module. (tests/test_boot.py checks the ``.pth``
activation itself on every client line.)"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.activation.conftest import Env, _uv
from tests.bootsite import BOOT_DIR, run


def test_import_first_is_credited_and_never_wraps_twice(site_dir: Path) -> None:
    result = run(
        site_dir,
        """
        process_site(); with_pyspark()
        import pyspark_safestop
        import pyspark.sql.connect.session
        from pyspark_safestop.shim._patcher import SafestopWrapper
        from pyspark.sql.connect.session import SparkSession
        layers, value = 0, vars(SparkSession)["stop"]
        while value is not None:
            layers += isinstance(value, SafestopWrapper)
            value = getattr(value, "__wrapped__", None)
        report(activated_by=pyspark_safestop.status()["activated_by"], layers=layers)
        """,
    )
    assert (result["activated_by"], result["layers"]) == ("import", 1)


def test_uninstalled_shim_stays_uninstalled(site_dir: Path) -> None:
    result = run(
        site_dir,
        """
        process_site(); with_pyspark()
        import pyspark_safestop
        pyspark_safestop.uninstall()
        import pyspark.sql.connect.session
        report(installed=pyspark_safestop.is_installed(),
               patches=pyspark_safestop.status()["patches"])
        """,
    )
    assert (result["installed"], result["patches"]) == (False, [])


def test_pytest_plugin_attribute_credits_the_plugin(site_dir: Path) -> None:
    result = run(
        site_dir,
        """
        process_site(); with_pyspark()
        import _pyspark_safestop_boot as b
        plugin = b.pytest_plugin
        import pyspark_safestop
        report(name=plugin.__name__, activated_by=pyspark_safestop.status()["activated_by"])
        """,
    )
    assert result == {
        "name": "pyspark_safestop.plugin",
        "activated_by": "pytest-plugin",
        "stderr": "",
    }


@pytest.mark.parametrize(
    ("name", "value"), [("PYSPARK_SAFESTOP", "maybe"), ("PYSPARK_SAFESTOP_RELEASE_TIMEOUT", "nan")]
)
def test_warnings_as_errors_and_a_bad_value_in_a_real_install(
    wheel_env: Env, tmp_path: Path, name: str, value: str
) -> None:
    # A script that imports only pyspark, every warning an error: the .pth still activates the
    # shim with the defaults, and the log names the bad value.
    result = wheel_env.script(
        """
        import json, logging, sys
        logging.basicConfig(format="log: %(message)s")
        from pyspark.sql.connect.session import SparkSession
        status = sys.modules["pyspark_safestop"].status()
        print(json.dumps({"by": status["activated_by"], "layout": status["layout"],
                          "timeout": status["settings"]["release_timeout"]}))
        """,
        tmp_path,
        env=wheel_env.env(PYTHONWARNINGS="error", **{name: value}),
    )
    assert result["by"] == "pth"
    assert result["layout"] is not None
    assert result["timeout"] == 5.0


def test_a_pth_left_without_its_module_costs_one_line(tmp_path: Path) -> None:
    # A half-removed install: every interpreter of the environment, pip's included, starts
    # and works, with one line on stderr naming the file to delete.
    root = tmp_path / "stale"
    subprocess.run(
        [_uv(), "venv", "-q", "--seed", "--python", sys.executable, str(root)], check=True
    )
    env = Env("stale", root)
    pth = env.site_packages / "pyspark_safestop.pth"
    shutil.copy2(BOOT_DIR / "pyspark_safestop.pth", pth)
    expected = (
        "pyspark-safestop: not activated (ModuleNotFoundError: No module named "
        f"'_pyspark_safestop_boot'); reinstall pyspark-safestop or delete {pth}"
    )
    for command in ([env.python, "-c", "print('ran')"], [env.python, "-m", "pip", "--version"]):
        proc = env.run(*command)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip(), command
        assert proc.stderr.splitlines() == [expected], proc.stderr
