"""The registry: every scenario function and the cases it runs, registered where the function
is defined."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from pyspark_safestop.testing.cases import Case

#: A scenario: given the server's URL, it runs in a child interpreter and prints its events.
Scenario = Callable[[str], None]

#: Every scenario, by its function's name.
SCENARIOS: dict[str, Scenario] = {}
#: Every case, by name, in the order they were registered.
CASES: dict[str, Case] = {}


def scenario(**cases: Case) -> Callable[[Scenario], Scenario]:
    """Register the decorated function as a scenario, and ``cases`` (by name) as run by it.

    A case names no function of its own: it gets the decorated one's. A name already taken (a
    scenario's or a case's) raises :class:`ValueError`, naming it.
    """

    def register(function: Scenario) -> Scenario:
        name = function.__name__
        taken = sorted(set(cases) & set(CASES)) + ([name] if name in SCENARIOS else [])
        if taken:
            raise ValueError(f"scenario or case names already registered: {', '.join(taken)}")
        SCENARIOS[name] = function
        for case_name, case in cases.items():
            CASES[case_name] = dataclasses.replace(case, scenario=name)
        return function

    return register
