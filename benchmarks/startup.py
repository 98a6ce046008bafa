"""Start-up cost of the site-wide ``.pth``: ``python -c pass`` with it and without it.

    python benchmarks/startup.py [--python PYTHON] [--runs N] [--check RATIO]

Two virtual environments are made from the same interpreter (``--python``, default: this one),
identical but for ``pyspark_safestop.pth`` and ``_pyspark_safestop_boot.py`` (taken from
``boot/``) in one of them. ``python -c pass`` then runs in each, alternately (ABBA order, so a
drift of the machine's speed hits both alike), and the ratio of the medians is printed. With
``--check``, the exit status is 1 when the ratio is above RATIO. Target: 1.05.

Wall-clock time on a busy machine is noisy; where valgrind is installed, the instructions each
start-up executes are counted too (deterministic: the same on a busy machine as on a quiet one).
"""

from __future__ import annotations

import argparse
import os
import py_compile
import re
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BOOT = REPO / "boot"
FILES = ("pyspark_safestop.pth", "_pyspark_safestop_boot.py")
TARGET = 1.05


def make_venv(python: str, folder: Path) -> tuple[str, Path]:
    """A bare virtual environment (no pip); return its interpreter and site-packages."""
    subprocess.run([python, "-m", "venv", "--without-pip", str(folder)], check=True)
    interpreter = folder / "bin" / "python"
    purelib = subprocess.run(
        [str(interpreter), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return str(interpreter), Path(purelib)


def child_env() -> dict[str, str]:
    """The caller's environment without anything that changes what start-up does."""
    drop = ("PYTHON", "PYSPARK_SAFESTOP", "VIRTUAL_ENV")
    return {k: v for k, v in os.environ.items() if not k.startswith(drop)}


def run_once(python: str, env: dict[str, str]) -> float:
    started = time.perf_counter()
    subprocess.run([python, "-c", "pass"], env=env, check=True)
    return time.perf_counter() - started


def boot_import_time(python: str, env: dict[str, str]) -> str:
    """The ``-X importtime`` line of the boot module (self and cumulative microseconds)."""
    proc = subprocess.run(
        [python, "-X", "importtime", "-c", "pass"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    lines = [line for line in proc.stderr.splitlines() if "_pyspark_safestop_boot" in line]
    return lines[-1].strip() if lines else "(not imported)"


def instructions(python: str, env: dict[str, str]) -> int | None:
    """Instructions ``python -c pass`` executes (valgrind's callgrind), or None without it."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        return None
    proc = subprocess.run(
        [valgrind, "--tool=callgrind", "--callgrind-out-file=/dev/null", python, "-c", "pass"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    match = re.search(r"Collected : (\d+)", proc.stderr)
    return int(match.group(1)) if match else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default=sys.executable, help="interpreter to measure")
    parser.add_argument("--runs", type=int, default=200, help="runs of each (default 200)")
    parser.add_argument("--check", type=float, metavar="RATIO", help="fail above this ratio")
    args = parser.parse_args(argv)

    env = child_env()
    with tempfile.TemporaryDirectory(prefix="safestop-startup-") as tmp:
        plain, _ = make_venv(args.python, Path(tmp) / "without")
        with_pth, site = make_venv(args.python, Path(tmp) / "with")
        for name in FILES:
            shutil.copy2(BOOT / name, site / name)
        # Installers compile modules; the benchmark measures that steady state.
        py_compile.compile(str(site / FILES[1]), doraise=True)

        for _ in range(10):  # warm-up: file caches, bytecode caches
            run_once(plain, env)
            run_once(with_pth, env)
        without: list[float] = []
        with_: list[float] = []
        for i in range(args.runs):
            order = ((plain, without), (with_pth, with_))
            for python, times in order if i % 2 == 0 else order[::-1]:
                times.append(run_once(python, env))
        importtime = boot_import_time(with_pth, env)
        counted = (instructions(plain, env), instructions(with_pth, env))

    base = statistics.median(without)
    ours = statistics.median(with_)
    ratio = ours / base
    version = sysconfig.get_python_version()
    print(f"python {version} ({args.python}), {args.runs} alternating runs of `python -c pass`")
    print(f"  without the .pth: median {base * 1000:.2f} ms")
    print(f"  with the .pth:    median {ours * 1000:.2f} ms ({(ours - base) * 1000:+.2f} ms)")
    print(f"  -X importtime:    {importtime}")
    if counted[0] and counted[1]:
        print(
            f"  instructions:     {counted[0]:,} without, {counted[1]:,} with "
            f"(ratio {counted[1] / counted[0]:.3f})"
        )
    print(f"ratio with/without: {ratio:.3f} (target <= {TARGET})")
    if args.check is not None and ratio > args.check:
        print(f"FAILED: ratio {ratio:.3f} > {args.check}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
