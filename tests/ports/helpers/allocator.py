"""Allocates ports for the lease tests and holds them until told to stop.

Usage: allocator.py COUNT

Prints ``ready`` and waits for a line on stdin (so that many allocators can be started at the
same moment), allocates, prints one JSON line ``{"pid": ..., "ports": [...]}``, then holds the
leases until stdin is closed, and exits.
"""

from __future__ import annotations

import json
import os
import sys

from pyspark_safestop.ports import allocate_free_port


def main() -> None:
    count = int(sys.argv[1])
    print("ready", flush=True)
    sys.stdin.readline()
    ports = [allocate_free_port() for _ in range(count)]
    print(json.dumps({"pid": os.getpid(), "ports": ports}), flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    main()
