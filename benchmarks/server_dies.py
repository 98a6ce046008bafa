"""A suite whose local server dies half-way: wall time, tests failed, restarts.

    python benchmarks/server_dies.py [--line 4.1=/path/to/python ...] [--tests 12]
        [--kill-at 4] [--cap 300]

A pytest suite of ``--tests`` tests on the plugin's ``spark`` fixture (its own local server);
test ``--kill-at`` SIGKILLs the server's JVM (as the kernel's OOM killer does) and then runs its
query. Three runs per line: healthy (nobody kills the server), upstream (``PYSPARK_SAFESTOP=0``,
no restart: the client retries the dead port at every remaining test), and the package as it
is (the calls in flight fail at once, the server is restarted on the same URL before the next
test). A run still going after ``--cap`` seconds is killed, with what it had done by then.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import benchmark_parser, child_env, fmt_seconds, prepare, publish

TEST = """
def test_{i}(spark):
    assert spark.range({i} + 1).count() == {i} + 1
"""
KILLER = """
def test_{i}(spark, spark_connect_server):
    import os, signal
    assert spark.range(3).count() == 3
    os.kill(spark_connect_server.pid, signal.SIGKILL)
    spark.range(5).collect()
"""
#: The upstream run: the shim off, a dead server left dead, nothing bounding a call.
UPSTREAM = ("--safestop-server-restarts=0", "--safestop-hang-timeout=0")


def generate(folder: Path, tests: int, kill_at: int | None) -> Path:
    """The suite: one file, ``tests`` tests, the ``kill_at``-th (1-based) killing the server."""
    folder.mkdir(parents=True, exist_ok=True)
    body = "".join((KILLER if i == kill_at else TEST).format(i=i) for i in range(1, tests + 1))
    path = folder / "test_suite.py"
    path.write_text(body)
    return path


def run(python: str, suite: Path, *, shim: bool, args: tuple[str, ...], cap: float) -> dict:
    """One pytest run of ``suite``, killed (its whole group) after ``cap`` seconds."""
    log = suite.with_suffix(f".{'shim' if shim else 'upstream'}.{time.monotonic_ns()}.log")
    command = [python, "-m", "pytest", "-p", "pyspark_safestop.plugin", "-p", "no:cacheprovider"]
    command += ["-v", "-rA", suite.name, *args]
    started = time.monotonic()
    with open(log, "w") as out:
        child = subprocess.Popen(
            command,
            cwd=suite.parent,
            env=child_env(shim=shim),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            child.wait(cap)
            killed = False
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
            killed = True
    wall = time.monotonic() - started
    text = log.read_text(errors="replace")
    passed = len(re.findall(r"::test_\d+ PASSED", text))
    failed = len(re.findall(r"::test_\d+ FAILED", text))
    restarts = re.search(r"(\d+) death\(s\), (\d+) restart\(s\)", text)
    return {
        "wall": wall,
        "killed": killed,
        "passed": passed,
        "failed": failed,
        "deaths": int(restarts.group(1)) if restarts else 0,
        "restarts": int(restarts.group(2)) if restarts else 0,
        "log": str(log),
    }


def main() -> int:
    """Run the three runs on every line; print the table; write the JSON."""
    parser = benchmark_parser(__doc__.splitlines()[0], "server_dies.json")
    parser.add_argument("--tests", type=int, default=12, help="tests in the suite")
    parser.add_argument("--kill-at", type=int, default=4, help="the test that kills the server")
    parser.add_argument("--cap", type=float, default=300.0, help="seconds before a run is killed")
    args = parser.parse_args()
    lines, home, info = prepare(parser, args, "server-dies benchmark")
    os.environ.setdefault("PYSPARK_SAFESTOP_SPARK_HOME", str(home))
    work = Path(tempfile.mkdtemp(prefix="safestop-server-dies-"))
    healthy = generate(work / "healthy", args.tests, None)
    dying = generate(work / "dying", args.tests, args.kill_at)
    results = []
    for line, python in lines.items():
        for name, suite, shim, extra in (
            ("healthy", healthy, True, ()),
            ("upstream", dying, False, UPSTREAM),
            ("pyspark-safestop", dying, True, ()),
        ):
            outcome = run(python, suite, shim=shim, args=extra, cap=args.cap)
            results.append({"line": line, "run": name, **outcome})
            print(f"  {line} {name}: {outcome['wall']:.0f} s", file=sys.stderr, flush=True)

    rows = []
    for row in results:
        wall = fmt_seconds(row["wall"])
        if row["killed"]:
            wall = f"> {args.cap:.0f} s (killed)"
        done = row["passed"] + row["failed"]
        rows.append(
            [
                row["line"],
                row["run"],
                wall,
                f"{done}/{args.tests}",
                str(row["passed"]),
                str(row["failed"]),
                str(row["restarts"]),
            ]
        )
    title = (
        f"A suite of {args.tests} tests on the spark fixture, the server SIGKILLed in test "
        f"{args.kill_at} (healthy: not killed)"
    )
    header = ["line", "run", "wall time", "tests done", "passed", "failed", "restarts"]
    return publish(args.json, title, header=header, rows=rows, info=info, runs=results)


if __name__ == "__main__":
    raise SystemExit(main())
