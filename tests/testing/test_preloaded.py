"""Children forked from a preloaded interpreter start as ``python -m`` would start them: their
own arguments, environment, folder, streams and process group, the heavy dependencies already
imported and nothing of pyspark or the package; they leave through the usual exit; a child is
killed with its group; closing the preloader kills what still runs."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from pyspark_safestop.testing.preloaded import Preloaded
from pyspark_safestop.testing.runner import child_env, kill_group, run_events
from tests.children import REPO_ROOT

pytestmark = pytest.mark.pure

REPORTER = """
import atexit, json, os, sys
seen = {
    "argv": sys.argv[1:],
    "name": __name__,
    "marker": os.environ.get("SAFESTOP_TEST_MARKER"),
    "cwd": os.getcwd(),
    "own_group": os.getpgid(0) == os.getpid(),
    "heavy": "wrapt" in sys.modules,
    "fresh": not any(m in sys.modules for m in ("pyspark", "pyspark_safestop")),
    "line": sys.stdin.readline().strip(),
}
print(json.dumps(seen))
atexit.register(lambda: print("exit hooks ran", flush=True))
sys.exit(3)
"""

SLEEPER = """
import os, time
pid = os.fork()  # a child of its own, in its group
if pid:
    print(os.getpid(), pid, flush=True)
time.sleep(600)
"""


@pytest.fixture
def preloaded():
    with Preloaded(env=child_env(shim=False)) as preloaded:
        yield preloaded


def test_a_child_starts_as_python_m_would(tmp_path: Path, preloaded: Preloaded) -> None:
    (tmp_path / "reporter.py").write_text(REPORTER)
    with (tmp_path / "stderr").open("w") as err:
        child = preloaded.spawn(
            "reporter",
            ["a", "b"],
            env={"SAFESTOP_TEST_MARKER": "yes", "PATH": os.environ["PATH"]},
            stderr=err.fileno(),
            cwd=str(tmp_path),
        )
    assert child.stdin is not None
    assert child.stdout is not None
    child.stdin.write("hello\n")
    child.stdin.flush()
    seen = json.loads(child.stdout.readline())
    assert child.stdout.readline() == "exit hooks ran\n"
    assert child.wait(30) == 3
    assert seen == {
        "argv": ["a", "b"],
        "name": "__main__",
        "marker": "yes",
        "cwd": str(tmp_path),
        "own_group": True,
        "heavy": True,
        "fresh": True,
        "line": "hello",
    }, (seen, (tmp_path / "stderr").read_text())


def test_a_child_is_killed_with_its_group(tmp_path: Path, preloaded: Preloaded) -> None:
    (tmp_path / "sleeper.py").write_text(SLEEPER)
    child = preloaded.spawn("sleeper", [], env=dict(os.environ), stderr=2, cwd=str(tmp_path))
    assert child.stdout is not None
    parent, forked = (int(x) for x in child.stdout.readline().split())
    assert parent == child.pid
    with pytest.raises(subprocess.TimeoutExpired):
        child.wait(0.2)
    kill_group(child)
    assert child.returncode == -9
    deadline = time.monotonic() + 10
    while _alive(forked) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(forked), "the child's own child outlived the group's kill"


def test_closing_the_preloader_kills_what_still_runs(tmp_path: Path) -> None:
    (tmp_path / "sleeper.py").write_text(SLEEPER)
    with Preloaded(env=child_env(shim=False)) as preloaded:
        child = preloaded.spawn("sleeper", [], env=dict(os.environ), stderr=2, cwd=str(tmp_path))
        assert child.stdout is not None
        _, forked = (int(x) for x in child.stdout.readline().split())
    deadline = time.monotonic() + 10
    while (_alive(child.pid) or _alive(forked)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child.pid)
    assert not _alive(forked)


def test_run_events_reads_a_preloaded_run(preloaded: Preloaded) -> None:
    command = [preloaded.python, "-m", "pyspark_safestop.testing.scenarios", "--help"]
    run = run_events(command, shim=True, timeout=60, preloaded=preloaded)
    assert run.returncode == 0, run.describe()
    with pytest.raises(ValueError, match="a preloaded run is"):
        run_events(["/bin/true"], shim=True, timeout=60, preloaded=preloaded)
    assert REPO_ROOT  # the children import this checkout, as fresh ones do (child_env)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


CLIENT_REPORTER = """
import json, sys
names = ("pyspark.sql.connect.session", "pyspark_safestop")
print(json.dumps({name: name in sys.modules for name in names}))
"""


def test_with_the_client_a_child_has_pyspark_and_never_the_package(
    tmp_path: Path, client_layout: str
) -> None:
    (tmp_path / "client_reporter.py").write_text(CLIENT_REPORTER)
    err = (tmp_path / "stderr").open("w")
    with err, Preloaded(env=child_env(shim=False), client=True) as preloaded:
        if client_layout == "3.5":
            # Its import starts the release pool's threads: a forked child would lack them.
            with pytest.raises(RuntimeError, match="started a thread"):
                preloaded.spawn("client_reporter", [], env=dict(os.environ), stderr=err.fileno())
            return
        child = preloaded.spawn(
            "client_reporter", [], env=dict(os.environ), stderr=err.fileno(), cwd=str(tmp_path)
        )
        assert child.stdout is not None
        assert child.stdin is not None
        child.stdin.close()
        output = child.stdout.read()
        assert child.wait(60) == 0, (tmp_path / "stderr").read_text()
    assert json.loads(output) == {"pyspark.sql.connect.session": True, "pyspark_safestop": False}


def test_a_spawn_from_a_preloader_that_is_gone_fails_at_once(tmp_path: Path) -> None:
    with Preloaded(python="/bin/false") as preloaded, (tmp_path / "stderr").open("w") as err:
        time.sleep(1)  # /bin/false has exited: the request below has nobody to answer it
        started = time.monotonic()
        with pytest.raises(RuntimeError, match="preloaded interpreter"):
            preloaded.spawn("anything", [], env={}, stderr=err.fileno(), timeout=60)
        assert time.monotonic() - started < 10
