"""Fresh virtual environments with the package installed for real: from its wheel, and in
editable mode, with one Spark Connect client line; and one with no pyspark at all.

Built once per test session with ``uv`` (the client line comes from
``PYSPARK_SAFESTOP_ACTIVATION_CLIENT``, default ``pyspark-client==4.2.* pandas<3``). The nox
``activation`` session runs these tests; they are not part of the per-line sessions.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
ENV_CLIENT = "PYSPARK_SAFESTOP_ACTIVATION_CLIENT"
DEFAULT_CLIENT = "pyspark-client==4.2.* pandas<3"
TOOLS = ["pytest>=7", "pytest-xdist>=3"]


@dataclass(frozen=True)
class Env:
    """A virtual environment: its interpreter and site-packages."""

    name: str
    root: Path

    @property
    def python(self) -> str:
        return str(self.root / "bin" / "python")

    @property
    def bin(self) -> Path:
        return self.root / "bin"

    @property
    def site_packages(self) -> Path:
        (found,) = self.root.glob("lib/python*/site-packages")
        return found

    def env(self, **extra: str) -> dict[str, str]:
        """The caller's environment, without anything that would select another interpreter
        or package, plus ``extra``."""
        drop = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYSPARK_SAFESTOP_REQUIRE_SERVER")
        env = {k: v for k, v in os.environ.items() if k not in drop}
        env = {k: v for k, v in env.items() if k != "PYSPARK_SAFESTOP"}
        env["PATH"] = os.pathsep.join([str(self.bin), env.get("PATH", "")])
        env.update(extra)
        return env

    def run(
        self, *args: str, env: Mapping[str, str] | None = None, timeout: float = 300, **kw: Any
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            list(args),
            capture_output=True,
            text=True,
            env=dict(env) if env is not None else self.env(),
            timeout=timeout,
            check=False,
            **kw,
        )

    def script(
        self, body: str, folder: Path, *flags: str, env: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        """Run ``body`` as a script file (pyspark-client 4.2 exits under ``python -c``); return
        the last JSON object it printed."""
        path = folder / "script.py"
        path.write_text(textwrap.dedent(body))
        proc = self.run(self.python, *flags, str(path), env=env, cwd=folder)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        assert lines, proc.stdout + proc.stderr
        result: dict[str, Any] = json.loads(lines[-1])
        return result


def _uv() -> str:
    uv = shutil.which("uv")
    if uv is None:
        pytest.fail("these tests build virtual environments with uv: pip install uv")
    return uv


def _make(root: Path, name: str, *requirements: str) -> Env:
    uv = _uv()
    env = Env(name, root / name)
    subprocess.run([uv, "venv", "-q", "--python", sys.executable, str(env.root)], check=True)
    subprocess.run(
        [uv, "pip", "install", "-q", "--python", env.python, *requirements],
        check=True,
        cwd=REPO_ROOT,
    )
    return env


@pytest.fixture(scope="session")
def client_requirements() -> list[str]:
    return shlex.split(os.environ.get(ENV_CLIENT, DEFAULT_CLIENT))


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from this checkout."""
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([_uv(), "build", "-q", "--wheel", "-o", str(out), str(REPO_ROOT)], check=True)
    (found,) = out.glob("pyspark_safestop-*.whl")
    return found


@pytest.fixture(scope="session")
def envs_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("envs")


@pytest.fixture(scope="session")
def wheel_env(envs_root: Path, wheel: Path, client_requirements: list[str]) -> Env:
    """The wheel and a client line, as ``pip install pyspark-safestop`` leaves them."""
    return _make(envs_root, "wheel", str(wheel), *client_requirements, *TOOLS)


@pytest.fixture(scope="session")
def editable_env(envs_root: Path, client_requirements: list[str]) -> Env:
    """This checkout installed in editable mode (``pip install -e .``) and a client line."""
    return _make(envs_root, "editable", "-e", str(REPO_ROOT), *client_requirements, *TOOLS)


@pytest.fixture(scope="session")
def bare_env(envs_root: Path, wheel: Path) -> Env:
    """The wheel without any pyspark."""
    return _make(envs_root, "bare", str(wheel))
