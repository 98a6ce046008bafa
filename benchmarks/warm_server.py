"""The edit-run loop: one-test pytest runs with a server started per run, with a warm server
(``--safestop-reuse-server``), and with ``--safestop-remote`` to a server already up; then what
the ``spark`` fixture (a new session per test) costs per test against one session reused.

    python benchmarks/warm_server.py [--python .nox/tests-line-4-2/bin/python]
        [--engine spark|sail] [--repeat 3] [--tests 20]

Every run is a real ``python -m pytest`` of a generated suite, timed from outside (wall time,
interpreter start and imports included); the figure is the median of ``--repeat`` runs. The
warm runs use a private folder of warm servers, stopped at the end. The per-test figures come
from pytest's own durations (setup, call and teardown of each test) in a suite of ``--tests``
tests on the warm server: once on ``spark``, once on one module-scoped session.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from _common import REPO, RESULTS, describe_machine, machine, print_table, write_json

from pyspark_safestop.servers import ServerRequest, make_server

ONE_TEST = """
def test_one(spark):
    assert spark.range(5).count() == 5
"""

PER_TEST = """
import pytest


@pytest.fixture(scope="module")
def reused(spark_connect_url):
    from pyspark_safestop import connect_session

    with connect_session(spark_connect_url) as session:
        yield session


@pytest.mark.parametrize("n", range({tests}))
def test_new_session(n, spark):
    assert spark.range(n + 1).count() == n + 1


@pytest.mark.parametrize("n", range({tests}))
def test_reused_session(n, reused):
    assert reused.range(n + 1).count() == n + 1
"""

#: Sums each test's setup, call and teardown into a JSON file (the inner run's conftest).
RECORDER = """
import json, os
from collections import defaultdict

TIMES = defaultdict(float)


def pytest_runtest_logreport(report):
    TIMES[report.nodeid] += report.duration


def pytest_sessionfinish(session):
    out = os.environ.get("BENCH_TIMES")
    if out:
        with open(out, "w") as handle:
            json.dump(TIMES, handle)
"""


def _pytest(python: str, folder: Path, env: dict[str, str], *args: str) -> float:
    argv = [python, "-m", "pytest", "-q", "-p", "pyspark_safestop.plugin", "-p", "no:cacheprovider"]
    t0 = time.monotonic()
    run = subprocess.run(
        [*argv, *args],
        check=False,
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    wall = time.monotonic() - t0
    if run.returncode != 0:
        sys.exit(f"the inner run failed:\n{run.stdout[-3000:]}\n{run.stderr[-2000:]}")
    return wall


def main() -> int:
    """Measure the runs; print them with their ratios; write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--python", default=str(REPO / ".nox" / "tests-line-4-2" / "bin" / "python")
    )
    parser.add_argument("--engine", choices=("spark", "sail"), default="spark")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--tests", type=int, default=20)
    args = parser.parse_args()
    info = machine()
    print(f"warm-server benchmark on {describe_machine(info)}", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="bench-warm-") as tmp:
        folder = Path(tmp)
        (folder / "test_one.py").write_text(textwrap.dedent(ONE_TEST))
        (folder / "test_per_test.py").write_text(textwrap.dedent(PER_TEST.format(tests=args.tests)))
        (folder / "conftest.py").write_text(textwrap.dedent(RECORDER))
        env = dict(os.environ)
        env["PYTHONPATH"] = str(REPO)
        env["PYSPARK_SAFESTOP_WARM_DIR"] = str(folder / "warm")
        engine = ("--safestop-engine", args.engine)
        try:
            walls: dict[str, list[float]] = {"per run": [], "warm": [], "remote": []}
            first = _pytest(
                args.python, folder, env, *engine, "--safestop-reuse-server", "test_one.py"
            )
            for _ in range(args.repeat):
                walls["per run"].append(_pytest(args.python, folder, env, *engine, "test_one.py"))
                walls["warm"].append(
                    _pytest(
                        args.python, folder, env, *engine, "--safestop-reuse-server", "test_one.py"
                    )
                )
            with make_server(args.engine, ServerRequest()) as server:
                remote = {**env, "PYSPARK_SAFESTOP_REMOTE": server.url}
                _pytest(args.python, folder, remote, "test_one.py")  # its JVM warmed up too
                for _ in range(args.repeat):
                    walls["remote"].append(_pytest(args.python, folder, remote, "test_one.py"))
            times_path = folder / "times.json"
            _pytest(
                args.python,
                folder,
                {**env, "BENCH_TIMES": str(times_path)},
                *engine,
                "--safestop-reuse-server",
                "-p",
                "no:randomly",
                "test_per_test.py",
            )
            times = json.loads(times_path.read_text())
        finally:
            subprocess.run(
                [args.python, "-m", "pyspark_safestop", "servers", "--stop"],
                env=env,
                capture_output=True,
                check=False,
                timeout=120,
            )
    median = {name: statistics.median(values) for name, values in walls.items()}
    base = median["per run"]
    rows = [
        ("a server started for the run (today's default)", median["per run"]),
        ("--safestop-reuse-server, first run (starts it)", first),
        ("--safestop-reuse-server, next runs (warm)", median["warm"]),
        ("--safestop-remote to a server already up", median["remote"]),
    ]
    print_table(
        f"One-test pytest run, {args.engine} server, median of {args.repeat} "
        f"({Path(args.python).parent.parent.name})",
        ["run", "wall time", "vs. a server per run"],
        [(name, f"{wall:.2f} s", f"{wall / base:.2f}x") for name, wall in rows],
        info,
    )
    new = [value for key, value in times.items() if "test_new_session" in key]
    reused = [value for key, value in times.items() if "test_reused_session" in key]
    # The first of each pays for what the other tests share (the reused session's creation).
    per_test = [
        ("`spark` (a new session per test)", statistics.median(new), sum(new)),
        ("one session reused by the module", statistics.median(reused), sum(reused)),
    ]
    print_table(
        f"Per test on the warm server, {args.tests} tests each (setup + call + teardown)",
        ["fixture", "median per test", f"all {args.tests}"],
        [(name, f"{mid * 1000:.0f} ms", f"{total:.2f} s") for name, mid, total in per_test],
    )
    write_json(
        RESULTS / "warm_server.json",
        {
            "machine": info,
            "engine": args.engine,
            "python": args.python,
            "walls": walls,
            "first_warm_run": first,
            "per_test": {"new_session": new, "reused_session": reused},
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
