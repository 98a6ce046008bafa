"""Bad settings: a clear ValueError from code, one warning and the default from the environment,
and neither ever stops an import, the ``.pth`` hook or pytest, warnings as errors included."""

from __future__ import annotations

import math
import subprocess
import warnings
from pathlib import Path

import pytest

import pyspark_safestop
from pyspark_safestop import _settings
from pyspark_safestop._settings import MAX_TIMEOUT, validate_timeout
from tests.bootsite import load_boot
from tests.children import PLUGIN_ONLY, clean_env, run_python

pytestmark = pytest.mark.pure

MINUS_HUGE = pytest.param(-(10**400), id="-10**400")
TOO_LONG = [
    MAX_TIMEOUT + 0.5,
    int(MAX_TIMEOUT) + 1,
    1e10,
    1e300,
    pytest.param(10**400, id="10**400"),
]


@pytest.mark.parametrize(
    "bad",
    [-1, 0, -0.5, "x", "5", True, math.inf, math.nan, [1], MINUS_HUGE, *TOO_LONG],
)
def test_bad_release_timeout_names_the_parameter(bad: object) -> None:
    with pytest.raises(ValueError, match="release_timeout") as info:
        pyspark_safestop.install(release_timeout=bad)  # type: ignore[arg-type]
    assert repr(bad)[:40] in str(info.value)  # a long one is cut short


