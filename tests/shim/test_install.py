"""install()/uninstall() in every order, without a server.

Each case runs in an interpreter of its own (forked from one that imported only the client's
heavy dependencies): whether pyspark's modules were imported before or after the shim is the
point, and a test process can only import them once.
"""

from __future__ import annotations

import itertools
import json
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pyspark_safestop.testing.preloaded import HEAVY, Preloaded
from tests.children import clean_env, last_json, run_preloaded, run_python

pytest.importorskip("pyspark")
pytest.importorskip("grpc")

# Shared by every script: originals captured before the shim can touch anything, and a
# check that walks each attribute's wrapper chain (no attribute may carry two of ours).
PRELUDE = """
import json, sys, threading
from pyspark_safestop.client._layouts import LAYOUTS
# Every attribute any line patches (derived from the layout table); absent ones are skipped.
TARGETS = sorted({(t.module, t.cls, t.attribute) for layout in LAYOUTS for t in layout.targets})

def attrs():
    out = {}
    for module, cls, attr in TARGETS:
        mod = sys.modules.get(module)
        owner = getattr(mod, cls, None) if mod else None
        if owner is not None and attr in vars(owner):
            out[f"{cls}.{attr}"] = vars(owner)[attr]
    return out

def safestop_layers(value):
    from pyspark_safestop.shim._patcher import SafestopWrapper
    layers = 0
    while value is not None:
        layers += isinstance(value, SafestopWrapper)
        value = getattr(value, "__wrapped__", None)
    return layers

def report(**extra):
    import pyspark_safestop
    current = attrs()
    print(json.dumps({
        "layers": {k: safestop_layers(v) for k, v in current.items()},
        "restored": {k: current.get(k) is v for k, v in ORIGINALS.items()},
        "patches": pyspark_safestop.status()["patches"],
        "installed": pyspark_safestop.is_installed(),
        **extra,
    }))

def import_connect():
    import pyspark.sql.connect.session  # noqa

ORIGINALS = {}
"""


@pytest.fixture(scope="module")
def preloaded() -> Iterator[Preloaded]:
    """One interpreter that has imported the client's heavy dependencies (never pyspark or the
    package), forking the scripts' interpreters."""
    with Preloaded(env=clean_env()) as preloaded:
        yield preloaded


def run_script(preloaded: Preloaded, tmp_path: Path, body: str, **env: str) -> dict[str, Any]:
    """Run PRELUDE + body in an interpreter of ``preloaded``; return the JSON it printed last."""
    script = tmp_path / "case.py"
    # A file, not `python -c`: pyspark-client 4.2's dependency check mistakes -c for doctest.
    script.write_text(PRELUDE + textwrap.dedent(body))
    return last_json(run_preloaded(preloaded, script, env=clean_env(**env), timeout=120))


def assert_patched_once(result: dict[str, Any]) -> None:
    assert result["installed"]
    assert result["patches"], result
    assert all(n == 1 for n in result["layers"].values()), result["layers"]


def assert_pristine(result: dict[str, Any]) -> None:
    assert not result["patches"], result
    assert all(n == 0 for n in result["layers"].values()), result["layers"]
    assert all(result["restored"].values()), result["restored"]


# -- every order of import / install / uninstall, generated ----------------------------------------

#: Steps: import pyspark's Spark Connect client ("connect"), import the package (which activates
#: the shim: "shim"), install(), uninstall(). The package is imported once, and the client once.
STEPS_AFTER_SHIM = ("install", "uninstall")
MAX_EXTRA_STEPS = 2


def _sequences() -> list[tuple[str, ...]]:
    found: list[tuple[str, ...]] = []
    for count in range(MAX_EXTRA_STEPS + 1):
        for extra in itertools.product(STEPS_AFTER_SHIM, repeat=count):
            base = ("shim", *extra)
            for at in range(len(base) + 1):
                found.append((*base[:at], "connect", *base[at:]))
    return found


SEQUENCES = _sequences()

