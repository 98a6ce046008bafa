"""The site-wide start-up files: what the ``.pth`` line costs, arms and activates.

Each case runs in a fresh interpreter started with ``-S`` (no site-packages, no ``.pth`` of the
environment), which then processes a folder holding the wheel's three start-up files the way
``site`` processes site-packages (``site.addsitedir``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pyspark_safestop.client import _layouts
from tests.bootsite import BOOT_DIR, HEAVY, load_boot, run

boot = load_boot()

# -- in step with the package -------------------------------------------------------------------


@pytest.mark.pure
def test_watches_the_modules_the_package_patches() -> None:
    assert frozenset(_layouts.WATCHED_MODULES) == boot.WATCHED_MODULES


@pytest.mark.pure
def test_start_file_names_the_boot_function() -> None:
    entries = [
        line.strip()
        for line in (BOOT_DIR / "pyspark_safestop.start").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert entries == ["_pyspark_safestop_boot:boot"]


@pytest.mark.pure
def test_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_thing"):
        _ = boot.no_such_thing  # type: ignore[attr-defined]


# -- start-up -----------------------------------------------------------------------------------


@pytest.mark.pure
def test_pth_arms_the_hook_and_imports_nothing_heavy(site_dir: Path) -> None:
    result = run(
        site_dir,
        """
        process_site()
        report(state=boot_state(), finders=finders(), new=sorted(set(sys.modules) - BEFORE))
        """,
    )
    assert result["state"] == "armed"
    assert result["finders"] == 1
    assert "_pyspark_safestop_boot" in result["new"]
    assert not [m for m in result["new"] if m.startswith(HEAVY)], result["new"]
    assert result["stderr"] == ""


@pytest.mark.pure
def test_pth_processed_twice_arms_once(site_dir: Path) -> None:
    result = run(
        site_dir,
        """
        process_site(); process_site()
        import _pyspark_safestop_boot as b; b.boot()  # what a .start entry point would add
        report(state=boot_state(), finders=finders())
        """,
    )
    assert (result["state"], result["finders"]) == ("armed", 1)


@pytest.mark.pure
@pytest.mark.parametrize("value", ["0", "off", "False"])
def test_switch_off_leaves_no_hook(site_dir: Path, value: str) -> None:
    result = run(
        site_dir,
        "process_site()\nreport(state=boot_state(), finders=finders())\n",
        env={"PYSPARK_SAFESTOP": value},
    )
    assert (result["state"], result["finders"]) == ("disabled", 0)


@pytest.mark.pure
def test_missing_boot_module_costs_one_line(site_dir: Path) -> None:
    # A half-removed install: the .pth is left without its module. Every interpreter of the
    # environment (pip's too) processes it, so a traceback there would be everywhere.
    (site_dir / "_pyspark_safestop_boot.py").unlink()
    result = run(site_dir, "process_site()\nreport(state=boot_state())\n")
    assert result["state"] is None
    lines = result["stderr"].splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("pyspark-safestop: not activated (ModuleNotFoundError: ")
    assert lines[0].endswith(f"delete {site_dir / 'pyspark_safestop.pth'}")


@pytest.mark.pure
def test_missing_boot_module_is_reported_once_per_interpreter(site_dir: Path) -> None:
    # Python 3.11's site processes a virtual environment's site-packages twice.
    (site_dir / "_pyspark_safestop_boot.py").unlink()
    result = run(site_dir, "process_site(); process_site()\nreport(state=boot_state())\n")
    assert len(result["stderr"].splitlines()) == 1, result["stderr"]


@pytest.mark.pure
def test_error_in_boot_is_one_line_once(site_dir: Path) -> None:
    result = run(
        site_dir,
        """
        sys.meta_path = tuple(sys.meta_path)  # an interpreter set up oddly: insert() fails
        process_site()
        import _pyspark_safestop_boot as b; b.boot(); b._report(RuntimeError("again"))
        sys.meta_path = list(sys.meta_path)
        report(state=boot_state())
        """,
    )
    assert result["state"] == "failed"
    lines = result["stderr"].splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("pyspark-safestop: not activated (AttributeError: ")


# -- activation ---------------------------------------------------------------------------------


def test_importing_pyspark_activates_the_shim_through_the_pth(
    site_dir: Path, client_layout: str
) -> None:
    result = run(
        site_dir,
        """
        process_site(); with_pyspark()
        before = "pyspark_safestop" in sys.modules
        from pyspark.sql.connect.session import SparkSession
        import pyspark_safestop
        status = pyspark_safestop.status()
        report(before=before, state=boot_state(), activated_by=status["activated_by"],
               layout=status["layout"], patches=status["patches"])
        """,
    )
    assert result["before"] is False
    assert result["state"] == "fired"
    assert result["activated_by"] == "pth"
    assert result["layout"] == client_layout
    expected = {str(target) for target in _layouts.LAYOUTS[0].targets}
    assert expected <= set(result["patches"])  # SparkSession.__init__/stop, client close


# `-W error`, except for the DeprecationWarnings some client lines raise at their own import.
WARNINGS_AS_ERRORS = ("-W", "error", "-W", "ignore::DeprecationWarning")


@pytest.mark.parametrize(
    ("name", "value"), [("PYSPARK_SAFESTOP", "maybe"), ("PYSPARK_SAFESTOP_RELEASE_TIMEOUT", "nan")]
)
def test_warnings_as_errors_and_a_bad_value_still_activate(
    site_dir: Path, client_layout: str, name: str, value: str
) -> None:
    # The warning about the bad value cannot be shown (it would raise): the log says it.
    result = run(
        site_dir,
        """
        import logging; logging.basicConfig(format="log: %(message)s")
        process_site(); with_pyspark()
        from pyspark.sql.connect.session import SparkSession
        import pyspark_safestop
        status = pyspark_safestop.status()
        report(state=boot_state(), activated_by=status["activated_by"], layout=status["layout"],
               timeout=status["settings"]["release_timeout"])
        """,
        env={name: value},
        flags=WARNINGS_AS_ERRORS,
    )
    assert (result["state"], result["activated_by"]) == ("fired", "pth"), result["stderr"]
    assert (result["layout"], result["timeout"]) == (client_layout, 5.0)
    assert f"log: {name}={value!r}" in result["stderr"]
