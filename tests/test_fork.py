"""A child made by os.fork() starts with no tracked sessions: its exit hook must not touch the
channels it inherited from the parent (gRPC state the child does not own)."""

from __future__ import annotations

import os
import sys

import pytest

from pyspark_safestop import _sessions

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork()")


class _Session:
    """Stands in for a session object: the registry only needs it to be weakly referable."""


def test_child_forgets_the_parents_sessions() -> None:
    parent_session = _Session()
    _sessions.add(parent_session)
    stopped = _Session()
    _sessions.mark_stopped(stopped)
    try:
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: report what it sees, then leave without running any hooks
            try:
                seen = (len(_sessions.live()), _sessions.was_stopped(stopped))
                mine = _Session()
                _sessions.add(mine)
                seen += (len(_sessions.live()),)
                os.write(write, repr(seen).encode())
            finally:
                os._exit(0)
        os.close(write)
        with os.fdopen(read) as pipe:
            reported = pipe.read()
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        # Nothing inherited; the child's own session is tracked as usual.
        assert reported == repr((0, False, 1))
        # The parent's registry is untouched.
        assert parent_session in _sessions.live()
        assert _sessions.was_stopped(stopped)
    finally:
        _sessions.discard(parent_session)
        sys.stdout.flush()
