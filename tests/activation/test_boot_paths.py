"""Activation paths checked once, on the activation session's client line: the package
imported first, an uninstalled shim, the plugin's entry point. (tests/test_boot.py checks the
``.pth`` activation itself on every client line.)"""

from __future__ import annotations

from pathlib import Path

from tests.bootsite import run


def test_import_first_is_credited_and_never_wraps_twice(site_dir: Path) -> None:
    result = run(
        site_dir,
        """
        process_site(); with_pyspark()
        import pyspark_safestop
        import pyspark.sql.connect.session
        from pyspark_safestop._patcher import SafestopWrapper
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
