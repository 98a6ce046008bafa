"""What the plugin tells: the report header (the shim's state, the server the fixtures use),
the sections added to a failing test's report (RPCs declared hung, a server's death, its log's
tail) and the run's summary of the servers that died."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from .. import __version__, status
from .._settings import (
    environment_problems,
)
from ..client._probe import import_connect
from ..servers._engines import (
    describe,
    python_workers,
)
from ..servers._supervisor import Death
from ..shim._watchdog import hangs_since, longest_wait
from ._options import (
    PluginSettings,
)
from ._stash import (
    DEATHS_SEEN,
    HANGS_SEEN,
    SETTINGS,
    SUPERVISOR,
    WORKER_DEATHS,
    is_xdist_worker,
    without_token,
)

#: Log lines attached to a failing test's report.
LOG_TAIL_LINES = 60


def describe_shim() -> str:
    """One line: whether the shim is active, on which pyspark version and client layout, and
    any environment variable whose bad value was replaced by its default.

    Imports pyspark's Spark Connect client (when it is installed) to tell its layout. Never
    raises, whatever pyspark looks like.
    """
    # Errors (SystemExit too: pyspark's dependency check exits in some set-ups) are reported.
    error = import_connect()
    info = status()
    if info["installed"]:
        state = f"active (activated by {info['activated_by']})"
    elif not info["enabled"]:
        state = "OFF (PYSPARK_SAFESTOP=0)"
    else:
        state = "not active (uninstalled)"
    version = info["pyspark_version"] or "(version unknown)"
    # Imported above when installed: a pyspark whose version cannot be read is still there.
    if info["pyspark_version"] is None and "pyspark" not in sys.modules:
        where = "pyspark not installed"
    elif info["layout"] is not None:
        where = f"pyspark {version}, layout {info['layout']}"
    elif error is not None:
        where = f"pyspark {version}, Spark Connect client not importable ({error})"
    elif info["layout_problem"] == "unknown":
        where = f"pyspark {version}, Spark Connect client not recognised (left untouched)"
    else:
        where = f"pyspark {version}, Spark Connect client not importable"
    timeout = info["settings"]["release_timeout"]
    hang = info["settings"]["hang_timeout"]
    watchdog = "off" if hang is None else f"{hang:g} s"
    line = (
        f"pyspark-safestop {__version__}: {state}; {where}; release timeout {timeout:g} s; "
        f"hang watchdog {watchdog}"
    )
    # Here too, because a warning about them may have gone to the logger (warnings as errors).
    return "".join([line, *(f"; bad setting: {problem}" for problem in environment_problems())])


def report_header(config: pytest.Config) -> list[str]:
    """The shim's state, and the server the fixtures use (not in xdist workers: unseen)."""
    if is_xdist_worker(config):
        return []
    lines = [describe_shim()]
    settings = config.stash.get(SETTINGS, None)
    if settings is not None and settings.remote:
        lines.append(
            f"pyspark-safestop: fixtures use {without_token(settings.remote)} (no local server)"
        )
    elif settings is not None:
        if settings.reuse_server:
            scope = f"a warm one kept between runs (stops after {settings.reuse_idle:g} s unused)"
        elif settings.shared_server:
            scope = "one for the whole run"
        else:
            scope = "one per process"
        where = f"master {settings.master}; " if settings.master else ""
        lines.append(
            f"pyspark-safestop: fixtures use {describe(settings.engine)}, {scope}; {where}"
            f"Python workers: {_workers_line(settings)}"
        )
    return lines


def _workers_line(settings: PluginSettings) -> str:
    described, problems = python_workers(settings.engine, spark_home=settings.spark_home)
    return "; ".join([described, *(f"WARNING: {problem}" for problem in problems)])


def hang_sections(item: pytest.Item) -> list[tuple[str, str]]:
    seen = item.stash.get(HANGS_SEEN, None)
    if seen is None:
        return []
    count, new = hangs_since(seen[0])
    seen[0] = count
    return [
        (
            "Spark Connect RPC hung",
            f"{hang.describe()}\n\nThreads when it was declared:\n{hang.stacks}",
        )
        for hang in new
    ]


def death_sections(item: pytest.Item) -> list[tuple[str, str]]:
    supervisor = item.config.stash.get(SUPERVISOR, None)
    seen = item.stash.get(DEATHS_SEEN, None)
    if supervisor is None or seen is None:
        return []
    return [
        ("Spark Connect server died", f"{death.describe()}\n\nIts log's tail:\n{death.log_tail}")
        for death in supervisor.deaths(seen)
    ]


def terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """Say how many times the servers this process started died, and what became of them;
    with ``-v``, the longest wait for a response against the hang timeout."""
    hang = status()["settings"]["hang_timeout"]
    waited, method = longest_wait()
    if config.getoption("verbose", 0) > 0 and hang is not None and method:
        terminalreporter.write_line(
            f"pyspark-safestop: the longest wait for a response was {waited:.1f} s "
            f"({method}); hang watchdog {hang:g} s"
        )
    supervisor = config.stash.get(SUPERVISOR, None)
    deaths = [] if supervisor is None else [death_shown(d) for d in supervisor.deaths()]
    from_workers: list[dict[str, object]] = config.stash.get(WORKER_DEATHS, [])
    deaths.extend(from_workers)
    if not deaths:
        return
    restarted = sum(bool(death["restarted"]) for death in deaths)
    terminalreporter.write_sep("=", "pyspark-safestop: local servers that died")
    for death in deaths:
        terminalreporter.write_line(f"{death['where']}{death['described']}")
    terminalreporter.write_line(f"{len(deaths)} death(s), {restarted} restart(s)")


def death_shown(death: Death, where: str = "") -> dict[str, object]:
    return {"where": where, "described": death.describe(), "restarted": death.restarted}
