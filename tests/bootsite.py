"""A folder holding the wheel's start-up files, processed by a fresh ``python -S`` interpreter
the way ``site`` processes site-packages (``site.addsitedir``): shared by tests/test_boot.py and
tests/activation/test_boot_paths.py."""

from __future__ import annotations

import importlib.util
import shutil
import sysconfig
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Any

from tests.children import REPO_ROOT, clean_env, last_json, run_python

BOOT_DIR = REPO_ROOT / "boot"
FILES = ("_pyspark_safestop_boot.py", "pyspark_safestop.pth", "pyspark_safestop.start")

#: Modules a ``.pth`` may leave behind at start-up besides its own: none heavy.
HEAVY = ("wrapt", "pyspark", "pyspark_safestop", "importlib.metadata", "typing", "threading")

PRELUDE = """
import json, sys
BEFORE = set(sys.modules)
import site
SITE = sys.argv[1]
PURELIB = sys.argv[2]

def process_site():
    site.addsitedir(SITE)

def boot_state():
    boot = sys.modules.get("_pyspark_safestop_boot")
    return None if boot is None else boot.state

def finders():
    boot = sys.modules.get("_pyspark_safestop_boot")
    return sum(f is boot for f in sys.meta_path) if boot is not None else 0

def with_pyspark():
    # site-packages of the test environment, without processing its .pth files
    sys.path.append(PURELIB)

def report(**extra):
    print(json.dumps(extra, default=str))
"""


def load_boot() -> ModuleType:
    """The checkout's boot module, loaded under another name (an installed copy may be loaded
    in this process under its own)."""
    spec = importlib.util.spec_from_file_location("boot_under_test", BOOT_DIR / FILES[0])
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_site_dir(tmp_path: Path) -> Path:
    """A folder holding a copy of the wheel's start-up files."""
    folder = tmp_path / "site"
    folder.mkdir()
    for name in FILES:
        shutil.copy2(BOOT_DIR / name, folder / name)
    return folder


def run(
    site: Path, body: str, *, env: dict[str, str] | None = None, flags: tuple[str, ...] = ()
) -> dict[str, Any]:
    """Run PRELUDE + body with ``python -S`` (and ``flags``); return the last JSON line and
    stderr."""
    script = site.parent / "case.py"
    # A file, not `python -c`: pyspark-client 4.2's dependency check exits under -c.
    script.write_text(PRELUDE + textwrap.dedent(body))
    purelib = sysconfig.get_paths()["purelib"]
    proc = run_python(
        "-S", *flags, script, site, purelib, env=clean_env(**(env or {})), timeout=180
    )
    return last_json(proc)
