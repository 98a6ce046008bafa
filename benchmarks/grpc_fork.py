"""Why the Python 3.9 line runs with ``GRPC_ENABLE_FORK_SUPPORT=0`` (README, Limitations).

    python benchmarks/grpc_fork.py [--line LINE=PYTHON ...] [--children N]

For each interpreter (default: the nox environments), one process keeps gRPC busy (a server
on loopback and four threads calling it, as a test run does) and starts N children with
``subprocess.run([python, "-c", "print(1)"])``, once with gRPC as installed and once with
``GRPC_ENABLE_FORK_SUPPORT=0``. The table counts the children killed by a signal before they
printed anything, and those that had not started after 20 s (stuck between fork and exec:
then killed). Python 3.9's subprocess forks (3.10+
uses vfork), so gRPC's fork handlers run in the child; they start a poller whose descriptor
the child's close_fds then closes, and the poller aborts the child. No pyspark is involved:
any gRPC process that starts subprocesses.
"""

from __future__ import annotations

import sys
from typing import Any

from _common import (
    benchmark_parser,
    child_env,
    machine,
    print_table,
    resolve_lines,
    run_worker,
    write_json,
)

#: Runs in the measured interpreter: gRPC busy, N children; prints one JSON line.
WORKER = r"""
import json, os, signal, subprocess, sys, threading

import grpc

from pyspark_safestop.testing.traffic import busy_grpc


def kill_children() -> None:
    # A child stuck between fork and exec blocks Popen() itself, whatever its timeout.
    me = os.getpid()
    for task in os.listdir(f"/proc/{me}/task"):
        with open(f"/proc/{me}/task/{task}/children") as handle:
            for pid in handle.read().split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except ProcessLookupError:
                    pass


def start(result: list) -> None:
    result.append(subprocess.run([sys.executable, "-c", "print(1)"], capture_output=True))


signals, hung = [], 0
with busy_grpc():
    for _ in range(int(sys.argv[1])):
        result = []
        starter = threading.Thread(target=start, args=(result,))
        starter.start()
        starter.join(20)
        if starter.is_alive():
            hung += 1
            kill_children()
            starter.join()
            continue
        if result[0].returncode < 0 and not result[0].stdout:
            signals.append(-result[0].returncode)
print(json.dumps({
    "python": sys.version.split()[0], "grpc": grpc.__version__, "signals": signals, "hung": hung,
}))
"""


def measure(python: str, children: int, fork_support: str | None) -> dict[str, Any]:
    """One worker run; ``fork_support``: the value of GRPC_ENABLE_FORK_SUPPORT, None: unset."""
    env = child_env(shim=False)
    env.pop("GRPC_ENABLE_FORK_SUPPORT", None)
    if fork_support is not None:
        env["GRPC_ENABLE_FORK_SUPPORT"] = fork_support
    result = run_worker(python, WORKER, str(children), env=env, timeout=60 + 21 * children)
    result["fork_support"] = fork_support
    result["children"] = children
    return result


def _cells(result: dict[str, Any]) -> list[str]:
    signals = sorted({str(number) for number in result["signals"]})
    killed = str(len(result["signals"])) + (f" ({', '.join(signals)})" if signals else "")
    setting = result["fork_support"]
    return [
        result["line"],
        result["python"],
        result["grpc"],
        "unset" if setting is None else setting,
        str(result["children"]),
        killed,
        str(result["hung"]),
    ]


def main() -> None:
    parser = benchmark_parser(__doc__.splitlines()[0], "grpc_fork.json")
    parser.add_argument("--children", type=int, default=300, help="children per run")
    args = parser.parse_args()
    lines = resolve_lines(parser, args.line)
    info = machine()
    results = [
        {"line": line, **measure(python, args.children, setting)}
        for line, python in lines.items()
        for setting in (None, "0")
    ]
    print_table(
        "Children that never ran, gRPC busy in their parent",
        ["line", "Python", "grpcio", "GRPC_ENABLE_FORK_SUPPORT", "children", "killed", "hung"],
        (_cells(result) for result in results),
        info,
    )
    write_json(args.json, {"machine": info, "results": results})


if __name__ == "__main__":
    sys.exit(main())
