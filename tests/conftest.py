"""Fixtures shared by the tests: the plugin's real Spark Connect server, the client line.

The server fixtures are the package's pytest plugin's (``spark_connect_server``,
``spark_connect_url``, ``spark``, ``spark_per_class``). Installed, the package registers the
plugin itself; run from a checkout without installing it (as the nox sessions do), the plugin
is registered here, under the same name.

``PYSPARK_SAFESTOP_REQUIRE_SERVER=1`` (set by the noxfile and CI) makes a missing Java or
missing jars fail the tests that need the server instead of skipping them; the plugin reads it.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from pathlib import Path

import pytest

import pyspark_safestop
from pyspark_safestop.client import _layouts
from pyspark_safestop.plugin import ENV_REQUIRE_SERVER
from pyspark_safestop.servers import _engines
from tests.bootsite import make_site_dir
from tests.foreign_user import foreign_user

pytest_plugins = ["pytester", "tests.ports.helpers"]  # the latter: the port tests' fixtures

__all__ = ["foreign_user"]  # a fixture: tests that act as another local user

PLUGIN = "pyspark_safestop"

#: The folders of tests/ that mirror the package's wings. Each test is marked with its folder's
#: name (``-m shim``), so that a session chooses wings as it chooses kinds (noxfile.py).
WINGS = ("client", "shim", "servers", "plugin", "cli", "ports", "testing")
TESTS = Path(__file__).resolve().parent


def pytest_configure(config: pytest.Config) -> None:
    for wing in WINGS:
        config.addinivalue_line("markers", f"{wing}: a test of the {wing} wing (tests/{wing}/)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        folder = item.path.resolve().parent
        if folder.parent == TESTS and folder.name in WINGS:
            item.add_marker(folder.name)


def pytest_addoption(parser: pytest.Parser, pluginmanager: pytest.PytestPluginManager) -> None:
    # Registered now, its options are parsed with the command line like an installed plugin's.
    if pluginmanager.get_plugin(PLUGIN) is None and not pluginmanager.is_blocked(PLUGIN):
        pluginmanager.register(importlib.import_module("pyspark_safestop.plugin"), PLUGIN)


@pytest.fixture(scope="session")
def client_layout() -> str:
    """The layout of the installed Spark Connect client: "3.5", "4.0", "4.1" or "4.2+"."""
    pytest.importorskip("grpc")
    import pyspark.sql.connect.session  # noqa: F401

    layout, problem = _layouts.detect_loaded()
    assert layout is not None, f"unrecognised Spark Connect client: {problem}"
    return layout.name


@pytest.fixture
def site_dir(tmp_path: Path) -> Path:
    """A folder holding a copy of the wheel's start-up files (see tests/bootsite.py)."""
    return make_site_dir(tmp_path)


@pytest.fixture
def inner(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.Pytester]:
    """An inner pytest run with the plugin, on the default engine and with no server required
    whatever this run's environment says; the release timeout restored afterwards."""
    monkeypatch.delenv(ENV_REQUIRE_SERVER, raising=False)
    monkeypatch.delenv(_engines.ENV_ENGINE, raising=False)
    timeout = pyspark_safestop.status()["settings"]["release_timeout"]
    yield pytester
    if pyspark_safestop.is_installed():
        pyspark_safestop.install(release_timeout=timeout)