# One interpreter imports the heavy dependencies once. The sequences are then walked as a tree
# of their common prefixes: each step runs in a child forked from the process that ran the steps
# before it, so that every sequence is one chain of processes that took exactly its steps, in
# its order, and pyspark's client is imported once per distinct prefix ending in "connect"
# rather than once per sequence.
DRIVER = """
import json, os, sys
for heavy in json.loads(sys.argv[1]):
    try:
        __import__(heavy)
    except ImportError:
        pass

def layers(value):
    from pyspark_safestop.shim._patcher import SafestopWrapper
    count = 0
    while value is not None:
        count += isinstance(value, SafestopWrapper)
        value = getattr(value, "__wrapped__", None)
    return count

def innermost(value):
    while getattr(value, "__wrapped__", None) is not None:
        value = value.__wrapped__
    return value

def step(name, originals, seen):
    if name == "connect":
        import pyspark.sql.connect.session  # noqa: F401
        from pyspark_safestop.client import _layouts
        layout = _layouts.detect_loaded()[0]
        for target in layout.targets:
            owner = getattr(sys.modules[target.module], target.cls)
            originals[str(target)] = innermost(vars(owner)[target.attribute])
    elif name == "shim":
        seen["pyspark_before_shim"] = "pyspark" in sys.modules
        import pyspark_safestop  # noqa: F401
        seen["pyspark_imported_by_shim"] = (
            "pyspark" in sys.modules and not seen["pyspark_before_shim"]
        )
    else:
        getattr(sys.modules["pyspark_safestop"], name)()

def report(sequence, originals, seen):
    import pyspark_safestop
    from pyspark_safestop.client import _layouts
    layout = _layouts.detect_loaded()[0]
    attributes = {}
    for target in layout.targets:
        value = vars(getattr(sys.modules[target.module], target.cls))[target.attribute]
        attributes[str(target)] = {
            "layers": layers(value),
            "original": value is originals[str(target)],
        }
    return {
        "sequence": list(sequence),
        "installed": pyspark_safestop.is_installed(),
        "patches": pyspark_safestop.status()["patches"],
        "targets": [str(target) for target in layout.targets],
        "attributes": attributes,
        **seen,
    }

def in_child(work):
    # work() runs in a forked child, which then exits; the parent waits for it.
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            work()
        except BaseException:
            code = 1
        sys.stdout.flush()
        os._exit(code)
    os.waitpid(pid, 0)

def walk(done, sequences, originals, seen):
    # done: the steps this process has taken; sequences: those that start with them.
    for sequence in sequences:
        if len(sequence) == len(done):
            def reported(sequence=sequence):
                try:
                    result = report(sequence, originals, seen)
                except BaseException as error:
                    result = {"sequence": sequence, "error": repr(error)}
                print(json.dumps(result), flush=True)
            in_child(reported)
    following = {}
    for sequence in sequences:
        if len(sequence) > len(done):
            following.setdefault(sequence[len(done)], []).append(sequence)
    for name, group in following.items():
        def branch(name=name, group=group):
            try:
                step(name, originals, seen)
            except BaseException as error:
                for sequence in group:
                    print(json.dumps({"sequence": sequence, "error": repr(error)}), flush=True)
                return
            walk(done + [name], group, originals, seen)
        in_child(branch)

walk([], [json.loads(line) for line in sys.stdin], {}, {})
"""


@pytest.fixture(scope="module")
def sequence_results(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, ...], Any]:
    """What every sequence left behind, from one driver interpreter."""
    script = tmp_path_factory.mktemp("sequences") / "driver.py"
    script.write_text(DRIVER)
    sequences = "".join(json.dumps(seq) + "\n" for seq in SEQUENCES)
    proc = run_python(script, json.dumps(HEAVY), input=sequences, env=clean_env(), timeout=600)
    assert proc.returncode == 0, proc.stderr
    results = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    return {tuple(result["sequence"]): result for result in results}


def _expected_installed(sequence: tuple[str, ...]) -> bool:
    installed = False
    for step in sequence:
        if step in ("shim", "install"):
            installed = True
        elif step == "uninstall":
            installed = False
    return installed


@pytest.mark.parametrize("sequence", SEQUENCES, ids="-".join)
def test_every_order_patches_once_or_restores_exactly(
    sequence: tuple[str, ...], sequence_results: dict[tuple[str, ...], Any]
) -> None:
    result = sequence_results.get(sequence)
    assert result is not None, f"the driver reported nothing for {sequence}"
    assert "error" not in result, result
    # Importing the package never imports pyspark.
    assert result["pyspark_imported_by_shim"] is False
    # The targets come from the layout table, not from a list typed out here.
    assert result["targets"], result
    if _expected_installed(sequence):
        assert result["installed"]
        assert sorted(result["patches"]) == sorted(result["targets"])
        assert all(a["layers"] == 1 for a in result["attributes"].values()), result
    else:
        assert not result["installed"]
        assert result["patches"] == []
        assert all(a["layers"] == 0 for a in result["attributes"].values()), result
        assert all(a["original"] for a in result["attributes"].values()), result


