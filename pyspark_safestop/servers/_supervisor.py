"""A local server that dies (the kernel's OOM killer, a JVM crash) is restarted, and its calls in
flight fail at once instead of retrying a dead port for minutes.

:class:`Supervisor` watches servers this process started (one thread, a few polls a second).
When one dies it tells :mod:`._reachability` (calls to it fail with ``ServerUnreachableError``
naming how it died), records the death with its log's tail, and starts it again on the same
port with the same secret, so that its URL, which the fixtures hand out once per run, stays
valid. A server that keeps dying (:data:`MAX_RESTARTS` deaths) is left dead: every call to it
then fails at once with the reason.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..shim import _reachability
from ._local import LocalServer

__all__ = ["MAX_RESTARTS", "Death", "Listener", "Supervisor"]

logger = logging.getLogger("pyspark_safestop")

#: A server is restarted after each of its first MAX_RESTARTS deaths; after that, a crash loop.
MAX_RESTARTS = 3
_POLL_SECONDS = 0.2
_LOG_LINES = 40

#: What a death by SIGKILL most often is, on a test machine.
_SIGKILL_HINT = "the kernel's OOM killer is the usual cause"


@dataclass(frozen=True)
class Death:
    """One death of a supervised server."""

    what: str
    address: str
    how: str
    #: When it was noticed (``time.monotonic()``).
    at: float
    #: The tail of its log when it died.
    log_tail: str
    restarted: bool
    #: Why it was not restarted (a crash loop, a failed restart), else "".
    given_up: str = ""

    def describe(self) -> str:
        """``the Spark Connect server died: killed by SIGKILL (...); restarted``."""
        hint = f" ({_SIGKILL_HINT})" if self.how.endswith("SIGKILL") else ""
        after = "restarted on the same URL" if self.restarted else f"NOT restarted: {self.given_up}"
        return f"the {self.what} at {self.address} died: {self.how}{hint}; {after}"


#: Told of a watched server's death as it is noticed (``None``) and once it is over (the
#: :class:`Death`: restarted or given up); called in the supervisor's thread.
Listener = Callable[[LocalServer, "Death | None"], None]


class Supervisor:
    """Watches servers and restarts the ones that die; see the module's description."""

    def __init__(self, max_restarts: int = MAX_RESTARTS) -> None:
        """Restart each server after at most ``max_restarts`` deaths."""
        self._max_restarts = max_restarts
        self._lock = threading.Lock()
        #: Notified when a revival ends; ``_reviving`` counts those under way.
        self._settled = threading.Condition(self._lock)
        self._reviving = 0
        self._in_revival: set[int] = set()
        self._servers: dict[int, LocalServer] = {}
        self._listeners: dict[int, Listener] = {}
        self._deaths: list[Death] = []
        self._given_up: dict[int, str] = {}
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(self, server: LocalServer, listener: Listener | None = None) -> None:
        """Watch ``server`` (started) from now on; ``listener`` hears of its deaths."""
        with self._lock:
            self._servers[id(server)] = server
            if listener is not None:
                self._listeners[id(server)] = listener
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="pyspark-safestop-supervisor", daemon=True
                )
                self._thread.start()

    def forget(self, server: LocalServer) -> None:
        """Stop watching ``server`` (before stopping it: a stopped server is no death), once a
        restart under way is over."""
        with self._lock:
            self._settled.wait_for(lambda: self._reviving == 0)
            self._servers.pop(id(server), None)
            self._listeners.pop(id(server), None)
            self._given_up.pop(id(server), None)

    def deaths(self, since: int = 0) -> list[Death]:
        """The deaths noticed so far, from the ``since``-th on."""
        with self._lock:
            return self._deaths[since:]

    def given_up(self, server: LocalServer) -> str | None:
        """Why ``server`` is dead for good, or ``None``."""
        with self._lock:
            return self._given_up.get(id(server))

    def close(self) -> None:
        """Stop watching anything."""
        self._stopping.set()
        with self._lock:
            self._servers.clear()
            self._listeners.clear()

    def check(self) -> None:
        """Look at every watched server now (the thread does it a few times a second)."""
        with self._lock:
            servers = [s for key, s in self._servers.items() if key not in self._given_up]
        for server in servers:
            how = server.death()
            if how is not None:
                self._revive(server, how)

    def settle(self) -> None:
        """Return once every server that died has been restarted or given up: what a test
        about to start needs (a death just before it is noticed here too)."""
        self.check()
        with self._lock:
            self._settled.wait_for(lambda: self._reviving == 0)

    def _run(self) -> None:
        while not self._stopping.wait(_POLL_SECONDS):
            try:
                self.check()
            except Exception:
                logger.warning("the server supervisor failed; it goes on", exc_info=True)

    def _revive(self, server: LocalServer, how: str) -> None:
        address = server.address
        what = server._what
        tail = server.log_tail(_LOG_LINES)
        noticed = time.monotonic()
        with self._lock:
            if id(server) not in self._servers or id(server) in self._in_revival:
                return  # forgotten meanwhile (its owner stops it), or another check revives it
            earlier = sum(1 for death in self._deaths if death.address == address)
            self._in_revival.add(id(server))
            self._reviving += 1
            listener = self._listeners.get(id(server))
        try:
            _reachability.mark_dead(address, f"the {what} died: {how}")
            self._tell(listener, server, None)
            death = self._restart(
                server,
                address=address,
                what=what,
                how=how,
                tail=tail,
                noticed=noticed,
                earlier=earlier,
            )
            self._tell(listener, server, death)
        finally:
            with self._lock:
                self._in_revival.discard(id(server))
                self._reviving -= 1
                self._settled.notify_all()

    def _restart(
        self,
        server: LocalServer,
        *,
        address: str,
        what: str,
        how: str,
        tail: str,
        noticed: float,
        earlier: int,
    ) -> Death:
        logger.warning("the %s at %s died: %s", what, address, how)
        given_up = ""
        if earlier >= self._max_restarts:
            given_up = f"it died {earlier + 1} times (a crash loop)"
        else:
            try:
                server.restart()
            except Exception as error:
                given_up = f"it could not start again: {str(error).splitlines()[0]}"
        death = Death(what, address, how, noticed, tail, not given_up, given_up)
        with self._lock:
            self._deaths.append(death)
            if given_up:
                self._given_up[id(server)] = death.describe()
        if given_up:
            _reachability.mark_dead(address, death.describe())
            logger.error("%s", death.describe())
        else:
            _reachability.mark_alive(address)
            logger.warning("%s", death.describe())
        return death

    @staticmethod
    def _tell(listener: Listener | None, server: LocalServer, death: Death | None) -> None:
        if listener is None:
            return
        try:
            listener(server, death)
        except Exception:
            logger.warning("a listener of the server supervisor failed", exc_info=True)
