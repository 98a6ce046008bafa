"""What a fresh interpreter of this environment does: run as a script by ``doctor``.

It imports pyspark's Spark Connect session module the way a user's script does, and nothing of
pyspark-safestop first, then prints one JSON object: whether the site-wide hook ran and fired,
whether the package (hence the shim) was activated by it, the pyspark version and the client's
layout. Run as ``python _probe.py`` (a file: pyspark-client 4.2 exits under ``python -c``),
with the interpreter flags of the caller.
"""

import os
import sys

# Run as a script, this file's folder (the package's) heads sys.path: drop it, so that nothing
# is imported from here by its bare name.
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    del sys.path[0]

import json

BOOT = "_pyspark_safestop_boot"


def main() -> None:
    """Print the findings as one JSON line on stdout."""
    boot = sys.modules.get(BOOT)
    found: dict[str, object] = {
        "boot_processed": BOOT in sys.modules,
        "boot_state": getattr(boot, "state", None) if boot is not None else None,
        "imported_before": "pyspark_safestop" in sys.modules,
        "connect_error": None,
    }
    try:
        import pyspark.sql.connect.session  # noqa: F401
    except BaseException as error:  # an import error, or pyspark's dependency check exiting
        found["connect_error"] = f"{type(error).__name__}: {error}".splitlines()[0]
    boot = sys.modules.get(BOOT)
    found["boot_state_after"] = getattr(boot, "state", None) if boot is not None else None
    found["activated"] = "pyspark_safestop" in sys.modules
    # Observed; from here on, importing the package cannot change what was found.
    import pyspark_safestop

    found["status"] = pyspark_safestop.status()
    found["status_was_active"] = bool(found["activated"]) and pyspark_safestop.is_installed()
    print(json.dumps(found, default=str))


if __name__ == "__main__":
    main()
