"""pyspark-safestop: Spark Connect sessions that stop without hanging the next one.

Importing this package activates the shim (unless ``PYSPARK_SAFESTOP=0``): ``stop()`` of a
Spark Connect session releases it on the server with a deadline and closes its own gRPC
channel, and the process-global release pool shared by all sessions is shut down only at
interpreter exit, without waiting on hung RPCs. Importing it never imports pyspark; the
patches apply when pyspark's Spark Connect client is imported.
"""

from __future__ import annotations

import logging
import sys

from . import shim
from ._settings import SafestopWarning
from .shim import *  # noqa: F403  (the shim's public names are the package's)
from .shim._install import activate

__all__ = ["SafestopWarning", "__version__"]
__all__ += shim.__all__

__version__ = "0.1.0"

# A library adds no output of its own unless the user configures logging.
logging.getLogger("pyspark_safestop").addHandler(logging.NullHandler())

# An import must never fail because of the shim: activate() logs and carries on unpatched.
# The .pth hook and the pytest plugin import this package through `_pyspark_safestop_boot`,
# which names the activating path while they do; a plain import is "import".
activate(getattr(sys.modules.get("_pyspark_safestop_boot"), "activating", None) or "import")
del activate
