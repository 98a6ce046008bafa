"""The package's layout holds: the wings' private modules stay theirs, no module grows past
600 lines, and the public face needs no pytest."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

from tests.children import clean_env, run_python

pytestmark = pytest.mark.pure

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "pyspark_safestop"
WINGS = {"client", "shim", "servers", "plugin", "cli", "ports", "testing"}
MAX_LINES = 600


def _imported(path: Path) -> list[str]:
    """Every module ``path`` imports, as absolute dotted names."""
    tree = ast.parse(path.read_text(), str(path))
    here = path.relative_to(ROOT).with_suffix("").parts
    package = here if here[-1] == "__init__" else here[:-1]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            found.append(module)
            found += [f"{module}.{alias.name}" for alias in node.names]
    return [name.replace(".__init__", "") for name in found]


def _private_of_another_wing(module: str, own: str | None) -> bool:
    parts = module.split(".")
    return (
        len(parts) >= 3
        and parts[0] == "pyspark_safestop"
        and parts[1] != own
        and (parts[1] in WINGS or parts[1].startswith("_"))
        and any(part.startswith("_") and part != "__init__" for part in parts[1:])
        and parts[1] != "_settings"
    ) or (len(parts) == 2 and parts[0] == "pyspark_safestop" and parts[1].startswith("_"))


@pytest.mark.parametrize("folder", ["benchmarks", "examples", "pyspark_safestop/testing"])
def test_tools_use_only_the_public_names_of_the_other_wings(folder: str) -> None:
    own = "testing" if folder.endswith("testing") else None
    found = {
        f"{path.relative_to(ROOT)}: {module}"
        for path in sorted((ROOT / folder).rglob("*.py"))
        for module in _imported(path)
        if _private_of_another_wing(module, own)
        and module not in ("pyspark_safestop.__version__", "pyspark_safestop._settings")
    }
    assert not found, sorted(found)


def test_no_module_is_over_the_limit() -> None:
    long = {
        str(path.relative_to(ROOT)): n
        for path in PACKAGE.rglob("*.py")
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not long, long


def test_the_public_face_needs_no_pytest() -> None:
    script = (
        "import sys\n"
        "sys.modules['pytest'] = None  # importing it would fail\n"
        "import pyspark_safestop\n"
        "from pyspark_safestop import connect_session, stop_safely\n"
        "from pyspark_safestop.servers import make_server, SparkConnectServer\n"
        "print(connect_session.__module__, 'pytest' in sys.modules and sys.modules['pytest'])\n"
    )
    proc = run_python("-c", script, env=clean_env(), timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["pyspark_safestop.shim._connect", "None"], proc.stdout


def test_the_plugin_keeps_its_old_names() -> None:
    from pyspark_safestop import plugin

    assert plugin.connect_session is sys.modules["pyspark_safestop"].connect_session
    assert plugin.stop_safely is sys.modules["pyspark_safestop"].stop_safely
