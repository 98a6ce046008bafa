"""fork() with leases held, in a fresh single-threaded interpreter (forking pytest is unsafe).

Usage: forker.py (child-exits|child-lives)

child-exits: lease a port, fork; the child reports what it believes it holds and tries to
    release the port, then exits. The parent prints ``{"port", "child", "parent_holds"}``.
child-lives: lease a port, fork a child that stays alive, release the port in the parent and
    print ``{"port"}``.

Either way the parent then waits for stdin to close (the test checks the lease from outside
meanwhile), and ends its child, if any, before exiting.
"""

from __future__ import annotations

import json
import os
import sys

from pyspark_safestop.ports import allocate_free_port, leased_ports, release_port


def child_exits() -> None:
    port = allocate_free_port()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        report = {"held": sorted(leased_ports()), "released": release_port(port)}
        os.write(write_end, json.dumps(report).encode())
        os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        child = json.loads(pipe.read())
    os.waitpid(pid, 0)
    print(json.dumps({"port": port, "child": child, "parent_holds": port in leased_ports()}))
    sys.stdout.flush()
    sys.stdin.read()


def child_lives() -> None:
    port = allocate_free_port()
    go_read, go_write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(go_write)
        os.read(go_read, 1)  # alive, with whatever it inherited, until the parent lets it go
        os._exit(0)
    os.close(go_read)
    release_port(port)
    print(json.dumps({"port": port}), flush=True)
    sys.stdin.read()
    os.close(go_write)  # EOF for the child
    os.waitpid(pid, 0)


if __name__ == "__main__":
    {"child-exits": child_exits, "child-lives": child_lives}[sys.argv[1]]()
