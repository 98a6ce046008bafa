"""Fork and gRPC: a child made by os.fork() starts with no tracked sessions (its exit hook must
not touch the channels it inherited from the parent: gRPC state the child does not own), and a
server's launcher is started without fork, so gRPC's fork handlers never run for it."""

from __future__ import annotations

import json
import os
import sys

import pytest

from tests.children import clean_env, run_python

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork()")


#: In a fresh interpreter (forking pytest itself, whose gRPC may be busy with the line's server,
#: can stall in gRPC's fork handlers): a parent with one live and one stopped session forks; the
#: child reports what it sees, then what it sees after tracking one of its own.
FORGETS = r"""
import os

from pyspark_safestop.shim import _sessions


class Session:
    pass  # the registry only needs it to be weakly referable


parent_session, stopped = Session(), Session()
_sessions.add(parent_session)
_sessions.mark_stopped(stopped)
read, write = os.pipe()
pid = os.fork()
if pid == 0:  # the child: report, then leave without running any hooks
    try:
        seen = (len(_sessions.live()), _sessions.was_stopped(stopped))
        mine = Session()
        _sessions.add(mine)
        seen += (len(_sessions.live()),)
        os.write(write, repr(seen).encode())
    finally:
        os._exit(0)
os.close(write)
with os.fdopen(read) as pipe:
    print(pipe.read())
_, status = os.waitpid(pid, 0)
print(os.waitstatus_to_exitcode(status))
print(parent_session in _sessions.live(), _sessions.was_stopped(stopped))
"""


@pytest.mark.pure
def test_child_forgets_the_parents_sessions() -> None:
    result = run_python("-c", FORGETS, env=clean_env(), timeout=60)
    assert result.returncode == 0, result.stderr
    # Nothing inherited; the child's own session is tracked as usual; the parent's registry is
    # untouched.
    assert result.stdout.split("\n")[:3] == [repr((0, False, 1)), "0", "True True"], result.stdout


#: gRPC busy in this interpreter (a server, four threads calling it), then N launches of a
#: launcher running ``sleep``, each stopped at once (end of file on its stdin: SIGTERM to
#: ``sleep``, status 143); prints the launches that went otherwise.
LAUNCHES_WHILE_GRPC_IS_BUSY = r"""
import json, os, sys, tempfile

from pyspark_safestop.servers._local import spawn_launcher
from pyspark_safestop.testing.traffic import busy_grpc

logs = tempfile.mkdtemp()
lost = []
with busy_grpc():
    for i in range(int(sys.argv[1])):
        log = os.open(os.path.join(logs, str(i)), os.O_WRONLY | os.O_CREAT, 0o600)
        launcher = spawn_launcher(
            ["sleep", "60"], workdir=tempfile.mkdtemp(), stderr=log, env=dict(os.environ), grace=5
        )
        os.close(log)
        said = launcher.stdout.readline()
        launcher.stdin.close()
        status = launcher.wait()
        if not said.strip().isdigit() or status != 143:
            lost.append([said.decode(), status])
print(json.dumps(lost))
"""


@pytest.mark.skipif(
    sys.version_info >= (3, 10), reason="3.10+ starts subprocesses without fork handlers (vfork)"
)
def test_a_server_is_launched_without_fork_while_grpc_is_busy() -> None:
    """Python 3.9's subprocess forks where it cannot posix_spawn, and gRPC's fork handlers then
    abort or hang about one child in twenty while gRPC is busy (benchmarks/grpc_fork.py). With
    the handlers on, as a user has them: 100 launches, none lost, none hung."""
    env = clean_env(no_warnings=True)
    env.pop("GRPC_ENABLE_FORK_SUPPORT", None)
    proc = run_python("-c", LAUNCHES_WHILE_GRPC_IS_BUSY, "100", env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == [], proc.stderr[-3000:]
