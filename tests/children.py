"""Child processes for the tests: a fresh interpreter on this checkout with the shim's settings
taken out of its environment, a run in a process group of its own, waiting for a process to go;
and an inner pytest run (pytester) with the plugin.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import psutil
import pytest

from pyspark_safestop.testing.preloaded import Preloaded

REPO_ROOT = Path(__file__).resolve().parent.parent
# The plugin from the checkout, whether or not the package is installed too, and no cache in the
# inner run's folder.
PLUGIN_ONLY = ("-p", "pyspark_safestop.plugin", "-p", "no:cacheprovider")


def clean_env(
    *,
    pythonpath: Sequence[str | Path] = (REPO_ROOT,),
    no_warnings: bool = False,
    **env: str,
) -> dict[str, str]:
    """This environment without the shim's settings (``PYSPARK_SAFESTOP*``) and, with
    ``no_warnings``, without ``PYTHONWARNINGS``; ``pythonpath`` as PYTHONPATH; ``env`` last."""
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("PYSPARK_SAFESTOP")}
    if no_warnings:
        child_env.pop("PYTHONWARNINGS", None)
    child_env["PYTHONPATH"] = os.pathsep.join(str(entry) for entry in pythonpath)
    child_env.update(env)
    return child_env


def run_python(
    *args: str | Path, env: dict[str, str], timeout: float, **options: Any
) -> subprocess.CompletedProcess[str]:
    """``python *args`` with this interpreter, its output captured as text; ``options`` (``cwd``,
    ``input``) go to :func:`subprocess.run`."""
    return subprocess.run(
        [sys.executable, *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
        **options,
    )


def run_preloaded(
    preloaded: Preloaded, script: Path, *, env: dict[str, str], timeout: float
) -> subprocess.CompletedProcess[str]:
    """Like ``run_python(script)``, in a child of ``preloaded``: its folder is the working
    folder and the first import path, as for ``python script``; killed after ``timeout``."""
    with tempfile.TemporaryFile("w+") as errors:
        child = preloaded.spawn(
            script.stem, [], env=env, stderr=errors.fileno(), cwd=str(script.parent)
        )
        assert child.stdin is not None
        assert child.stdout is not None
        child.stdin.close()
        output: list[str] = []
        reader = threading.Thread(target=lambda: output.append(child.stdout.read()), daemon=True)
        reader.start()
        try:
            child.wait(timeout)
        finally:
            if child.poll() is None:
                child.kill_group()
        reader.join(timeout)
        child.stdout.close()
        errors.seek(0)
        return subprocess.CompletedProcess(child.args, child.wait(), "".join(output), errors.read())


def last_json(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """The last JSON object a successful child printed, with its stderr as ``"stderr"``."""
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    assert lines, proc.stdout + proc.stderr
    result: dict[str, Any] = json.loads(lines[-1])
    result["stderr"] = proc.stderr
    return result


def in_own_session(
    argv: Sequence[str], *, env: dict[str, str], cwd: Path | None = None, output: bool = True
) -> subprocess.Popen[str]:
    """Start ``argv`` in a session (and process group) of its own; its stdout and stderr are
    text pipes, or thrown away without ``output``."""
    stream = subprocess.PIPE if output else subprocess.DEVNULL
    return subprocess.Popen(
        list(argv),
        cwd=cwd,
        env=env,
        stdout=stream,
        stderr=stream,
        text=True,
        start_new_session=True,
    )


@contextlib.contextmanager
def own_group(
    argv: Sequence[str], *, env: dict[str, str], cwd: Path | None = None
) -> Iterator[subprocess.Popen[str]]:
    """Run ``argv`` in a process group of its own, its output thrown away; on leaving, the
    whole group is SIGKILLed (what the run left orphaned too) and the run reaped."""
    proc = in_own_session(argv, env=env, cwd=cwd, output=False)
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def process_tree(pid: int) -> list[psutil.Process]:
    """The process and all its descendants; empty if it is gone."""
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def gone(pid: int, within: float) -> bool:
    """Whether the process is gone (or a zombie) within ``within`` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.1)
    return False


def run_inner(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """An inner pytest run (pytester) with the checkout's plugin and no cache."""
    return pytester.runpytest(*PLUGIN_ONLY, *args)


def server_processes(proc: subprocess.Popen[Any]) -> list[psutil.Process]:
    """What ``proc`` started, recursively (a server: its launcher, spark-submit, the JVM...)."""
    try:
        return psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def has_name(process: psutil.Process, name: str) -> bool:
    """Whether ``process`` runs ``name`` ("java", "sail"); False once it is gone."""
    try:
        return process.name() == name
    except psutil.Error:
        return False


#: Spark gives a new Python worker a fixed 10 s to connect back (PythonWorkerFactory, not a
#: setting); on a loaded machine a foreachBatch worker, which imports a whole Spark Connect
#: client from the server's pyspark.zip, can take longer.
WORKER_START_TIMED_OUT = "Python worker failed to connect back"


def start_with_worker_retry(start: Callable[[], Any], attempts: int = 3) -> Any:
    """``start()`` (a streaming query's), again while its Python worker was too slow to start,
    ``attempts`` times in all."""
    for attempt in range(1, attempts + 1):
        try:
            return start()
        except Exception as error:
            if WORKER_START_TIMED_OUT not in str(error) or attempt == attempts:
                raise
    raise AssertionError("unreachable")