@pytest.mark.parametrize("bad", [-1, 0, "x", math.inf, *TOO_LONG])
def test_bad_helper_timeout_names_the_parameter(bad: object) -> None:
    with pytest.raises(ValueError, match="timeout"):
        pyspark_safestop.release_session_without_shutdown(object(), timeout=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("good", [0.001, 1, 2.5, 600, MAX_TIMEOUT, int(MAX_TIMEOUT)])
def test_good_timeouts(good: float) -> None:
    assert validate_timeout(good, "t") == float(good)


def test_maximum_is_named_in_the_error() -> None:
    with pytest.raises(ValueError, match=f"at most {MAX_TIMEOUT:g}"):
        validate_timeout(1e10, "release_timeout")


def test_an_integer_too_long_to_print_is_still_a_value_error() -> None:
    # 10**5000 has more digits than repr() prints by default (it raises ValueError itself).
    with pytest.raises(ValueError, match=r"^t must be a positive number of seconds"):
        validate_timeout(10**5000, "t")


def _clean_env(**env: str) -> dict[str, str]:
    return clean_env(no_warnings=True, **env)


def _interpreter(
    code: str, tmp_path: Path, *, flags: tuple[str, ...] = ("-W", "always"), **env: str
) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "case.py"
    script.write_text(code)
    return run_python(*flags, script, env=_clean_env(**env), timeout=60)


@pytest.mark.parametrize(
    "value", ["abc", "-3", "0", "inf", "nan", "1e10", "86401", "1" + "0" * 400]
)
def test_garbage_timeout_env_warns_once_and_defaults(value: str, tmp_path: Path) -> None:
    proc = _interpreter(
        "import pyspark_safestop as p\n"
        "p.install(); p.install(); p.uninstall(); p.install()\n"
        "print(p.status()['settings']['release_timeout'])\n",
        tmp_path,
        PYSPARK_SAFESTOP_RELEASE_TIMEOUT=value,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "5.0"
    assert proc.stderr.count("PYSPARK_SAFESTOP_RELEASE_TIMEOUT=") == 1, proc.stderr
    assert repr(value) in proc.stderr


def test_timeout_env_is_used(tmp_path: Path) -> None:
    proc = _interpreter(
        "import pyspark_safestop as p\nprint(p.status()['settings']['release_timeout'])\n",
        tmp_path,
        PYSPARK_SAFESTOP_RELEASE_TIMEOUT="1.5",
    )
    assert proc.stdout.strip() == "1.5", proc.stderr


@pytest.mark.parametrize(("value", "installed"), [("0", False), ("off", False), ("1", True)])
def test_switch(value: str, installed: bool, tmp_path: Path) -> None:
    proc = _interpreter(
        "import pyspark_safestop as p\nprint(p.is_installed())\n", tmp_path, PYSPARK_SAFESTOP=value
    )
    assert proc.stdout.strip() == str(installed), proc.stderr


def test_garbage_switch_warns_and_stays_enabled(tmp_path: Path) -> None:
    proc = _interpreter(
        "import pyspark_safestop as p\np.install()\nprint(p.is_installed())\n",
        tmp_path,
        PYSPARK_SAFESTOP="maybe",
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "True"
    assert proc.stderr.count("PYSPARK_SAFESTOP='maybe'") == 1, proc.stderr


def test_import_never_imports_pyspark(tmp_path: Path) -> None:
    proc = _interpreter(
        "import sys, pyspark_safestop as p\np.status()\nprint('pyspark' in sys.modules)\n",
        tmp_path,
    )
    assert proc.stdout.strip() == "False", proc.stderr


def test_helper_refuses_a_non_connect_session() -> None:
    with pytest.raises(TypeError, match="Spark Connect SparkSession, got object"):
        pyspark_safestop.release_session_without_shutdown(object())


# -- the same words everywhere ------------------------------------------------------------------

boot = load_boot()


def _variants(word: str) -> list[str]:
    return [word, word.upper(), word.title(), f"  {word}\t", f"\n{word.upper()} "]


ALL_WORDS = sorted(
    _settings._FALSE_WORDS | _settings._TRUE_WORDS | {"maybe", "2", "-1", "nope", "o n"}
)


def test_boot_and_settings_have_the_same_off_words() -> None:
    assert boot._FALSE_WORDS == _settings._FALSE_WORDS


@pytest.mark.parametrize("value", [None, *(v for word in ALL_WORDS for v in _variants(word))])
def test_boot_reads_the_switch_like_the_settings(
    value: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The .pth hook decides alone whether to arm; the package then decides whether to patch.
    if value is None:
        monkeypatch.delenv(_settings.ENV_ENABLED, raising=False)
    else:
        monkeypatch.setenv(_settings.ENV_ENABLED, value)
    assert boot.ENV_ENABLED == _settings.ENV_ENABLED
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", _settings.SafestopWarning)  # garbage warns, once
        expected = _settings.enabled_from_env()
    assert boot.enabled() is expected


@pytest.mark.parametrize("word", sorted(_settings._FALSE_WORDS))
def test_every_off_word_turns_the_shim_off(word: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_settings.ENV_ENABLED, f" {word.upper()} ")
    assert _settings.enabled_from_env() is False


# -- warnings as errors -------------------------------------------------------------------------

GARBAGE = [("PYSPARK_SAFESTOP", "maybe"), ("PYSPARK_SAFESTOP_RELEASE_TIMEOUT", "nan")]
SCRIPT = """\
import logging
logging.basicConfig(format="log: %(message)s")
import pyspark_safestop as p
print(p.status()["installed"], p.status()["settings"]["release_timeout"])
"""


@pytest.mark.parametrize(("name", "value"), GARBAGE)
@pytest.mark.parametrize("how", ["-W error", "PYTHONWARNINGS=error"])
def test_warnings_as_errors_and_a_bad_value_keep_the_shim(
    name: str, value: str, how: str, tmp_path: Path
) -> None:
    flags, env = ("-W", "error"), {name: value}
    if how.startswith("PYTHONWARNINGS"):
        flags, env = (), {**env, "PYTHONWARNINGS": "error"}
    proc = _interpreter(SCRIPT, tmp_path, flags=flags, **env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "5.0"], proc.stderr
    # The warning would raise: the logger says it instead, once.
    assert proc.stderr.count(f"log: {name}={value!r}") == 1, proc.stderr


def _pytest(
    tmp_path: Path, *args: str, flags: tuple[str, ...] = (), ini: str = "", **env: str
) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_one.py").write_text("def test_one():\n    pass\n")
    (tmp_path / "pytest.ini").write_text(f"[pytest]\n{ini}\n")
    return run_python(
        *flags,
        *("-m", "pytest", *PLUGIN_ONLY, *args),
        env=_clean_env(PYTEST_DISABLE_PLUGIN_AUTOLOAD="1", **env),  # no plugin from entry points
        cwd=tmp_path,
        timeout=120,
    )


@pytest.mark.parametrize(("name", "value"), GARBAGE)
@pytest.mark.parametrize("how", ["-W error", "filterwarnings = error"])
def test_pytest_with_warnings_as_errors_and_a_bad_value_runs_the_tests(
    name: str, value: str, how: str, tmp_path: Path
) -> None:
    if how.startswith("-W"):
        proc = _pytest(tmp_path, flags=("-W", "error"), **{name: value})
    else:
        proc = _pytest(tmp_path, ini="filterwarnings = error", **{name: value})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 passed" in proc.stdout
    # The shim's line (the next one says which server the fixtures use).
    (header,) = [line for line in proc.stdout.splitlines() if "release timeout" in line]
    assert ": active (activated by " in header
    assert f"bad setting: {name}={value!r}" in header


@pytest.mark.parametrize(
    "option",
    ["--safestop-release-timeout", "--safestop-server-start-timeout"],
)
@pytest.mark.parametrize(
    "value", ["1e10", "86401", pytest.param("1" + "0" * 400, id="10**400"), "nan", "0"]
)
def test_pytest_option_beyond_the_maximum_is_a_usage_error(
    option: str, value: str, tmp_path: Path
) -> None:
    proc = _pytest(tmp_path, f"{option}={value}")
    assert proc.returncode == 4, proc.stdout + proc.stderr
    assert f"{option} must be a positive number of seconds, at most 86400" in proc.stderr
    assert repr(value) in proc.stderr
