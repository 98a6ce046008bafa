"""A TCP listener for the port tests: binds, prints ``PORT <port> <pid>``, then waits forever.

Standard library only, so that it also runs as another user with ``python -I -S``.

Usage: listener.py [--host H] [--port P] [--ignore-term] [--fork]

``--fork`` forks once after ``listen()``; the child shares the socket and prints its own
``CHILD <pid>`` line, so two processes listen on the same port.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--ignore-term", action="store_true")
    parser.add_argument("--fork", action="store_true")
    args = parser.parse_args()
    if args.ignore_term:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.bind((args.host, args.port))
    sock.listen()
    print(f"PORT {sock.getsockname()[1]} {os.getpid()}", flush=True)
    if args.fork:
        child = os.fork()
        if child == 0:
            print(f"CHILD {os.getpid()}", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
