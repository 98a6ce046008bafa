"""``doctor``: does this environment have the hang, and is the shim active here, and how?

The facts about pyspark come from a fresh interpreter of this environment (:mod:`._probe`),
started with this interpreter's flags: it imports pyspark's Spark Connect client the way a
user's script does, so what it reports is what a script gets, unaffected by this process
having imported the package. The rest (installed files, entry points, settings) is read here.

Whether a client has the hang is decided from its layout (:data:`KNOWN_PROBLEMS`): every layout
the shim recognises has it. A client the layout module does not recognise (a future, fixed
pyspark) is reported as not known to have it, and the shim leaves it untouched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from .. import __version__
from .._settings import (
    ENV_ENABLED,
    ENV_HANG_TIMEOUT,
    ENV_RELEASE_TIMEOUT,
    enabled_from_env,
    environment_problems,
    hang_timeout_from_env,
    release_timeout_from_env,
)
from ..client import _distribution, _layouts
from ..servers._engines import engine_from_env, python_workers
from ..servers._spark import find_spark_home, java_available
from ..servers._warm import warm_servers

__all__ = [
    "KNOWN_PROBLEMS",
    "Verdict",
    "decide",
    "diagnose",
    "grpc_fork_hazard",
    "render",
    "suite_hazards",
]

#: What goes wrong without the shim, per client layout (the facts live in ``_layouts``).
KNOWN_PROBLEMS = {layout.name: layout.symptom for layout in _layouts.LAYOUTS}

GRPC_FORK_ENV = "GRPC_ENABLE_FORK_SUPPORT"
PTH_FILE = "pyspark_safestop.pth"
START_FILE = "pyspark_safestop.start"
PLUGIN_NAME = "pyspark_safestop"
PROBE = Path(__file__).parent.parent / "client" / "_probe.py"
PROBE_TIMEOUT = 180.0


@dataclass(frozen=True)
class Verdict:
    """The answer: ``ok`` is false when the hang is present and nothing activates the shim."""

    ok: bool
    #: True (present), False (absent) or None (not known: an unrecognised client).
    bug: bool | None
    #: "everywhere" (every interpreter, through the .pth), "pytest" (the plugin only) or "no".
    active: str
    summary: str


def decide(
    *,
    pyspark_version: str | None,
    connect_error: str | None,
    layout: str | None,
    layout_problem: str | None,
    active_everywhere: bool,
    plugin_active: bool,
) -> Verdict:
    """Decide from the facts; a pure function (the unit tests cover every branch)."""
    active = "everywhere" if active_everywhere else "pytest" if plugin_active else "no"
    if pyspark_version is None:
        return Verdict(True, False, active, "pyspark is not installed: nothing to fix")
    if connect_error is not None and layout is None:
        return Verdict(
            True,
            False,
            active,
            f"pyspark {pyspark_version}'s Spark Connect client cannot be imported: "
            f"{connect_error} (nothing to fix until it can)",
        )
    if layout is None or layout not in KNOWN_PROBLEMS:
        what = "not recognised" if layout_problem == "unknown" or layout else "not inspected"
        return Verdict(
            True,
            None,
            active,
            f"pyspark {pyspark_version}'s Spark Connect client is {what}: it is not known to "
            "have the hang, and the shim leaves it untouched",
        )
    if active == "everywhere":
        return Verdict(True, True, active, "the hang is present, and the shim is active")
    if active == "pytest":
        return Verdict(
            True,
            True,
            active,
            "the hang is present; the shim is active under pytest (the plugin) but not in "
            "other interpreters: add `import pyspark_safestop` to scripts",
        )
    return Verdict(
        False,
        True,
        active,
        "the hang is present and the shim is NOT active: see the activation paths above",
    )


# -- facts --------------------------------------------------------------------------------------


def _probe() -> dict[str, Any]:
    flags = []
    if sys.flags.isolated:
        flags.append("-I")
    else:
        if sys.flags.no_site:
            flags.append("-S")
        if sys.flags.no_user_site:
            flags.append("-s")
        if sys.flags.ignore_environment:
            flags.append("-E")
    proc = subprocess.run(
        [sys.executable, *flags, str(PROBE)],
        capture_output=True,
        text=True,
        timeout=PROBE_TIMEOUT,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise RuntimeError(f"the probe interpreter failed (exit status {proc.returncode}): {tail}")
    found: dict[str, Any] = json.loads(lines[-1])
    return found


def _site_files() -> dict[str, str | None]:
    """Where this environment's ``.pth`` and ``.start`` files are (on ``sys.path``)."""
    found: dict[str, str | None] = {}
    for name in (PTH_FILE, START_FILE):
        paths = (Path(entry or ".") / name for entry in sys.path)
        found[name] = next((str(path) for path in paths if path.is_file()), None)
    return found


