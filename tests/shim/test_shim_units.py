"""The shim's parts on small fake classes, without pyspark: the patcher, the stop path, the
exit hook, closing a channel. The subprocess tests prove the same against every real client
line; these say directly what each part promises."""

from __future__ import annotations

import subprocess
import sys
import threading
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pyspark_safestop.client import _operations
from pyspark_safestop.client._layouts import Target
from pyspark_safestop.shim import _exit, _release, _sessions
from pyspark_safestop.shim._patcher import Patcher, SafestopWrapper, is_safestop_wrapper
from tests.children import clean_env, run_python

pytestmark = pytest.mark.pure

MODULE = "safestop_fake_client"


class _Base:
    def inherited(self) -> str:
        return "base"


@pytest.fixture
def fake_module() -> Iterator[types.ModuleType]:
    """A module holding ``Client``, with an own method and one it inherits."""
    module = types.ModuleType(MODULE)

    class Client(_Base):
        def close(self) -> str:
            return "upstream close"

    module.Client = Client  # type: ignore[attr-defined]
    sys.modules[MODULE] = module
    try:
        yield module
    finally:
        del sys.modules[MODULE]


def _tagging(wrapped: Any, instance: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    return f"shim({wrapped(*args, **kwargs)})"


CLOSE = Target(MODULE, "Client", "close", "close")
INHERITED = Target(MODULE, "Client", "inherited", "close")


def _patcher(enabled: bool = True) -> Patcher:
    return Patcher({"close": _tagging}, lambda: enabled)


def test_apply_wraps_once_and_revert_restores_the_very_object(
    fake_module: types.ModuleType,
) -> None:
    client_cls = fake_module.Client
    original = vars(client_cls)["close"]
    patcher = _patcher()
    assert patcher.apply([CLOSE]) == [str(CLOSE)]
    assert patcher.apply([CLOSE]) == []  # idempotent
    assert isinstance(vars(client_cls)["close"], SafestopWrapper)
    assert client_cls().close() == "shim(upstream close)"
    assert patcher.revert() == [str(CLOSE)]
    assert vars(client_cls)["close"] is original
    assert patcher.revert() == []


def test_an_inherited_attribute_is_removed_again_not_copied_down(
    fake_module: types.ModuleType,
) -> None:
    patcher = _patcher()
    patcher.apply([INHERITED])
    client_cls = fake_module.Client
    assert "inherited" in vars(client_cls)
    assert client_cls().inherited() == "shim(base)"
    patcher.revert()
    assert "inherited" not in vars(client_cls)
    assert client_cls().inherited() == "base"


def test_a_second_patcher_does_not_wrap_twice(fake_module: types.ModuleType) -> None:
    first, second = _patcher(), _patcher()
    first.apply([CLOSE])
    assert second.apply([CLOSE]) == []
    assert fake_module.Client().close() == "shim(upstream close)"
    first.revert()


def test_a_wrapper_put_on_top_by_someone_else_survives_revert(
    fake_module: types.ModuleType,
) -> None:
    client_cls = fake_module.Client
    patcher = _patcher()
    patcher.apply([CLOSE])
    ours = vars(client_cls)["close"]

    def theirs(self: Any) -> str:
        return f"theirs({ours(self)})"

    client_cls.close = theirs
    assert patcher.revert() == []  # left in place: removing ours would drop theirs
    assert vars(client_cls)["close"] is theirs
    assert is_safestop_wrapper(ours)


def test_a_disabled_patcher_passes_calls_straight_through(
    fake_module: types.ModuleType,
) -> None:
    patcher = _patcher(enabled=False)
    patcher.apply([CLOSE])
    assert fake_module.Client().close() == "upstream close"
    patcher.revert()


def test_a_module_not_imported_yet_is_skipped_until_it_is() -> None:
    patcher = _patcher()
    assert patcher.apply([Target("safestop_not_imported", "Client", "close", "close")]) == []
    assert patcher.applied() == []


def test_concurrent_applies_wrap_exactly_once(fake_module: types.ModuleType) -> None:
    patcher = _patcher()
    results: list[list[str]] = []
    barrier = threading.Barrier(8)

    def apply() -> None:
        barrier.wait()
        results.append(patcher.apply([CLOSE]))

    threads = [threading.Thread(target=apply) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(len(r) for r in results) == [0] * 7 + [1]
    assert fake_module.Client().close() == "shim(upstream close)"
    patcher.revert()


# -- the stop path --------------------------------------------------------------------------


class _Channel:
    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


class _Client:
    def __init__(self) -> None:
        self._channel = _Channel()
        self._session_id = "fake"


@pytest.fixture
def releases(monkeypatch: pytest.MonkeyPatch) -> list[tuple[_Client, float]]:
    """The releases the stop path sends, recorded instead of sent."""
    sent: list[tuple[_Client, float]] = []
    monkeypatch.setattr(
        _release._operations, "release_server_side", lambda client, t: sent.append((client, t))
    )
    return sent


def test_stop_path_releases_with_the_deadline_then_closes_the_channel(
    releases: list[tuple[_Client, float]],
) -> None:
    client = _Client()
    assert _release.release_and_close(client, 1.5, release=True) is True
    assert releases == [(client, 1.5)]
    assert client._channel.closed
    # Closed once: a second stop sends nothing.
    assert _release.release_and_close(client, 1.5, release=True) is False
    assert len(releases) == 1


def test_stop_path_closes_the_channel_when_the_release_fails_or_is_interrupted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def refused(client: Any, timeout: float) -> None:
        raise RuntimeError("UNAVAILABLE")

    monkeypatch.setattr(_release._operations, "release_server_side", refused)
    client = _Client()
    assert _release.release_and_close(client, 1.0, release=True) is False
    assert client._channel.closed

    def interrupted(client: Any, timeout: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(_release._operations, "release_server_side", interrupted)
    client = _Client()
    with pytest.raises(KeyboardInterrupt):
        _release.release_and_close(client, 1.0, release=True)
    assert client._channel.closed


def test_stop_path_without_release_only_closes(releases: list[tuple[_Client, float]]) -> None:
    client = _Client()
    assert _release.release_and_close(client, 1.0, release=False) is False
    assert releases == []
    assert client._channel.closed


# -- the exit hook --------------------------------------------------------------------------


class _Session:
    def __init__(self) -> None:
        self.client = _Client()


def test_exit_closes_every_session_never_stopped_and_skips_the_closed(
    releases: list[tuple[_Client, float]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_exit._operations, "release_on_exit", lambda client: False)
    open_one, stopped = _Session(), _Session()
    stopped.client._closed = True  # type: ignore[attr-defined]
    for session in (open_one, stopped):
        _sessions.add(session)
    try:
        assert _exit.close_live_sessions(1.0) == 1
        assert open_one.client._channel.closed
        assert not stopped.client._channel.closed
        assert releases == []  # upstream would not release at exit here: neither do we
    finally:
        for session in (open_one, stopped):
            _sessions.discard(session)


def test_exit_releases_within_one_budget_where_upstream_would(
    releases: list[tuple[_Client, float]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_exit._operations, "release_on_exit", lambda client: True)
    sessions = [_Session() for _ in range(3)]
    for session in sessions:
        _sessions.add(session)
    try:
        assert _exit.close_live_sessions(2.0) == 3
        assert all(s.client._channel.closed for s in sessions)
        # One budget for all of them: each release gets what is left of it.
        assert {id(client) for client, _ in releases} == {id(s.client) for s in sessions}
        assert all(0 < seconds <= 2.0 for _, seconds in releases)
    finally:
        for session in sessions:
            _sessions.discard(session)


# -- closing a channel ------------------------------------------------------------------------


def test_a_channel_is_closed_once() -> None:
    client = _Client()
    _operations.close_channel(client)
    assert client._channel.closed
    assert _operations.is_closed(client)
    client._channel.closed = False
    _operations.close_channel(client)  # a stopped session's __del__ closes again
    assert not client._channel.closed


def test_a_client_upstream_marked_closed_still_has_its_channel_closed(
    releases: list[tuple[_Client, float]],
) -> None:
    client = _Client()
    client._closed = True  # type: ignore[attr-defined]  # the server's session changed
    assert _release.release_and_close(client, 1.0, release=True) is False
    assert releases == []
    assert client._channel.closed


def test_at_finalisation_the_channel_is_left_to_the_exit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_operations.sys, "is_finalizing", lambda: True)
    client = _Client()
    _operations.close_channel(client)
    assert not client._channel.closed
    assert _operations.is_closed(client)


# A session's __del__ at interpreter exit, while a daemon thread (halted at finalisation wherever
# it stood) holds the lock the channel's close takes, as gRPC's threads may hold a channel's.
_HALTED_HOLDER = """
import sys, threading
from pyspark_safestop.client import _operations

lock, held = threading.RLock(), threading.Event()
namespace = {"lock": lock, "held": held}
# Defined outside __main__, whose globals the halted frame would otherwise keep alive.
exec('''
def hold():
    with lock:
        held.set()
        while True:
            sum(range(1000))
''', namespace)

class Channel:
    def close(self):
        with lock:
            pass

class Client:
    def __init__(self):
        self._channel = Channel()

class Session:
    def __init__(self, close):
        self.client, self.close = Client(), close
    def __del__(self):
        self.close(self.client)

upstream = lambda client: client._channel.close()
threading.Thread(target=namespace["hold"], daemon=True).start()
held.wait()
session = Session(_operations.close_channel if sys.argv[1] == "shim" else upstream)
print("done", flush=True)
"""


@pytest.mark.parametrize("shim", [False, True], ids=["upstream", "shim"])
def test_a_session_finalised_at_exit_does_not_wait_on_a_halted_thread(
    shim: bool, tmp_path: Path
) -> None:
    script = tmp_path / "halted.py"
    script.write_text(_HALTED_HOLDER)
    if shim:
        done = run_python(script, "shim", env=clean_env(), timeout=60)
        assert (done.returncode, done.stdout) == (0, "done\n"), done.stderr
    else:  # the same close as upstream's hangs the exit: watched 10 s
        with pytest.raises(subprocess.TimeoutExpired) as hung:
            run_python(script, "upstream", env=clean_env(), timeout=10)
        # It hung at exit, after its last line: not a start too slow for the watch.
        assert b"done" in (hung.value.stdout or b""), hung.value.stderr
