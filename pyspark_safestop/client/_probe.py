"""What a fresh interpreter of this environment does: run as a script by ``doctor``.

It imports pyspark's Spark Connect session module the way a user's script does, and nothing of
pyspark-safestop first, then prints one JSON object: whether the site-wide hook ran and fired,
whether the package (hence the shim) was activated by it, the pyspark version and the client's
layout. Run as ``python _probe.py`` (a file: pyspark-client 4.2 exits under ``python -c``),
with the interpreter flags of the caller.

:func:`import_connect` is also what the pytest plugin's report header uses to import the client.
"""

import contextlib
import json
import os
import sys

# Run as a script, this file's folder (the client wing's) heads sys.path: drop it, so that nothing
# is imported from here by its bare name. (Imported as a module, it leaves sys.path alone.)
HERE = os.path.dirname(os.path.abspath(__file__))
if __name__ == "__main__" and sys.path and os.path.abspath(sys.path[0]) == HERE:
    del sys.path[0]

BOOT = "_pyspark_safestop_boot"

# The names of _layouts, which cannot be imported here before the findings are made (it would
# activate the package); a test keeps the two in step.
SESSION_MODULE = "pyspark.sql.connect.session"
CLIENT_MODULE = "pyspark.sql.connect.client.core"
_CLIENT_PACKAGES = (CLIENT_MODULE, CLIENT_MODULE.rpartition(".")[0])


def _one_line(error: BaseException) -> str:
    lines = f"{type(error).__name__}: {error}".splitlines()
    return lines[0] if lines else type(error).__name__


def import_connect() -> "str | None":
    """Import pyspark's Spark Connect session module, then its client module, as a script
    would; return the first error as one line (``"Type: message"``), or ``None``.

    A client module that does not exist is no error here: that distribution is built
    otherwise, which the layout detection reports. ``SystemExit`` (pyspark's dependency check
    exits in some set-ups) is an error like any other.
    """
    for name in (SESSION_MODULE, CLIENT_MODULE):
        try:
            __import__(name)
        except ModuleNotFoundError as error:
            if name == CLIENT_MODULE and error.name in _CLIENT_PACKAGES:
                return None
            return _one_line(error)
        except (Exception, SystemExit) as error:
            return _one_line(error)
    return None


def main() -> None:
    """Print the findings as one JSON line on stdout."""
    boot = sys.modules.get(BOOT)
    found: dict[str, object] = {
        "boot_processed": BOOT in sys.modules,
        # None: the .pth line ran but found no module (a half-removed install).
        "boot_missing": BOOT in sys.modules and boot is None,
        "boot_state": getattr(boot, "state", None) if boot is not None else None,
        "imported_before": "pyspark_safestop" in sys.modules,
        "connect_error": import_connect(),
    }
    boot = sys.modules.get(BOOT)
    found["boot_state_after"] = getattr(boot, "state", None) if boot is not None else None
    found["activated"] = "pyspark_safestop" in sys.modules
    # A pyspark whose version cannot be read (status() says None) is installed all the same.
    found["pyspark_imported"] = "pyspark" in sys.modules
    # Observed; from here on, importing the package cannot change what was found.
    import pyspark_safestop

    found["status"] = pyspark_safestop.status()
    found["status_was_active"] = bool(found["activated"]) and pyspark_safestop.is_installed()
    found["token_needs_channel_builder"] = None
    if found["connect_error"] is None and found["pyspark_imported"]:
        from pyspark_safestop.client import _operations

        # A client not recognised: nothing to say about its tokens.
        with contextlib.suppress(Exception):
            found["token_needs_channel_builder"] = _operations.token_needs_channel_builder()
    print(json.dumps(found, default=str))


if __name__ == "__main__":
    main()
