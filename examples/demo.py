"""The examples against a real local Spark Connect server, without and with the shim.

    python examples/demo.py [--timeout SECONDS] [--all]

Starts a Spark Connect server from the installed jars (``PYSPARK_SAFESTOP_SPARK_HOME``, the
installed pyspark, or ``SPARK_HOME``) and, in front of it, a proxy that makes every
``ReleaseExecute`` RPC hang until the client gives up on it, as a flaky network or an
overloaded server does. Then runs, with this interpreter (pyspark-safestop and a pyspark client
installed):

1. the class-scoped pytest suite without the shim (``PYSPARK_SAFESTOP=0``); up to client
   line 4.1 it hangs and is killed after ``--timeout`` seconds, on 4.2+ every stop() waits
   10 s;
2. the same suite with the shim: it passes;
3. the same under pytest-xdist (``-n 2``), with the shim;
4. the plain script and 5. the unittest case, with the shim.

``--all`` also runs 3-5 without the shim. Each result says what was observed: passed or
failed and in how long; for a run killed at the timeout, whether any RPC still reached the
proxy in its last seconds (slow) or none for a long while (hung). Exit status 0 when every
run with the shim passed. ``nox -s demo`` sets all of this up and runs it (client line 4.1).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from pyspark_safestop.servers import SparkConnectServer, find_spark_home
from pyspark_safestop.testing.faults import FaultProxy

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
#: A run killed at the timeout with no RPC through the proxy for this long is called hung.
QUIET_FOR_HUNG = 15.0


@dataclass
class Run:
    title: str
    command: list[str]
    shim: bool
    result: str = ""
    seconds: float = 0.0


def _plugin_option() -> list[str]:
    """``-p pyspark_safestop.plugin`` where the package is importable but not installed (a
    checkout on ``PYTHONPATH``): an installed one registers its plugin itself."""
    found = importlib.metadata.entry_points()
    # select(): Python 3.10+; a dict of groups before.
    if hasattr(found, "select"):
        group = found.select(group="pytest11")
    else:
        group = found.get("pytest11", [])
    installed = any(ep.name == "pyspark_safestop" for ep in group)
    return [] if installed else ["-p", "pyspark_safestop.plugin"]


def runs() -> list[Run]:
    pytest = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *_plugin_option(), "-v"]
    suite = [str(HERE / "test_class_sessions.py")]
    return [
        Run("pytest suite, class-scoped sessions", [*pytest, *suite], shim=False),
        Run("pytest suite, class-scoped sessions", [*pytest, *suite], shim=True),
        Run("the same under xdist (-n 2)", [*pytest, "-n", "2", *suite], shim=True),
        Run("plain script", [sys.executable, str(HERE / "script_example.py")], shim=True),
        Run("unittest case", [sys.executable, str(HERE / "unittest_example.py")], shim=True),
    ]


class Activity:
    """When an RPC last went through the proxy: what tells a hung run from a slow one."""

    def __init__(self, proxy: FaultProxy) -> None:
        self._proxy = proxy
        self._seen = proxy.calls()
        self._at = time.monotonic()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._done.wait(0.5):
            calls = self._proxy.calls()
            if calls != self._seen:
                self._seen, self._at = calls, time.monotonic()

    def quiet_for(self) -> float:
        """Seconds since the last RPC reached the proxy."""
        self._done.set()
        self._thread.join()
        return time.monotonic() - self._at


def execute(run: Run, proxy: FaultProxy, timeout: float) -> None:
    """Run it with its output shown as it comes; kill its process group at the timeout."""
    # The URL holds the server's token: in the environment, never on a command line (ps).
    env = dict(
        os.environ,
        SPARK_REMOTE=proxy.url,
        PYSPARK_SAFESTOP_REMOTE=proxy.url,
        PYSPARK_SAFESTOP="1" if run.shim else "0",
    )
    env.pop("PYSPARK_SAFESTOP_REQUIRE_SERVER", None)
    print(f"\n=== {run.title}, {'WITH' if run.shim else 'WITHOUT'} the shim", flush=True)
    started = time.monotonic()
    activity = Activity(proxy)
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
    quiet = activity.quiet_for()
    reader.join(timeout=5)
    run.seconds = time.monotonic() - started
    if code is None and quiet >= QUIET_FOR_HUNG:
        run.result = f"HUNG: no RPC for its last {quiet:.0f} s; killed at {timeout:.0f} s"
    elif code is None:
        run.result = (
            f"SLOW: still working (an RPC {quiet:.1f} s before) when killed at {timeout:.0f} s"
        )
    else:
        run.result = "passed" if code == 0 else f"failed (exit status {code})"
    print(f"=== {run.result} ({run.seconds:.1f} s)", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--timeout", type=float, default=60.0, help="seconds before a run is killed (60)"
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
            # The URLs carry the server's token: printed without it.
            print(
                f"server {server.url.split('/;')[0]}; the examples use "
                f"{proxy.url.split('/;')[0]}, a proxy in front of it where every "
                "ReleaseExecute RPC hangs",
                flush=True,
            )
            todo = runs()
            if args.all:
                todo += [Run(r.title, r.command, shim=False) for r in todo[2:]]
            for run in todo:
                execute(run, proxy, args.timeout)

    print("\nsummary")
    for run in todo:
        shim = "with the shim   " if run.shim else "without the shim"
        print(f"  {run.title:40} {shim}  {run.result} ({run.seconds:.1f} s)")
    ok = all(run.result == "passed" for run in todo if run.shim)
    print("\nthe shim made every run pass" if ok else "\nsome run with the shim did not pass")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
