"""Which Python the local servers' Python workers run, and whether it can run them.

A Spark server runs every Python UDF, pandas UDF, ``mapInArrow``, UDTF and ``foreachBatch`` in
Python worker processes of its own. Spark starts them with ``$PYSPARK_PYTHON`` (else the first
``python3`` on its ``PATH``) and puts its own ``pyspark`` first on their path (its Spark home's
``python/lib/pyspark.zip``): the worker's code is the server's, everything else it imports
(pandas, pyarrow, the user's packages, a module shipped with ``addArtifacts``) comes from the
worker's interpreter. The servers this package starts give their workers the interpreter of the
tests, so that what the tests import, their UDFs import too, on the same Python version (Spark
refuses a UDF pickled on another minor version: ``PYTHON_VERSION_MISMATCH``). A user who set
``PYSPARK_PYTHON`` keeps their choice.

Nothing here imports pyspark.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

__all__ = [
    "ENV_WORKER_PYTHON",
    "NEEDS",
    "ServerPyspark",
    "WorkerPython",
    "pyspark_in",
    "sail_python",
    "server_pyspark",
    "worker_python",
]

#: Spark's own variable for the workers' interpreter; a value the user set is kept.
ENV_WORKER_PYTHON = "PYSPARK_PYTHON"
_VERSION_TIMEOUT = 30.0


@dataclass(frozen=True)
class WorkerPython:
    """The interpreter of a server's Python workers, and why that one."""

    executable: str
    #: "this interpreter", "PYSPARK_PYTHON" or "given".
    source: str
    #: ``(major, minor)``, or ``None`` when the executable cannot be run.
    version: tuple[int, int] | None

    def describe(self) -> str:
        """``/path/to/python (Python 3.11, this interpreter)``."""
        version = "not runnable" if self.version is None else f"Python {_dotted(self.version)}"
        return f"{self.executable} ({version}, {self.source})"

    def problems(self, spark_home: Path | None, *needs: str) -> list[str]:
        """What keeps Python code from running on a server of ``spark_home`` with these
        workers, as sentences ([] when nothing is known to). ``needs``: what the code uses
        besides Python (:data:`NEEDS`: ``"arrow"`` for pandas and Arrow UDFs, UDTFs,
        ``mapInPandas``; ``"connect"`` for ``foreachBatch``, whose worker is a Spark Connect
        client); none: plain Python UDFs."""
        if self.version is None:
            return [f"the workers' Python {self.executable} cannot be run"]
        found: list[str] = []
        if self.version != sys.version_info[:2]:
            found.append(
                f"the workers run Python {_dotted(self.version)} and this interpreter is "
                f"{_dotted(sys.version_info[:2])}: a UDF defined here fails there (Spark says "
                "PYTHON_VERSION_MISMATCH)"
            )
        server = None if spark_home is None else server_pyspark(spark_home)
        if server is None:
            return found
        if server.python is not None and self.version < server.python:
            found.append(
                f"the server's Python workers (pyspark {server.version}) need Python "
                f"{_dotted(server.python)} or newer; the workers' Python is "
                f"{_dotted(self.version)}: every Python UDF fails"
            )
        # Installed packages can be read for this interpreter only.
        if self.executable != sys.executable:
            return found
        uses: dict[str, str] = {}
        for need in needs:
            for name in NEEDS[need]:
                uses.setdefault(name, NEEDS_USE[need])
        for name, use in uses.items():
            minimum = server.packages.get(name)
            have = _installed(name)
            if minimum is not None and (have is None or _numbers(have) < _numbers(minimum)):
                found.append(
                    f"the server's Python workers (pyspark {server.version}) need {name} >= "
                    f"{minimum}; the workers' Python has {'none' if have is None else have}: "
                    f"{use} fail"
                )
        return found


#: What each kind of Python code needs in the workers' environment besides pyspark.
NEEDS = {
    "arrow": ("pandas", "pyarrow"),
    "connect": (
        "pandas",
        "pyarrow",
        "grpcio",
        "grpcio-status",
        "googleapis-common-protos",
        "zstandard",
    ),
}
NEEDS_USE = {
    "arrow": "pandas and Arrow UDFs, UDTFs, mapInPandas and applyInPandas",
    "connect": "foreachBatch and streaming listeners",
}


