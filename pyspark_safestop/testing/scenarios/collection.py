"""Garbage collection while an RPC hangs: orphaned sessions, a collection inside the release
pool's ``submit()``, and finalisers that send RPCs of their own."""

from __future__ import annotations

import gc
import sys
import time
from types import FrameType
from typing import Any

from pyspark_safestop.testing.cases import (
    POOL_JOINS,
    POOL_SHUTDOWN_JOINS,
    RT_ENV,
    SUBMIT_FINALISES_SESSION,
    Case,
    HangSignature,
)
from pyspark_safestop.testing.checks import (
    RELEASE_TIMEOUT,
    STOP_BOUND,
    all_within,
    collected_within,
    metric_event,
    metric_stop,
    next_session_works,
    orphan_finalised_in_submit,
)
from pyspark_safestop.testing.child import checkpoint, event, new_session, query
from pyspark_safestop.testing.scenarios._registry import scenario
from pyspark_safestop.testing.scenarios._steps import next_session, timed_stop

#: 4.0+: a finaliser (a checkpointed DataFrame's cached relation) sends an RPC with no deadline
#: from inside garbage collection, and the collecting thread waits for it in gRPC.
FINALISER_WAITS: HangSignature = ("CachedRemoteRelation.__del__", "grpc._channel")
#: 4.0+: a model's finaliser deletes it from the server's ML cache with no deadline (4.0:
#: remove_ml_cache; 4.1+: _delete_ml_cache).
MODEL_FINALISER_WAITS: HangSignature = ("_ml_cache", "grpc._channel")


@scenario(
    gc_orphans=Case(
        "orphaned sessions garbage-collected, ReleaseExecute hung",
        f"each gc.collect() ≤ {STOP_BOUND:g} s",
        metric_event("collected"),
        (all_within("collected", "seconds", STOP_BOUND, 3), next_session_works),
        hangs_in=(POOL_SHUTDOWN_JOINS, POOL_JOINS),
    )
)
def gc_orphans(url: str) -> None:
    """Sessions dropped without stop() and garbage-collected, then a new session."""
    for i in range(3):
        # create() makes the new session the default and active one, orphaning the last.
        session = new_session(url)
        query(session)
        del session
        started = time.monotonic()
        gc.collect()
        event("collected", round=i, seconds=round(time.monotonic() - started, 3))
    next_session(url)


@scenario(
    gc_inside_submit=Case(
        "no fault: garbage collection inside the release pool's submit()",
        "the queries finish, next session works",
        metric_stop("first"),
        (orphan_finalised_in_submit, next_session_works),
        hang=(),
        # 3.5's pool takes no lock in its submit; 4.2+ gives each iterator its own pool.
        upstream_passes_on=frozenset({"3.5", "4.2+"}),
        hangs_in=(SUBMIT_FINALISES_SESSION,),
    )
)
def gc_inside_submit(url: str) -> None:
    """No fault at all: garbage collection runs inside the release pool's ``submit()``, which
    holds the pool's non-reentrant lock, and finalises an orphaned session, whose ``close()``
    shuts that very pool down (4.0, 4.1: a thread deadlocked on a lock it holds)."""
    from pyspark.sql.connect.client.reattach import ExecutePlanResponseReattachableIterator

    session = new_session(url)  # the default and active session: the next one is not
    query(session)
    orphans = [new_session(url)]  # referenced by this list only
    query(orphans[0])
    pool = getattr(ExecutePlanResponseReattachableIterator, "_release_thread_pool_instance", None)
    lock = getattr(pool, "_shutdown_lock", None)
    event("armed", shared_pool=lock is not None)

    def inside_submit() -> bool:
        frame: FrameType | None = sys._getframe(2)
        while frame is not None:
            if frame.f_code.co_name == "submit" and frame.f_locals.get("self") is pool:
                return True
            frame = frame.f_back
        return False

    def collect_inside_submit(phase: str, info: dict[str, Any]) -> None:
        # A collection that starts inside submit(), on the thread holding the pool's lock,
        # drops the orphan's last reference, as a real collection of an orphaned cycle would.
        if phase == "start" and orphans and lock is not None and lock.locked() and inside_submit():
            orphans.clear()

    thresholds = gc.get_threshold()
    gc.callbacks.append(collect_inside_submit)
    gc.set_threshold(1)  # a collection at nearly every allocation, those inside submit() too
    try:
        for _ in range(3):
            query(session)
    finally:
        gc.set_threshold(*thresholds)
        gc.callbacks.remove(collect_inside_submit)
    event("queries_done", orphan_collected=not orphans)
    orphans.clear()
    timed_stop(session, "first")
    next_session(url)


