"""The scenarios in which upstream's Spark Connect client hangs, each with its cases.

A scenario is a function of the server's URL that runs in a child interpreter and prints its
progress as JSON lines (:mod:`pyspark_safestop.testing.child`). It is registered, with the
cases it runs (:class:`~pyspark_safestop.testing.cases.Case`: the fault, the bounds, where
upstream parks), by :func:`scenario`, just above its definition: a new scenario is one
function and its decorator in one of the families below.

- :mod:`.stop`: stops and exits while a release RPC hangs (the seed's deadlock);
- :mod:`.collection`: garbage collection, orphaned sessions and finalisers' RPCs;
- :mod:`.connection`: a server or a connection that goes away, a reader, a fork;
- :mod:`.held_calls`: calls held or slowed by the server, with the hang watchdog on.

As a program, run by :func:`~pyspark_safestop.testing.catalogue.run_case`::

    python -m pyspark_safestop.testing.scenarios NAME URL [--watchdog SECONDS]

The shim is activated as a user's conftest does it, by importing the package first;
``PYSPARK_SAFESTOP=0`` in the environment makes that a no-op, which gives upstream's
behaviour for the same scenario.
"""

from __future__ import annotations

import importlib

from pyspark_safestop.testing.scenarios._registry import CASES, SCENARIOS, Scenario, scenario

#: The families, imported for their registrations in this order: the catalogue's.
FAMILIES = ("stop", "collection", "connection", "held_calls")
for _family in FAMILIES:
    importlib.import_module(f"{__name__}.{_family}")

__all__ = ["CASES", "FAMILIES", "SCENARIOS", "Scenario", "scenario"]
