"""pyspark_safestop.ports: the lease directory, where it is and which ones are refused.

A squatter is a folder owned by ``nobody`` at the path we would use (``os.chown``, as root);
a folder others can write stands for one another user could have prepared.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import pytest

from pyspark_safestop import ports
from pyspark_safestop._settings import SafestopWarning
from pyspark_safestop.ports import (
    LeaseDirectoryError,
    allocate_free_port,
    lease_directory,
    leased_port,
)

pytestmark = [pytest.mark.usefixtures("private_port_leases"), pytest.mark.pure]


@pytest.fixture
def lease_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private lease directory, so a test can inspect and break it without side effects."""
    path = tmp_path / "leases"
    monkeypatch.setenv(ports.ENV_LEASE_DIR, str(path))
    return path


#: The uid of ``nobody``: what a squatter on a shared machine looks like.
NOBODY = 65534


def _squat(path: Path, mode: int = 0o755) -> None:
    """Create ``path`` owned by ``nobody``, as another user would before we get there."""
    if os.geteuid() != 0:
        pytest.skip("creating a directory owned by another user needs root")
    path.mkdir(mode=mode)
    os.chown(path, NOBODY, NOBODY)


@pytest.fixture
def default_location(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No lease directory setting and no ``XDG_RUNTIME_DIR``; a private temporary folder."""
    monkeypatch.delenv(ports.ENV_LEASE_DIR)
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    temp = tmp_path / "tmp"
    temp.mkdir()
    temp.chmod(0o1777)  # like /tmp: world-writable and sticky
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    return temp


def _assert_private(*paths: Path) -> None:
    for path in paths:
        info = path.lstat()
        assert info.st_uid == os.getuid()
        assert info.st_mode & 0o777 == 0o700


def test_default_lease_directory_in_the_temporary_folder(default_location: Path) -> None:
    expected = default_location / f"pyspark-safestop-{os.getuid()}" / "ports"
    assert lease_directory() == expected
    _assert_private(expected, expected.parent)
    with leased_port() as port:
        assert (expected / f"{port}.lock").exists()


@pytest.fixture
def runtime_dir(default_location: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private ``XDG_RUNTIME_DIR``, as a login session provides (``/run/user/<uid>``)."""
    runtime = tmp_path / "run-user"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    return runtime


def test_default_lease_directory_prefers_a_private_runtime_dir(runtime_dir: Path) -> None:
    expected = runtime_dir / "pyspark-safestop" / "ports"
    assert lease_directory() == expected
    _assert_private(expected, expected.parent)


@pytest.mark.parametrize("problem", ["open", "foreign", "relative", "missing"])
def test_an_unusable_runtime_dir_is_passed_over(
    default_location: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, problem: str
) -> None:
    runtime = tmp_path / "run-user"
    if problem == "open":
        runtime.mkdir()
        runtime.chmod(0o755)
    elif problem == "foreign":
        _squat(runtime, 0o700)
    elif problem == "relative":
        runtime = Path("run-user")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    expected = default_location / f"pyspark-safestop-{os.getuid()}" / "ports"
    assert lease_directory() == expected


def test_a_relative_lease_directory_setting_warns_once_and_is_ignored(
    default_location: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ports.ENV_LEASE_DIR, "relative/leases")
    expected = default_location / f"pyspark-safestop-{os.getuid()}" / "ports"
    with pytest.warns(SafestopWarning, match=ports.ENV_LEASE_DIR):
        assert lease_directory() == expected
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert lease_directory() == expected


def _assert_refused(path: Path, *words: str) -> None:
    with pytest.raises(LeaseDirectoryError) as info:
        allocate_free_port()
    message = str(info.value)
    assert isinstance(info.value, PermissionError)
    assert str(path) in message
    assert ports.ENV_LEASE_DIR in message  # how to pick another one
    for word in words:
        assert word in message


def test_squatted_default_directory_is_refused(default_location: Path) -> None:
    squatted = default_location / f"pyspark-safestop-{os.getuid()}"
    _squat(squatted)
    _assert_refused(squatted, f"uid {NOBODY}")


def test_squatted_directory_in_the_runtime_dir_is_refused(runtime_dir: Path) -> None:
    _squat(runtime_dir / "pyspark-safestop")
    _assert_refused(runtime_dir / "pyspark-safestop", f"uid {NOBODY}")


def test_lease_directory_of_another_user_is_refused(lease_dir: Path) -> None:
    _squat(lease_dir, 0o700)
    _assert_refused(lease_dir, f"uid {NOBODY}")


@pytest.mark.parametrize("mode", [0o770, 0o707, 0o1777])
def test_lease_directory_writable_by_others_is_refused(lease_dir: Path, mode: int) -> None:
    lease_dir.mkdir()
    lease_dir.chmod(mode)
    _assert_refused(lease_dir, "writable by others")
    assert lease_dir.stat().st_mode & 0o7777 == mode  # refused, not silently repaired


def test_lease_directory_readable_by_others_is_tightened(lease_dir: Path) -> None:
    assert lease_directory() == lease_dir
    _assert_private(lease_dir)
    lease_dir.chmod(0o755)
    lease_directory()
    _assert_private(lease_dir)


def test_lease_directory_symlink_is_refused(lease_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    lease_dir.symlink_to(tmp_path / "elsewhere")
    _assert_refused(lease_dir, "symlink")


def _lease_dir_in(folder: Path, mode: int, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Make ``folder`` with ``mode`` and point the lease directory setting into it."""
    folder.mkdir()
    folder.chmod(mode)
    leases = folder / "leases"
    monkeypatch.setenv(ports.ENV_LEASE_DIR, str(leases))
    return leases


@pytest.mark.parametrize("mode", [0o777, 0o775])
def test_lease_directory_in_a_folder_writable_by_others_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: int
) -> None:
    # Not sticky: anyone could rename our directory and put theirs in its place.
    leases = _lease_dir_in(tmp_path / "shared", mode, monkeypatch)
    _assert_refused(leases, str(leases.parent), "not sticky")


def test_lease_directory_in_a_sticky_shared_folder_is_accepted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    leases = _lease_dir_in(tmp_path / "shared", 0o1777, monkeypatch)
    assert lease_directory() == leases
    _assert_private(leases)


def test_lease_directory_in_a_folder_of_another_user_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    theirs = tmp_path / "theirs"
    _squat(theirs)
    monkeypatch.setenv(ports.ENV_LEASE_DIR, str(theirs / "leases"))
    _assert_refused(theirs / "leases", str(theirs), f"uid {NOBODY}")
