"""The examples against a real local Spark Connect server, without and with the shim.

    python examples/demo.py [--timeout SECONDS] [--all]

Starts a Spark Connect server from the installed jars (``PYSPARK_SAFESTOP_SPARK_HOME``, the
installed pyspark, or ``SPARK_HOME``) and, in front of it, a proxy that makes every
``ReleaseExecute`` RPC hang until the client gives up on it, as a flaky network or an
overloaded server does. Then runs, with this interpreter (pyspark-safestop and a pyspark client
installed):

1. the class-scoped pytest suite without the shim (``PYSPARK_SAFESTOP=0``): it hangs, and is
   killed after ``--timeout`` seconds;
2. the same suite with the shim: it passes;
3. the same under pytest-xdist (``-n 2``), with the shim;
4. the plain script and 5. the unittest case, with the shim.

``--all`` also runs 3-5 without the shim. Exit status 0 when every run with the shim passed.
``nox -s demo`` sets all of this up and runs it.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))

from pyspark_safestop._server import SparkConnectServer, find_spark_home  # noqa: E402
from tests.faultproxy import FaultProxy  # noqa: E402


@dataclass
class Run:
    title: str
    command: list[str]
    shim: bool
    result: str = ""
    seconds: float = 0.0


def runs(url: str) -> list[Run]:
    pytest = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-v"]
    suite = [str(HERE / "test_class_sessions.py"), "--safestop-remote", url]
    return [
        Run("pytest suite, class-scoped sessions", [*pytest, *suite], shim=False),
        Run("pytest suite, class-scoped sessions", [*pytest, *suite], shim=True),
        Run("the same under xdist (-n 2)", [*pytest, "-n", "2", *suite], shim=True),
        Run("plain script", [sys.executable, str(HERE / "script_example.py")], shim=True),
        Run("unittest case", [sys.executable, str(HERE / "unittest_example.py")], shim=True),
    ]


def execute(run: Run, url: str, timeout: float) -> None:
    """Run it with its output shown as it comes; kill its process group at the timeout."""
    env = dict(os.environ, SPARK_REMOTE=url, PYSPARK_SAFESTOP="1" if run.shim else "0")
    env.pop("PYSPARK_SAFESTOP_REQUIRE_SERVER", None)
    print(f"\n=== {run.title}, {'WITH' if run.shim else 'WITHOUT'} the shim", flush=True)
    started = time.monotonic()
    proc = subprocess.Popen(
        run.command,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own group: a hung run is killed with everything it started
    )

    def show() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            print(f"  | {line.rstrip()}", flush=True)

    reader = threading.Thread(target=show, daemon=True)
    reader.start()
    try:
        code: int | None = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        code = None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    reader.join(timeout=5)
    run.seconds = time.monotonic() - started
    if code is None:
        run.result = f"HUNG: killed after {timeout:.0f} s"
    else:
        run.result = "passed" if code == 0 else f"failed (exit status {code})"
    print(f"=== {run.result} ({run.seconds:.1f} s)", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="seconds before a run is called hung (60)"
    )
    parser.add_argument("--all", action="store_true", help="run every example without the shim")
    args = parser.parse_args(argv)

    home = find_spark_home()
    if home is None:
        print("no Spark jars found: set PYSPARK_SAFESTOP_SPARK_HOME", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="safestop-demo-") as tmp:
        print(f"starting a Spark Connect server from {home} ...", flush=True)
        with contextlib.ExitStack() as stack:
            server = stack.enter_context(SparkConnectServer(home, log_path=Path(tmp) / "s.log"))
            proxy = stack.enter_context(FaultProxy(server.url))
            proxy.hang("ReleaseExecute")
            print(
                f"server {server.url}; the examples use {proxy.url}, a proxy in front of it "
                "where every ReleaseExecute RPC hangs",
                flush=True,
            )
            todo = runs(proxy.url)
            if args.all:
                todo += [Run(r.title, r.command, shim=False) for r in todo[2:]]
            for run in todo:
                execute(run, proxy.url, args.timeout)

    print("\nsummary")
    for run in todo:
        shim = "with the shim   " if run.shim else "without the shim"
        print(f"  {run.title:40} {shim}  {run.result} ({run.seconds:.1f} s)")
    ok = all(run.result == "passed" for run in todo if run.shim)
    print("\nthe shim made every run pass" if ok else "\nsome run with the shim did not pass")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