def _entry_point() -> str | None:
    """The value of this package's pytest11 entry point, if it is installed."""
    try:
        points: Any = metadata.entry_points()
        group = (
            points.select(group="pytest11")
            if hasattr(points, "select")
            else points.get("pytest11", [])
        )
    except Exception:
        return None
    for point in group:
        if point.name == PLUGIN_NAME:
            value: str = point.value
            return value
    return None


def _plugin_state(entry_point: str | None) -> tuple[bool, str]:
    if entry_point is None:
        return False, "not installed (no pytest11 entry point)"
    if os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD"):
        return False, "not loaded: PYTEST_DISABLE_PLUGIN_AUTOLOAD is set (add -p pyspark_safestop)"
    if f"no:{PLUGIN_NAME}" in os.environ.get("PYTEST_ADDOPTS", ""):
        return False, f"blocked by PYTEST_ADDOPTS (-p no:{PLUGIN_NAME})"
    if not enabled_from_env():
        return False, f"loaded by pytest, but {ENV_ENABLED}=0 keeps the shim off"
    return True, "registered: pytest loads it and it activates the shim"


def _pth_state(files: dict[str, str | None], probe: dict[str, Any]) -> tuple[bool, str]:
    pth = files[PTH_FILE]
    if pth is None:
        return False, "not installed (no pyspark_safestop.pth on sys.path)"
    if probe.get("boot_missing"):
        return False, f"{pth} is left without its module: reinstall pyspark-safestop or delete it"
    if not probe.get("boot_processed"):
        return False, f"{pth} is not processed here (python -S, or not a site directory)"
    state = probe.get("boot_state_after") or probe.get("boot_state")
    fired = bool(probe.get("status_was_active")) and state == "fired"
    descriptions = {
        "disabled": f"present, but {ENV_ENABLED}=0 turns it off",
        "armed": "armed, but pyspark's Spark Connect client was not imported",
        "fired": "active: the shim is activated when pyspark's Spark Connect client is imported",
        "failed": "failed: see the error it printed on stderr",
        "off": "present, but its hook was not armed",
    }
    return fired, descriptions.get(str(state), f"state {state!r}")


def diagnose() -> dict[str, Any]:
    """Collect the facts and the verdict, as a JSON-serialisable dict."""
    try:
        probe = _probe()
        probe_error = None
    except (OSError, RuntimeError, subprocess.TimeoutExpired, ValueError) as error:
        probe, probe_error = {}, str(error)
    status: dict[str, Any] = probe.get("status") or {}
    files = _site_files()
    entry_point = _entry_point()
    plugin_active, plugin_text = _plugin_state(entry_point)
    pth_active, pth_text = _pth_state(files, probe)
    verdict = decide(
        pyspark_version=status.get("pyspark_version")
        or ("(version unknown)" if probe.get("pyspark_imported") else None),
        connect_error=probe.get("connect_error"),
        layout=status.get("layout"),
        layout_problem=status.get("layout_problem"),
        active_everywhere=pth_active,
        plugin_active=plugin_active,
    )
    if probe_error is not None:
        verdict = Verdict(False, None, verdict.active, f"could not inspect pyspark: {probe_error}")
    spark_home = find_spark_home()
    dists = _distribution.pyspark_distributions()
    engine = engine_from_env()
    described, problems = python_workers(engine)
    return {
        "warm_servers": [server.describe() for server in warm_servers()],
        "ok": verdict.ok,
        "summary": verdict.summary,
        "bug": verdict.bug,
        "problem": KNOWN_PROBLEMS.get(status.get("layout") or "") if verdict.bug else None,
        "shim": {
            "active": verdict.active,
            "activated_by": status.get("activated_by") if probe.get("status_was_active") else None,
            "patches": status.get("patches", []) if probe.get("status_was_active") else [],
        },
        "pyspark": {
            "version": status.get("pyspark_version"),
            # The distribution whose files are on disk; any other listed installed the same
            # module too, and was overwritten.
            "distribution": f"{dists[0][0]} {dists[0][1]}" if dists else None,
            "distributions": dict(dists),
            "layout": status.get("layout"),
            "layout_problem": status.get("layout_problem"),
            "connect_error": probe.get("connect_error"),
            "token_needs_channel_builder": probe.get("token_needs_channel_builder"),
        },
        "activation": {
            "pth": {"active": pth_active, "state": pth_text, "file": files[PTH_FILE]},
            "start_file": files[START_FILE],
            "pytest_plugin": {"active": plugin_active, "state": plugin_text},
            "import": "`import pyspark_safestop` activates it in any interpreter"
            if enabled_from_env()
            else f"off: {ENV_ENABLED}=0 makes `import pyspark_safestop` a no-op",
        },
        "settings": {
            ENV_ENABLED: os.environ.get(ENV_ENABLED),
            "enabled": enabled_from_env(),
            ENV_RELEASE_TIMEOUT: os.environ.get(ENV_RELEASE_TIMEOUT),
            "release_timeout": release_timeout_from_env(),
            ENV_HANG_TIMEOUT: os.environ.get(ENV_HANG_TIMEOUT),
            "hang_timeout": hang_timeout_from_env(),
            "problems": environment_problems(),
            "spark_home": str(spark_home) if spark_home else None,
            "java": java_available(),
        },
        "python": {
            "version": sys.version.split()[0],
            "executable": sys.executable,
            "grpc_fork_hazard": grpc_fork_hazard(),
        },
        "workers": {"engine": engine, "described": described, "problems": problems},
        "hazards": suite_hazards(
            pyspark_version=status.get("pyspark_version"),
            pandas_version=_installed_version("pandas"),
            pyarrow_version=_installed_version("pyarrow"),
            pyspark_warns_pandas3=_pyspark_warns_pandas3(),
        ),
        "pyspark_safestop": __version__,
        "probe_error": probe_error,
    }


