"""The deadlock and its relatives, reproduced against a real Spark Connect server.

Every scenario runs twice in a subprocess, through a fault-injecting proxy: without the shim
(``PYSPARK_SAFESTOP=0``), where it must hang or break its bound on this client line (the bug
exists here), and with the shim, where it must pass. The two runs of all scenarios go
concurrently, once per module, so the hangs are waited out together.

Where upstream is not broken by a fault on some line (3.5 has no ReleaseSession RPC to hang,
and exits with an RPC in flight because its pool's threads are daemons), the test asserts that
upstream passes there too, so the table of what is broken where stays true.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.faultproxy import FaultProxy
from tests.harness import Check, Run, next_session_works, run_scenario, stop_within

pytestmark = pytest.mark.server

#: Bounds for the shim. Generous (the benchmarks measure the real figures): they only need to
#: separate "returned promptly" from upstream's 10 s waits and endless hangs.
STOP_BOUND = 2.0
RELEASE_TIMEOUT = 1.0
EXIT_BOUND = 4.0
#: A run still going this many seconds after its first line is called hung and killed. Every
#: check is a bound far below it, so a longer timeout can only make a slow machine pass; it
#: never lets an upstream run pass.
RUN_TIMEOUT = 60.0


def finished(outcome: Run) -> list[str]:
    if outcome.hung:
        return [f"hung: killed after {RUN_TIMEOUT:.0f} s"]
    problems = []
    if outcome.returncode != 0:
        problems.append(f"exit status {outcome.returncode}")
    if outcome.find("done") is None:
        problems.append("never reached the end of the scenario")
    return problems


def exits_within(bound: float) -> Check:
    def check(outcome: Run) -> list[str]:
        if outcome.exit_delay is None:
            return ["the interpreter never exited"]
        if outcome.exit_delay > bound:
            return [f"exit took {outcome.exit_delay} s > {bound} s after the work was done"]
        return []

    return check


def collected_within(bound: float) -> Check:
    def check(outcome: Run) -> list[str]:
        rounds = [e for e in outcome.events if e["event"] == "collected"]
        if len(rounds) < 3:
            return [f"garbage collection blocked (only {len(rounds)} of 3 rounds done)"]
        slow = [e for e in rounds if e["seconds"] > bound]
        return [f"gc.collect() took {e['seconds']} s" for e in slow]

    return check


def interrupted(outcome: Run) -> list[str]:
    event = outcome.find("interrupted")
    if event is None:
        return ["the KeyboardInterrupt never reached the script"]
    return []


def all_stopped_within(bound: float) -> Check:
    def check(outcome: Run) -> list[str]:
        event = outcome.find("stopped", label="all")
        if event is None:
            return ["the concurrent stops never finished"]
        if event["returned"] != 16 or event["seconds"] > bound:
            return [f"{event['returned']}/16 stops returned, in {event['seconds']} s"]
        return []

    return check


@dataclass(frozen=True)
class Case:
    script: str
    checks: tuple[Check, ...]
    hang: tuple[str, ...] = ("ReleaseExecute",)
    env: dict[str, str] = field(default_factory=dict)
    #: Layouts on which upstream is not broken by this fault.
    upstream_passes_on: frozenset[str] = frozenset()
    kill_server_at_checkpoint: bool = False

    def problems(self, outcome: Run) -> list[str]:
        found = finished(outcome)
        for check in self.checks:
            found += check(outcome)
        return found


_TIMEOUT_ENV = {"PYSPARK_SAFESTOP_RELEASE_TIMEOUT": str(RELEASE_TIMEOUT)}

CASES: dict[str, Case] = {
    # (a) the seed's chain: stop in a daemon thread with a 5 s timeout, then a new session.
    "a_seed_chain": Case(
        "seed_chain",
        (stop_within("first", STOP_BOUND), next_session_works, exits_within(EXIT_BOUND)),
    ),
    # (b) plain stop with ReleaseExecute hung.
    "b_stop_release_execute_hung": Case(
        "plain_stop",
        (stop_within("first", STOP_BOUND), next_session_works, exits_within(EXIT_BOUND)),
    ),
    # (c) stop with ReleaseSession hung: bounded by the release timeout.
    "c_stop_release_session_hung": Case(
        "plain_stop",
        (stop_within("first", RELEASE_TIMEOUT + STOP_BOUND), next_session_works),
        hang=("ReleaseSession",),
        env=_TIMEOUT_ENV,
        upstream_passes_on=frozenset({"3.5"}),
    ),
    # (d) sessions dropped without stop() and garbage-collected, then a new session.
    "d_gc_orphans": Case("gc_orphans", (collected_within(STOP_BOUND), next_session_works)),
    # (e) process exit with an unstopped session and an RPC hung.
    "e_exit_unstopped": Case(
        "exit_unstopped", (exits_within(EXIT_BOUND),), upstream_passes_on=frozenset({"3.5"})
    ),
    # (f) 16 threads stopping 16 sessions at once.
    "f_concurrent_stops": Case(
        "concurrent_stops", (all_stopped_within(4 * STOP_BOUND), next_session_works)
    ),
    # (g) the server dies before stop(): the proxy drops every connection and stops listening.
    "g_server_killed": Case(
        "server_killed",
        (stop_within("first", RELEASE_TIMEOUT + STOP_BOUND), exits_within(EXIT_BOUND)),
        hang=(),
        env=_TIMEOUT_ENV,
        kill_server_at_checkpoint=True,
    ),
    # (h) double stop with ReleaseExecute hung.
    "h_double_stop": Case(
        "double_stop",
        (stop_within("first", STOP_BOUND), stop_within("second", STOP_BOUND), next_session_works),
    ),
    # (i) Ctrl-C while stop() waits on a hung ReleaseSession: the interrupt must not leave the
    # channel (and its hung RPCs) open, or the next session or the exit hangs.
    "i_interrupt_during_stop": Case(
        "interrupt_during_stop",
        (interrupted, next_session_works, exits_within(EXIT_BOUND)),
        hang=("ReleaseExecute", "ReleaseSession"),
        env={"PYSPARK_SAFESTOP_RELEASE_TIMEOUT": "3"},
    ),
}


def _run(case: Case, shim: bool, server_url: str, workdir: Path) -> Run:
    mode = "shim" if shim else "upstream"
    with FaultProxy(server_url) as proxy:
        for method in case.hang:
            proxy.hang(method)
        actions = {"kill-server": proxy.kill} if case.kill_server_at_checkpoint else {}
        return run_scenario(
            case.script,
            proxy.url,
            shim=shim,
            timeout=RUN_TIMEOUT,
            env=case.env,
            on_checkpoint=actions,
            label=f"{case.script} [{mode}, faults: {', '.join(case.hang) or 'server killed'}]",
            stderr_path=workdir / f"{case.script}-{'-'.join(case.hang)}-{mode}.stderr",
        )


@pytest.fixture(scope="module")
def outcomes(
    spark_connect_server_address: str, tmp_path_factory: pytest.TempPathFactory
) -> dict[tuple[str, bool], Run]:
    workdir = tmp_path_factory.mktemp("scenarios")
    # A first session and query warm the server's JVM up, so that the runs' first queries are
    # not all paying for a cold start at once.
    _run(Case("plain_stop", (), hang=()), True, spark_connect_server_address, workdir)
    runs = [(name, shim) for name in CASES for shim in (False, True)]
    # Upstream runs mostly sit in hangs; running them side by side costs a few timeouts, not 16.
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        futures = {
            run: pool.submit(_run, CASES[run[0]], run[1], spark_connect_server_address, workdir)
            for run in runs
        }
        results = {run: future.result() for run, future in futures.items()}
    # Kept for a look after the run (and in CI logs' temp dirs): what every run printed.
    dump = {
        f"{name} {'shim' if shim else 'upstream'}": vars(o) for (name, shim), o in results.items()
    }
    (workdir / "outcomes.json").write_text(json.dumps(dump, indent=1))
    if os.environ.get("PYSPARK_SAFESTOP_OUTCOMES"):
        Path(os.environ["PYSPARK_SAFESTOP_OUTCOMES"]).write_text(json.dumps(dump, indent=1))
    return results


@pytest.mark.parametrize("name", list(CASES))
def test_shim_passes(name: str, outcomes: dict[tuple[str, bool], Run]) -> None:
    outcome = outcomes[name, True]
    problems = CASES[name].problems(outcome)
    assert not problems, f"{problems}\n{outcome.describe()}"


@pytest.mark.parametrize("name", list(CASES))
def test_upstream_is_broken(
    name: str, outcomes: dict[tuple[str, bool], Run], client_layout: str
) -> None:
    case = CASES[name]
    outcome = outcomes[name, False]
    problems = case.problems(outcome)
    if client_layout in case.upstream_passes_on:
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
    event = outcomes["b_stop_release_execute_hung", False].find("stopped", label="first")
    assert event is not None
    assert 9.5 <= event["seconds"] <= 15, event
