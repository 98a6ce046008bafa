"""Starts a listener, registers its cleanup, then exits or waits for a signal.

Usage: cleanup_target.py (port|pid) (exit|wait) [--previous-handler] [--ignore-term]
    [--unregister]

Prints ``READY <port> <listener pid> <listener create_time>`` once the cleanup is registered.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from pyspark_safestop.ports import register_cleanup

LISTENER = Path(__file__).with_name("listener.py")


def main() -> None:
    # Started with SIGINT ignored (a background job of a non-interactive shell), Python has no
    # KeyboardInterrupt; this target stands for an interactive program, which has one.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    parser = argparse.ArgumentParser()
    parser.add_argument("scope", choices=["port", "pid"])
    parser.add_argument("action", choices=["exit", "wait"])
    parser.add_argument("--previous-handler", action="store_true")
    parser.add_argument("--ignore-term", action="store_true")
    parser.add_argument("--unregister", action="store_true")
    args = parser.parse_args()

    if args.previous_handler:

        def previous(signum: int, frame: object) -> None:
            print(f"previous handler called with {signum}", flush=True)
            os._exit(3)

        signal.signal(signal.SIGTERM, previous)
    if args.ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)

    listener = subprocess.Popen([sys.executable, str(LISTENER)], stdout=subprocess.PIPE, text=True)
    assert listener.stdout is not None
    _, port, pid = listener.stdout.readline().split()
    create_time = psutil.Process(int(pid)).create_time()
    if args.scope == "port":
        unregister = register_cleanup(port=int(port), expect="listener.py", timeout=10)
    else:
        unregister = register_cleanup(pid=int(pid), timeout=10)
    if args.unregister:
        unregister()
    print(f"READY {port} {pid} {create_time!r}", flush=True)
    if args.action == "wait":
        while True:
            time.sleep(0.05)


if __name__ == "__main__":
    main()