def _dotted(version: tuple[int, ...]) -> str:
    return ".".join(map(str, version))


def _installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except (metadata.PackageNotFoundError, ValueError):
        return None


def _numbers(version: str) -> tuple[int, ...]:
    parts = []
    for part in version.split(".")[:3]:
        digits = re.match(r"\d+", part)
        if digits is None:
            break
        parts.append(int(digits.group()))
    return tuple(parts)


def sail_python(sail: Path) -> WorkerPython | None:
    """The interpreter Sail runs Python UDFs in: the one running ``sail`` itself (Sail embeds
    it), named by the script's ``#!`` line; ``None`` when that cannot be read."""
    try:
        with open(sail, "rb") as handle:
            first = handle.readline(4096).decode("utf-8", errors="replace").strip()
    except OSError:
        return None
    if not first.startswith("#!"):
        return None
    executable = first[2:].strip().split()[0] if first[2:].strip() else ""
    if not executable:
        return None
    return WorkerPython(executable, "Sail's own environment", _version_of(executable))


def pyspark_in(python: WorkerPython) -> bool:
    """Whether ``python`` can import pyspark (Sail needs it there to run Python UDFs)."""
    if python.executable == sys.executable:
        return importlib.util.find_spec("pyspark") is not None
    try:
        return (
            subprocess.run(
                [python.executable, "-I", "-c", "import pyspark"],
                capture_output=True,
                timeout=_VERSION_TIMEOUT,
                check=False,
                stdin=subprocess.DEVNULL,
            ).returncode
            == 0
        )
    except (OSError, subprocess.TimeoutExpired):
        return False


def worker_python(explicit: str | None = None) -> WorkerPython:
    """The interpreter for the workers: ``explicit``, else ``$PYSPARK_PYTHON``, else this
    interpreter (``sys.executable``; ``python3`` where it is unknown, as Spark's default)."""
    if explicit:
        executable, source = explicit, "given"
    elif os.environ.get(ENV_WORKER_PYTHON, "").strip():
        executable, source = os.environ[ENV_WORKER_PYTHON].strip(), ENV_WORKER_PYTHON
    else:
        executable, source = sys.executable or "python3", "this interpreter"
    return WorkerPython(executable, source, _version_of(executable))


@functools.lru_cache(maxsize=16)
def _version_of(executable: str) -> tuple[int, int] | None:
    if executable == sys.executable:
        return sys.version_info[0], sys.version_info[1]
    try:
        out = subprocess.run(
            [executable, "-I", "-S", "-c", "import sys; print('%d %d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=_VERSION_TIMEOUT,
            check=False,
            stdin=subprocess.DEVNULL,
        ).stdout.split()
        return int(out[0]), int(out[1])
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
        return None


@dataclass(frozen=True)
class ServerPyspark:
    """What the server's own pyspark, which its Python workers run, asks of their Python."""

    version: str
    #: The oldest Python it supports, ``(major, minor)``, if it says.
    python: tuple[int, int] | None
    #: Package -> the oldest version its ``connect`` extra accepts.
    packages: dict[str, str]


_REQUIRES_PYTHON = re.compile(r"^Requires-Python:\s*>=\s*(\d+)\.(\d+)", re.MULTILINE)
_REQUIRES_DIST = re.compile(
    r"^Requires-Dist:\s*([A-Za-z0-9_.-]+)[^;\n]*?>=\s*([0-9][0-9.]*)[^;\n]*;\s*"
    r"extra\s*==\s*[\"']connect[\"']",
    re.MULTILINE,
)


@functools.lru_cache(maxsize=8)
def server_pyspark(spark_home: Path) -> ServerPyspark | None:
    """The requirements of the server's own pyspark, read from its installed metadata beside
    a pip-installed Spark home; ``None`` where there is none (a Spark distribution unpacked
    from an archive says nothing)."""
    for found in sorted(Path(spark_home).parent.glob("pyspark-*.dist-info/METADATA")):
        try:
            text = found.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        version = re.search(r"^Version:\s*(\S+)", text, re.MULTILINE)
        if version is None:
            continue
        python = _REQUIRES_PYTHON.search(text)
        return ServerPyspark(
            version.group(1),
            None if python is None else (int(python.group(1)), int(python.group(2))),
            {name.lower(): minimum for name, minimum in _REQUIRES_DIST.findall(text)},
        )
    return None