def _installed_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except (metadata.PackageNotFoundError, ValueError):
        return None


#: What pyspark says (and warns) where it does not support pandas 3 yet.
_PANDAS3_WARNING = "does not yet fully support pandas >= 3"


def _pyspark_warns_pandas3() -> bool:
    for folder in _layouts.pyspark_package_dirs():
        try:
            text = (Path(folder) / "sql" / "pandas" / "utils.py").read_text(errors="replace")
        except OSError:
            continue
        if _PANDAS3_WARNING in text:
            return True
    return False


def _major_minor(version: str | None) -> tuple[int, int] | None:
    numbers = [int(part) for part in (version or "").split(".")[:2] if part.isdigit()]
    return (numbers[0], numbers[1]) if len(numbers) == 2 else None


def suite_hazards(
    *,
    pyspark_version: str | None,
    pandas_version: str | None,
    pyarrow_version: str | None,
    pyspark_warns_pandas3: bool,
) -> list[str]:
    """Installed combinations known to break PySpark suites, as sentences; a pure function.

    pandas 3 beside a pyspark that says it does not support it (or predates it: before 4.3),
    and no pandas or pyarrow, which pandas UDFs, ``toPandas()`` and ``createDataFrame`` of a
    pandas frame need.
    """
    if pyspark_version is None:
        return []
    found = []
    pandas = _major_minor(pandas_version)
    pyspark = _major_minor(pyspark_version)
    unsupported = pyspark_warns_pandas3 or (pyspark is not None and pyspark < (4, 3))
    if pandas is not None and pandas >= (3, 0) and unsupported:
        found.append(
            f"pandas {pandas_version} with pyspark {pyspark_version}, which does not "
            "support pandas 3: pyspark warns, pyspark.testing.assertDataFrameEqual fails "
            "to import, conversions may differ; install 'pandas<3'"
        )
    for name, version in (("pandas", pandas_version), ("pyarrow", pyarrow_version)):
        if version is None:
            found.append(
                f"no {name}: pandas UDFs, mapInArrow, toPandas() and createDataFrame(pandas) "
                f"need it (pip install {name})"
            )
    return found


def grpc_fork_hazard(
    version: tuple[int, int] = sys.version_info[:2], env: Mapping[str, str] = os.environ
) -> bool:
    """Whether gRPC's fork handlers run when this Python starts a subprocess: 3.9's subprocess
    forks (3.10+ uses vfork), and while gRPC is busy they can abort or hang the child before
    it runs its command, unless ``GRPC_ENABLE_FORK_SUPPORT`` turns them off."""
    return version < (3, 10) and env.get(GRPC_FORK_ENV, "").strip().lower() not in ("0", "false")


