"""What the plugin keeps on pytest's config and items (its stash keys), and two small facts
about the run every part of the plugin asks."""

from __future__ import annotations

import re
from typing import Union

import pytest

from ..servers._local import LocalServer
from ..servers._shared import SharedServer, SharedServerHost
from ..servers._supervisor import Supervisor
from ._options import PluginSettings

#: The settings read at ``pytest_configure``.
SETTINGS = pytest.StashKey[PluginSettings]()
#: The server of ``spark_connect_server``: this process's own, or the run's shared one.
SERVER = pytest.StashKey[Union[LocalServer, SharedServer]]()
#: The run's shared server, in the process that hosts it (the xdist controller).
HOST = pytest.StashKey[SharedServerHost]()

#: How many hangs the watchdog had recorded when a test started, and how many were reported.
HANGS_SEEN = pytest.StashKey[list[int]]()

#: Restarts the local servers this process started when they die.
SUPERVISOR = pytest.StashKey[Supervisor]()

#: The deaths of the xdist workers' servers, in the controller (``pytest_testnodedown``).
WORKER_DEATHS = pytest.StashKey[list[dict[str, object]]]()
#: Where a worker hands them over (``workeroutput``).
WORKER_OUTPUT_KEY = "pyspark_safestop_deaths"

#: How many server deaths were noticed when a test started.
DEATHS_SEEN = pytest.StashKey[int]()


def without_token(url: str) -> str:
    """``url`` as reports may show it: without its token."""
    return re.sub(r"(;token=)[^;]*", r"\1…", url)


def is_xdist_worker(config: pytest.Config) -> bool:
    """Whether this process is a pytest-xdist worker (not the controller, not a plain run)."""
    return hasattr(config, "workerinput")
