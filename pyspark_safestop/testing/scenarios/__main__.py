"""Run one scenario: ``python -m pyspark_safestop.testing.scenarios NAME URL``."""

from __future__ import annotations

import argparse
import faulthandler
import sys

import pyspark_safestop  # first, as a user's conftest: the shim's activation
from pyspark_safestop.testing.child import event, start_watchdog
from pyspark_safestop.testing.scenarios import SCENARIOS


def main(argv: list[str] | None = None) -> None:
    """Run the scenario ``NAME`` against the server at ``URL``; ``--watchdog SECONDS`` prints
    every thread's stack after that long without progress."""
    parser = argparse.ArgumentParser(prog="python -m pyspark_safestop.testing.scenarios")
    parser.add_argument("name", choices=sorted(SCENARIOS))
    parser.add_argument("url")
    parser.add_argument(
        "--watchdog",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="print every thread's stack after this long without progress (0: never)",
    )
    args = parser.parse_args(argv)
    if args.watchdog > 0:
        start_watchdog(args.watchdog)
    event("start", shim=pyspark_safestop.is_installed())
    try:
        SCENARIOS[args.name](args.url)
        event("done")
    finally:
        if args.watchdog > 0:
            # The exit may hang where no Python thread runs any more (its final garbage
            # collection): faulthandler's own thread still dumps the stacks, with the events.
            faulthandler.dump_traceback_later(args.watchdog, repeat=True, file=sys.stdout)


if __name__ == "__main__":
    main()
