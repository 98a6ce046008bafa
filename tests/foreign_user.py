"""Running a command as another local user (``nobody``), as an attacker on a shared machine would.

What that user must execute usually sits where it cannot go: the interpreter under a 0700
``/root`` (pyenv), the test environment's site-packages and the checkout in a 0700 folder
(a clone under ``/root``, a ``mkdtemp``). Nothing real is relaxed for it. Small things (the
package, a script) are copied into a world-readable staging folder; the interpreter and the
site-packages, too big to copy, are bind-mounted read-only into that folder inside a private
mount namespace (``unshare --mount``) that exists only for the command; then ``setpriv`` drops to
the other user. Outside the namespace nothing changes, and the staging folder is removed at the
end.

Needs root, ``unshare`` and ``setpriv``; otherwise the test is skipped with the reason.
"""

from __future__ import annotations

import os
import pwd
import shlex
import shutil
import site
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

__all__ = ["OTHER_USER", "ForeignUser", "foreign_user"]

OTHER_USER = "nobody"
REPO = Path(__file__).resolve().parent.parent
#: Seconds allowed for the probe that checks the set-up works.
_PROBE_TIMEOUT = 60.0

_READABLE_DIR = 0o755
_READABLE_FILE = 0o644


@dataclass
class ForeignUser:
    """Another local user, able to run this environment's Python on copies of our files."""

    name: str
    uid: int
    gid: int
    #: World-readable folder holding the copies and the mount points.
    stage: Path
    _mounts: list[tuple[Path, Path]] = field(default_factory=list)

    @property
    def python(self) -> str:
        """This environment's interpreter, as the other user sees it."""
        real = Path(os.path.realpath(sys.executable))
        base = Path(os.path.realpath(sys.base_prefix))
        return str(self._expose(base, "python") / real.relative_to(base))

    def copy(self, source: Path, name: str | None = None) -> Path:
        """Copy a file or folder into the stage, readable by everyone; return the copy's path."""
        target = self.stage / (name or source.name)
        if source.is_dir():
            shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, target)
        _make_readable(target)
        return target

    def package(self) -> Path:
        """A readable copy of ``pyspark_safestop`` (once); return the folder to put on the path."""
        folder = self.stage / "code"
        if not folder.exists():
            folder.mkdir()
            shutil.copytree(
                REPO / "pyspark_safestop",
                folder / "pyspark_safestop",
                ignore=shutil.ignore_patterns("__pycache__"),
            )
            _make_readable(folder)
        return folder

    def env(
        self, base: Mapping[str, str] | None = None, *, path: Sequence[Path] = ()
    ) -> dict[str, str]:
        """An environment for the other user: this environment's site-packages and ``path``
        importable, the interpreter's own libraries found, nothing of ours inherited blindly."""
        env = dict(os.environ if base is None else base)
        sites = [
            self._expose(Path(os.path.realpath(folder)), f"site{index}")
            for index, folder in enumerate(site.getsitepackages())
            if Path(folder).is_dir()
        ]
        env["PYTHONPATH"] = os.pathsep.join(str(p) for p in [*path, *sites])
        python_home = self._expose(Path(os.path.realpath(sys.base_prefix)), "python")
        env["LD_LIBRARY_PATH"] = str(python_home / "lib")
        env["HOME"] = str(self._home())
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env.pop("PYTHONHOME", None)
        return env

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run as the other user, in a namespace where the exposed folders exist."""
        unshare = shutil.which("unshare")
        setpriv = shutil.which("setpriv")
        if unshare is None or setpriv is None:
            pytest.skip("running as another user needs unshare and setpriv (util-linux)")
        steps = [
            f"mount --bind {shlex.quote(str(src))} {shlex.quote(str(dst))} && "
            f"mount -o remount,bind,ro {shlex.quote(str(dst))}"
            for src, dst in self._mounts
        ]
        steps.append(f"cd {shlex.quote(str(self.stage))}")
        steps.append(
            f"exec {shlex.quote(setpriv)} --reuid={self.uid} --regid={self.gid} "
            '--clear-groups -- "$@"'
        )
        script = " && ".join(steps)
        return [unshare, "--mount", "--propagation", "private", "--", "sh", "-c", script, "sh"] + [
            str(arg) for arg in argv
        ]

    def run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        timeout: float = _PROBE_TIMEOUT,
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` as the other user and return what it printed."""
        return subprocess.run(
            self.command(argv),
            env=dict(env) if env is not None else self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def _expose(self, source: Path, name: str) -> Path:
        for src, dst in self._mounts:
            if src == source:
                return dst
        target = self.stage / "mnt" / name
        target.mkdir(parents=True, exist_ok=True)
        _make_readable(self.stage / "mnt")
        self._mounts.append((source, target))
        return target

    def _home(self) -> Path:
        home = self.stage / "home"
        if not home.exists():
            home.mkdir(mode=0o700)
            os.chown(home, self.uid, self.gid)
        return home


def _make_readable(path: Path) -> None:
    # Our own copies only: directories enterable, files readable (and executable if they were).
    paths = [path, *path.rglob("*")] if path.is_dir() else [path]
    for item in paths:
        mode = item.lstat().st_mode
        if stat.S_ISLNK(mode):
            continue
        if stat.S_ISDIR(mode):
            item.chmod(_READABLE_DIR)
        else:
            item.chmod(_READABLE_FILE | (0o111 if mode & stat.S_IXUSR else 0))


@contextmanager
def _foreign_user() -> Iterator[ForeignUser]:
    if os.geteuid() != 0:
        pytest.skip("acting as another user needs root")
    try:
        entry = pwd.getpwnam(OTHER_USER)
    except KeyError:
        pytest.skip(f"no {OTHER_USER!r} user on this system")
    stage = Path(tempfile.mkdtemp(prefix="safestop-foreign-"))
    try:
        stage.chmod(_READABLE_DIR)
        user = ForeignUser(OTHER_USER, entry.pw_uid, entry.pw_gid, stage)
        probe = user.run([user.python, "-c", "import os; print(os.getuid())"])
        if probe.stdout.strip() != str(entry.pw_uid):
            pytest.skip(
                f"cannot run Python as {OTHER_USER} here (a mount namespace and setpriv are "
                f"needed): {probe.stderr.strip()[-500:]}"
            )
        yield user
    finally:
        shutil.rmtree(stage, ignore_errors=True)


@pytest.fixture(scope="session")
def foreign_user() -> Iterator[ForeignUser]:
    """Another local user (``nobody``) able to run this environment's Python on our copies."""
    with _foreign_user() as user:
        yield user