# -- text ---------------------------------------------------------------------------------------


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _watchdog(settings: dict[str, Any]) -> str:
    hang = settings.get("hang_timeout")
    return "watchdog off" if hang is None else f"watchdog {hang:g} s"


#: Clients that send a token only over TLS; the project's local servers want it over loopback.
_TOKEN_OVER_TLS_ONLY = (
    "this client sends a token only over TLS (3.5, Databricks Connect 16.1): remote(url) "
    "cannot reach serve's or the fixtures' servers; use the fixtures or "
    "pyspark_safestop.connect_session(url)"
)


_GRPC_FORK_HAZARD = (
    "on Python 3.9, a subprocess started while gRPC is busy can abort or hang before it runs "
    f"(gRPC's fork handlers); set {GRPC_FORK_ENV}=0 for test runs"
)


def render(report: dict[str, Any]) -> str:
    """The report as text for a person."""
    pyspark = report["pyspark"]
    shim = report["shim"]
    settings = report["settings"]
    activation = report["activation"]
    others = [
        f"{name} {version}"
        for name, version in pyspark["distributions"].items()
        if f"{name} {version}" != pyspark["distribution"]
    ]
    if pyspark["version"] is None:
        spark = "not installed"
    else:
        source = pyspark["distribution"] or "no installed distribution"
        if others:
            source += f"; also claimed by {', '.join(others)}, overwritten"
        spark = f"{pyspark['version']} (from {source})"
    layout = pyspark["layout"] or pyspark["layout_problem"] or "-"
    if pyspark["connect_error"]:
        layout += f" (Spark Connect client not importable: {pyspark['connect_error']})"
    bug = {True: "present", False: "absent", None: "not known"}[report["bug"]]
    if report["problem"]:
        bug += f": {report['problem']}"
    active = {
        "everywhere": "active in every interpreter (site-wide .pth)",
        "pytest": "active under pytest only (plugin)",
        "no": "NOT active",
    }[shim["active"]]
    if shim["activated_by"]:
        active += f"; activated by {shim['activated_by']}, {len(shim['patches'])} patches"
    timeout = settings["release_timeout"]
    rows = [
        ("pyspark-safestop", report["pyspark_safestop"]),
        ("python", f"{report['python']['version']} ({report['python']['executable']})"),
        ("pyspark", spark),
        ("client layout", layout),
        ("the hang", bug),
        ("shim", active),
        (".pth", activation["pth"]["state"]),
        (".start (3.15+)", activation["start_file"] or "not installed"),
        ("pytest plugin", activation["pytest_plugin"]["state"]),
        ("import", activation["import"]),
        (ENV_ENABLED, f"{settings[ENV_ENABLED]!r} -> {'on' if settings['enabled'] else 'OFF'}"),
        (ENV_RELEASE_TIMEOUT, f"{settings[ENV_RELEASE_TIMEOUT]!r} -> {timeout:g} s"),
        (ENV_HANG_TIMEOUT, f"{settings.get(ENV_HANG_TIMEOUT)!r} -> {_watchdog(settings)}"),
        ("server jars", settings["spark_home"] or "none found (serve and the fixtures need them)"),
        ("java", _yes(settings["java"])),
    ]
    rows += [("bad setting", problem) for problem in settings.get("problems", [])]
    if pyspark.get("token_needs_channel_builder"):
        rows.append(("local servers", _TOKEN_OVER_TLS_ONLY))
    if report["python"].get("grpc_fork_hazard"):
        rows.append(("subprocesses", _GRPC_FORK_HAZARD))
    workers = report.get("workers") or {}
    if workers:
        name = f"python workers ({workers['engine']})"
        rows.append((name, workers["described"]))
        rows += [(name, f"WARNING: {problem}") for problem in workers["problems"]]
    rows += [("suites", f"WARNING: {hazard}") for hazard in report.get("hazards", [])]
    warm = report.get("warm_servers") or ["none (see `pyspark-safestop servers`)"]
    rows += [("warm servers", line) for line in warm]
    width = max(len(name) for name, _ in rows)
    lines = [f"{name.ljust(width)}  {value}" for name, value in rows]
    lines.append("")
    lines.append(f"{'OK' if report['ok'] else 'PROBLEM'}: {report['summary']}")
    return "\n".join(lines)
