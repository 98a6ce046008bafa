"""The deadlock and its relatives, reproduced against a real Spark Connect server.

Every regression case of the catalogue (:mod:`pyspark_safestop.testing.catalogue`) runs twice
in a child interpreter (forked from one that imported pandas, pyarrow and gRPC, never pyspark:
:mod:`pyspark_safestop.testing.preloaded`), through the fault proxy: without the shim
(``PYSPARK_SAFESTOP=0``), where it must hang or break its bound on this client line (the bug
exists here), and with the shim, where it must pass. An upstream run is called hung as soon as
the child's watchdog shows a thread parked in one of the frames the case names (where upstream
never comes back), or, as a backstop, when it is still going after the case's hard timeout.
Were the bug gone, the upstream run would finish within its bounds and
``test_upstream_is_broken`` would fail. The runs go four at a time, once per module.

Where upstream is not broken by a fault on some line (3.5 has no ReleaseSession RPC to hang,
and exits with an RPC in flight because its pool's threads are daemons), the test asserts that
upstream passes there too, so the table of what is broken where stays true.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
from pathlib import Path

import pytest

from pyspark_safestop.testing.catalogue import CASES, WARM_UP, run_case
from pyspark_safestop.testing.preloaded import Preloaded
from pyspark_safestop.testing.runner import Run, child_env

pytestmark = pytest.mark.server

REGRESSIONS = [name for name, case in CASES.items() if case.regression]


def _run(name: str, shim: bool, url: str, workdir: Path, preloaded: dict[bool, Preloaded]) -> Run:
    mode = "shim" if shim else "upstream"
    stderr_path = workdir / f"{name}-{mode}.stderr"
    return run_case(CASES[name], url, shim=shim, stderr_path=stderr_path, preloaded=preloaded[shim])


@pytest.fixture(scope="module")
def outcomes(
    spark_connect_url: str, tmp_path_factory: pytest.TempPathFactory, client_layout: str
) -> dict[tuple[str, bool], Run]:
    workdir = tmp_path_factory.mktemp("scenarios")
    runs = [(name, shim) for name in REGRESSIONS for shim in (False, True)]
    # Each run is a child of an interpreter that imported pandas, pyarrow and gRPC once, instead
    # of a fresh interpreter importing them again. The shim's runs import the package, then
    # pyspark, themselves; upstream's (where importing the package does nothing) find pyspark's
    # client imported already (not 3.5's, whose import starts its release pool's threads, which
    # a forked child would not have).
    with (
        Preloaded(env=child_env(shim=False)) as shim_runs,
        Preloaded(env=child_env(shim=False), client=client_layout != "3.5") as upstream_runs,
    ):
        preloaded = {True: shim_runs, False: upstream_runs}
        run_case(WARM_UP, spark_connect_url, shim=True, preloaded=shim_runs)
        # Upstream runs mostly sit in hangs until their stacks prove them: side by side.
        with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
            futures = {
                run: pool.submit(_run, *run, spark_connect_url, workdir, preloaded) for run in runs
            }
            results = {run: future.result() for run, future in futures.items()}
    # Kept for a look after the run: what every run printed.
    dump = {
        f"{name} {'shim' if shim else 'upstream'}": vars(o) for (name, shim), o in results.items()
    }
    (workdir / "outcomes.json").write_text(json.dumps(dump, indent=1))
    if os.environ.get("PYSPARK_SAFESTOP_OUTCOMES"):
        Path(os.environ["PYSPARK_SAFESTOP_OUTCOMES"]).write_text(json.dumps(dump, indent=1))
    return results


@pytest.mark.parametrize("name", REGRESSIONS)
def test_shim_passes(name: str, outcomes: dict[tuple[str, bool], Run]) -> None:
    outcome = outcomes[name, True]
    problems = CASES[name].problems(outcome)
    assert not problems, f"{problems}\n{outcome.describe()}"


@pytest.mark.parametrize("name", REGRESSIONS)
def test_upstream_is_broken(
    name: str, outcomes: dict[tuple[str, bool], Run], client_layout: str
) -> None:
    case = CASES[name]
    outcome = outcomes[name, False]
    problems = case.problems(outcome)
    # A scenario this client cannot run (no checkpoints or ML over its Connect client) says so.
    if client_layout in case.upstream_passes_on or outcome.find("unsupported") is not None:
        assert not problems, (
            f"upstream was expected to pass on {client_layout}: {problems}\n{outcome.describe()}"
        )
    else:
        assert problems, (
            f"the bug did not reproduce on {client_layout}: upstream passed\n{outcome.describe()}"
        )


def test_upstream_waits_ten_seconds_on_42(
    outcomes: dict[tuple[str, bool], Run], client_layout: str
) -> None:
    """4.2+ no longer deadlocks; its close() waits 10 s on the hung release futures instead."""
    if client_layout != "4.2+":
        pytest.skip(f"the 10 s wait is the 4.2+ symptom; this is {client_layout}")
    event = outcomes["stop_release_execute_hung", False].find("stopped", label="first")
    assert event is not None
    assert 9.5 <= event["seconds"] <= 15, event