def _finaliser_case(
    title: str, hangs_in: HangSignature, passes_on: frozenset[str] = frozenset()
) -> Case:
    """A finaliser's cleanup RPC while ``ExecutePlan`` hangs: the collection (and the drop of
    the last reference) within the release timeout, and the same session working after. 3.5
    has neither checkpoints nor ML over Spark Connect: the scenario says it cannot run; on the
    layouts ``passes_on`` the finaliser sends nothing."""
    return Case(
        title,
        f"collection ≤ {RELEASE_TIMEOUT + STOP_BOUND:g} s (release timeout "
        f"{RELEASE_TIMEOUT:g} s), the session works after",
        metric_event("collected"),
        (collected_within(RELEASE_TIMEOUT + STOP_BOUND), next_session_works),
        hang=(),
        env=RT_ENV,
        upstream_passes_on=frozenset({"3.5"}) | passes_on,
        hangs_in=(hangs_in,),
    )


def _finalised_while_execute_hangs(session: Any, held: list[Any]) -> None:
    """Drop the last reference to what ``held`` holds while ``ExecutePlan`` hangs, and time its
    finaliser (and a collection); then clear the fault: the same session must work."""
    checkpoint("hang-execute")
    started = time.monotonic()
    held.clear()  # the finaliser runs here, or in the collection below
    gc.collect()
    event("collected", seconds=round(time.monotonic() - started, 3))
    checkpoint("clear-faults")
    query(session, 5)
    event("next_session_ok")
    timed_stop(session, "first")


def _unsupported(error: Exception) -> None:
    event("unsupported", error=type(error).__name__)
    event("next_session_ok")


@scenario(
    gc_checkpointed=_finaliser_case(
        "garbage collection of a checkpointed DataFrame, ExecutePlan hung", FINALISER_WAITS
    )
)
def gc_checkpointed(url: str) -> None:
    """A DataFrame from ``localCheckpoint()`` garbage-collected while ``ExecutePlan`` hangs:
    its finaliser sends the server an ``ExecutePlan`` that removes the cached relation (4.0+;
    upstream gives it no deadline)."""
    session = new_session(url)
    try:
        frame = session.range(10).localCheckpoint()
    except Exception as error:  # 3.5: no checkpoints over Spark Connect
        _unsupported(error)
        return
    assert frame.count() == 10
    held = [frame]
    del frame
    _finalised_while_execute_hangs(session, held)


@scenario(
    gc_model=_finaliser_case(
        "a fitted model dropped, ExecutePlan hung",
        MODEL_FINALISER_WAITS,
        # 4.0 deletes a model only if this thread cached it, which a fit does not: the model
        # is deleted with the session instead.
        passes_on=frozenset({"4.0"}),
    )
)
def gc_model(url: str) -> None:
    """A fitted model dropped while ``ExecutePlan`` hangs: its finaliser deletes the model from
    the server's ML cache with an ``ExecutePlan`` (4.0+; upstream gives it no deadline)."""
    session = new_session(url)
    try:
        import pyspark.ml.util
        from pyspark.ml.classification import LogisticRegression
        from pyspark.ml.feature import VectorAssembler

        if not hasattr(pyspark.ml.util, "try_remote_fit"):
            raise NotImplementedError("this client's pyspark.ml does not run over Connect")
        rows = [(float(x), float(x > 2)) for x in range(6)]
        frame = session.createDataFrame(rows, ["x", "label"])
        features = VectorAssembler(inputCols=["x"], outputCol="features").transform(frame)
        model = LogisticRegression(maxIter=3).fit(features)
    except Exception as error:  # 3.5, Databricks Connect 16.1: no ML over Spark Connect
        _unsupported(error)
        return
    held = [model]
    del model, features, frame
    _finalised_while_execute_hangs(session, held)