def test_install_twice_updates_the_settings_only(tmp_path: Path, preloaded: Preloaded) -> None:
    result = run_script(
        preloaded,
        tmp_path,
        """
        import pyspark_safestop
        pyspark_safestop.install(); import_connect()
        pyspark_safestop.install(); pyspark_safestop.install(release_timeout=2)
        report(timeout=pyspark_safestop.status()["settings"]["release_timeout"])
        """,
    )
    assert_patched_once(result)
    assert result["timeout"] == 2


def test_shim_before_pyspark_waits_for_the_import(tmp_path: Path, preloaded: Preloaded) -> None:
    result = run_script(
        preloaded,
        tmp_path,
        """
        import pyspark_safestop
        pending = pyspark_safestop.status()
        import_connect()
        report(pending=pending["patches"], problem=pending["layout_problem"])
        """,
    )
    assert result["pending"] == []
    assert result["problem"] == "not-imported"
    assert_patched_once(result)


def test_uninstall_install_cycles(tmp_path: Path, preloaded: Preloaded) -> None:
    result = run_script(
        preloaded,
        tmp_path,
        """
        import_connect(); ORIGINALS.update(attrs())
        import pyspark_safestop
        for _ in range(5):
            pyspark_safestop.uninstall(); pyspark_safestop.install()
        report()
        """,
    )
    assert_patched_once(result)


def test_concurrent_install_uninstall(tmp_path: Path, preloaded: Preloaded) -> None:
    result = run_script(
        preloaded,
        tmp_path,
        """
        import_connect(); ORIGINALS.update(attrs())
        import pyspark_safestop
        def churn():
            for _ in range(200):
                pyspark_safestop.install(); pyspark_safestop.uninstall()
        threads = [threading.Thread(target=churn) for _ in range(8)]
        [t.start() for t in threads]; [t.join() for t in threads]
        pyspark_safestop.install()
        report()
        """,
    )
    assert_patched_once(result)


def test_disabled_by_environment(tmp_path: Path, preloaded: Preloaded) -> None:
    result = run_script(
        preloaded,
        tmp_path,
        """
        import_connect(); ORIGINALS.update(attrs())
        import pyspark_safestop
        active = pyspark_safestop.install()
        report(active=active, enabled=pyspark_safestop.status()["enabled"])
        """,
        PYSPARK_SAFESTOP="0",
    )
    assert result["active"] is False
    assert result["enabled"] is False
    assert not result["installed"]
    assert_pristine(result)


def test_third_party_wrapper_on_top_survives_uninstall(
    tmp_path: Path, preloaded: Preloaded
) -> None:
    result = run_script(
        preloaded,
        tmp_path,
        """
        import functools, logging
        logging.basicConfig(level=logging.WARNING)
        import pyspark_safestop
        import_connect()
        from pyspark.sql.connect.session import SparkSession
        ours = vars(SparkSession)["stop"]
        @functools.wraps(ours)
        def theirs(*a, **k):
            return ours(*a, **k)
        SparkSession.stop = theirs
        pyspark_safestop.uninstall()
        report(kept=vars(SparkSession)["stop"] is theirs)
        """,
    )
    assert result["kept"] is True
    assert "SparkSession.stop was replaced after pyspark-safestop patched it" in result["stderr"]


def test_classic_session_untouched(tmp_path: Path, preloaded: Preloaded) -> None:
    result = run_script(
        preloaded,
        tmp_path,
        """
        import pyspark_safestop
        import_connect()
        from pyspark.sql.session import SparkSession as Classic
        report(classic_layers=safestop_layers(vars(Classic)["stop"]))
        """,
    )
    assert result["classic_layers"] == 0


def test_status_describes_the_line(tmp_path: Path, preloaded: Preloaded) -> None:
    result = run_script(
        preloaded,
        tmp_path,
        """
        import pyspark_safestop
        import_connect()
        import pyspark
        report(status=pyspark_safestop.status(), version=pyspark.__version__)
        """,
    )
    status = result["status"]
    assert status["pyspark_version"] == result["version"]
    assert status["layout"] in {"3.5", "4.0", "4.1", "4.2+"}
    assert status["release_session_rpc"] is (status["layout"] != "3.5")
    assert status["settings"] == {
        "release_timeout": 5.0,
        "hang_timeout": None,
        "unreachable_timeout": 30.0,
    }
