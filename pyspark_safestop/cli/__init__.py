"""The ``pyspark-safestop`` command: one subcommand per task, each a small function.

Exit status: 0 on success, 1 when the command refused or failed, 2 for bad usage. Output meant
for scripts goes to stdout; diagnostics go to stderr.

A new subcommand is an ``_add_<name>(subparsers)`` function that builds its parser and sets
``handler`` to a ``(argparse.Namespace) -> int`` function, listed in ``_SUBCOMMANDS``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import psutil

from .. import ports
from .._settings import parse_conf, parse_count, parse_seconds
from ..ports._checks import parse_port
from ..servers import _warm as warm
from ..servers._engines import ENGINES, EngineUnavailable, engine_from_env, make_server, master_for
from ..servers._local import LocalServer, ServerRequest
from . import _doctor, _serve

__all__ = ["build_parser", "main"]

PROG = "pyspark-safestop"

EXIT_OK = 0
EXIT_REFUSED = 1
EXIT_USAGE = 2

#: What argparse's ``add_subparsers()`` returns (its class is private).
_Subparsers = Any
_T = TypeVar("_T")

# -- argument types (their errors become usage errors naming the value) -----------------------


def _port(text: str) -> int:
    # The parser of port_from_env: a port reads the same on the command line and in a variable.
    try:
        return parse_port(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _argument(parse: Callable[[str], _T]) -> Callable[[str], _T]:
    """An argparse type from one of the settings' parsers: its ``ValueError`` (naming the
    option and the text) becomes the usage error."""

    def argument(text: str) -> _T:
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return argument


def _pattern(text: str) -> re.Pattern[str]:
    if not text:
        raise argparse.ArgumentTypeError("the pattern must not be empty")
    try:
        return re.compile(text)
    except re.error as error:
        raise argparse.ArgumentTypeError(f"bad regular expression {text!r}: {error}") from None


# -- free-port --------------------------------------------------------------------------------


def _add_free_port(subparsers: _Subparsers) -> None:
    parser = subparsers.add_parser(
        "free-port",
        help="print free TCP ports outside the ephemeral range",
        description=(
            "Print free TCP ports, one per line, chosen outside the kernel's ephemeral range "
            "so that outgoing connections are never given them. The ports are leased only "
            "while this command runs: once it has exited, another process may receive them. "
            "Use them promptly, or call pyspark_safestop.ports.allocate_free_port() from the "
            "process that starts the server, which holds the lease until it releases the port "
            "or exits."
        ),
    )
    parser.add_argument(
        "--count",
        type=_argument(lambda text: parse_count(text, "--count", 1, 1000)),
        default=1,
        metavar="N",
        help="how many ports (default 1)",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address the ports must be free on (127.0.0.1)"
    )
    parser.set_defaults(handler=_free_port)


def _free_port(args: argparse.Namespace) -> int:
    try:
        # All allocated before any is released, so the N ports are distinct.
        chosen = [ports.allocate_free_port(args.host) for _ in range(args.count)]
    except (OSError, RuntimeError, ValueError) as error:
        _error("free-port", error)
        return EXIT_REFUSED
    try:
        for port in chosen:
            print(port)
        sys.stdout.flush()
    finally:
        for port in chosen:
            ports.release_port(port)
    return EXIT_OK


# -- kill-port --------------------------------------------------------------------------------


def _add_kill_port(subparsers: _Subparsers) -> None:
    parser = subparsers.add_parser(
        "kill-port",
        help="end this user's processes listening on a TCP port",
        description=(
            "End the processes listening on a TCP port: SIGTERM, then SIGKILL after the "
            "timeout. Refuses, signalling nothing, if any listener belongs to another user "
            "(also as root), is PID 1, this command or one of its ancestors, or does not "
            "match --expect. Prints one line per process ended (or, with --dry-run, that "
            "would be ended). Exit status 1 on refusal."
        ),
    )
    parser.add_argument("port", type=_port, metavar="PORT", help="TCP port (1-65535)")
    parser.add_argument(
        "--expect",
        type=_pattern,
        metavar="PATTERN",
        help="regular expression that each listener's command line must match "
        "(re.search), e.g. SparkConnectServer",
    )
    parser.add_argument(
        "--timeout",
        type=_argument(lambda text: parse_seconds(text, "--timeout", zero=True)),
        default=5.0,
        metavar="S",
        help="seconds between SIGTERM and SIGKILL, 0 to 86400 (default 5)",
    )
    parser.add_argument(
        "--dry-run", action="store_true", help="check and report, but signal nothing"
    )
    parser.set_defaults(handler=_kill_port)


def _kill_port(args: argparse.Namespace) -> int:
    port: int = args.port
    try:
        # Described before they are ended: afterwards their command lines are gone.
        described = {info.pid: info.command for info in ports.listeners_on_port(port)}
        pids = ports.kill_process_on_port(
            port, expect=args.expect, timeout=args.timeout, dry_run=args.dry_run
        )
    except ports.KillRefusedError as error:
        _error("kill-port", f"refused: {error}")
        return EXIT_REFUSED
    except (OSError, ValueError, psutil.Error) as error:
        _error("kill-port", error)
        return EXIT_REFUSED
    if not pids:
        print(f"nothing listens on port {port}", file=sys.stderr)
        return EXIT_OK
    verb = "would end" if args.dry_run else "ended"
    for pid in pids:
        print(f"{verb} PID {pid} on port {port}: {_shorten(described.get(pid, '?'))}")
    return EXIT_OK


def _shorten(command: str, limit: int = 160) -> str:
    # A JVM's command line runs to kilobytes of classpath; its start and end identify it.
    if len(command) <= limit:
        return command
    half = (limit - 5) // 2
    return f"{command[:half]} ... {command[-half:]}"


# -- servers ----------------------------------------------------------------------------------


def _add_servers(subparsers: _Subparsers) -> None:
    parser = subparsers.add_parser(
        "servers",
        help="list this user's warm servers (--safestop-reuse-server), or stop them",
        description=(
            "List this user's warm servers, the local servers kept up between test runs by "
            "--safestop-reuse-server: engine, state, port, PIDs, age, idle time and the idle "
            "time after which each stops, fingerprint and what it runs. With --stop, stop "
            "every one (and remove stale records). Prints nothing when there is none."
        ),
    )
    parser.add_argument("--stop", action="store_true", help="stop them all")
    parser.add_argument("--json", action="store_true", help="print them as JSON")
    parser.set_defaults(handler=_servers_command)


def _servers_command(args: argparse.Namespace) -> int:
    try:
        found = warm.stop_warm_servers() if args.stop else warm.warm_servers()
    except (OSError, ValueError) as error:
        _error("servers", error)
        return EXIT_REFUSED
    if args.json:
        shown = [{**vars(server), "folder": str(server.folder)} for server in found]
        print(json.dumps(shown, indent=2))
        return EXIT_OK
    for server in found:
        print(f"{'stopped ' if args.stop else ''}{server.describe()}")
    return EXIT_OK


# -- doctor -----------------------------------------------------------------------------------


def _add_doctor(subparsers: _Subparsers) -> None:
    parser = subparsers.add_parser(
        "doctor",
        help="tell whether this environment has the hang and whether the shim is active",
        description=(
            "Report the installed pyspark (version, distribution, Spark Connect client "
            "layout), whether that client has the hang, whether the shim is active and "
            "through which path (site-wide .pth, pytest plugin, import), and the settings in "
            "force. pyspark is inspected in a fresh interpreter of this environment, as a "
            "script that imports it would be. Exit status 1 when the hang is present and "
            "nothing activates the shim (neither the .pth nor the pytest plugin)."
        ),
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    parser.set_defaults(handler=_doctor_command)


def _doctor_command(args: argparse.Namespace) -> int:
    report = _doctor.diagnose()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(_doctor.render(report))
    return EXIT_OK if report["ok"] else EXIT_REFUSED


# -- serve ------------------------------------------------------------------------------------


def _add_serve(subparsers: _Subparsers) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run a local Spark Connect server (Spark or Sail) until Ctrl-C or SIGTERM",
        description=(
            "Start a real Spark Connect server on a free loopback port (the OS picks it): by "
            "default Spark, from the installed jars, with its driver on 127.0.0.1 and no UI, "
            "usable only with a fresh random token; with --engine sail, a Sail server, which "
            "checks no token: any local user can connect to it. Print its URL (Spark: token "
            "included, sc://localhost:PORT/;token=...) on stdout once it accepts connections; "
            "stop it on Ctrl-C, SIGTERM or SIGHUP. The server never outlives this command, even "
            "when it is killed. Exit status 1 when it cannot start or exits by itself."
        ),
    )
    parser.add_argument(
        "--engine",
        choices=ENGINES,
        default=None,
        help="spark (a JVM, owner-only) or sail (Rust, no authentication); default: "
        "PYSPARK_SAFESTOP_ENGINE, else spark",
    )
    parser.add_argument(
        "--spark-home",
        metavar="PATH",
        help="Spark distribution or pyspark folder with the jars (default: "
        "PYSPARK_SAFESTOP_SPARK_HOME, the installed pyspark, SPARK_HOME)",
    )
    parser.add_argument(
        "--master",
        metavar="MASTER",
        default=None,
        help="where the Spark server's executors run: local[N], local-cluster[N,CORES,MB] or "
        "spark://HOST:PORT of a standalone cluster on this machine (default: "
        "PYSPARK_SAFESTOP_MASTER, else local[2])",
    )
    parser.add_argument(
        "--conf",
        type=_argument(lambda text: parse_conf(text, "--conf")),
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra Spark conf, repeatable (e.g. spark.connect.grpc.binding.port=15002); "
        "the bind addresses and the token cannot be changed; for sail, a SAIL_* setting",
    )
    parser.add_argument(
        "--start-timeout",
        type=_argument(lambda text: parse_seconds(text, "--start-timeout")),
        default=120.0,
        metavar="S",
        help="seconds the server may take to start (default 120)",
    )
    parser.add_argument(
        "--log",
        type=Path,
        metavar="FILE",
        help="write the server's log here, created readable by you only; a symbolic link is "
        "refused (default: a private temporary folder, removed at the end)",
    )
    parser.set_defaults(handler=_serve_command)


def _serve_command(args: argparse.Namespace) -> int:
    engine: str = args.engine or engine_from_env()
    try:
        request = ServerRequest(
            log_path=args.log,
            start_timeout=args.start_timeout,
            conf=dict(args.conf),
            spark_home=args.spark_home,
            master=args.master if args.master is not None else master_for(engine),
        )
        server = make_server(engine, request)
    except EngineUnavailable as missing:
        _error("serve", f"cannot start a {engine} server: {missing}")
        return EXIT_REFUSED
    except ValueError as error:
        _error("serve", error)
        return EXIT_USAGE

    def ready(started: LocalServer) -> None:
        print(started.url, flush=True)
        # The token goes to stdout only: stderr often ends up in logs.
        where = "a temporary log" if started.log_is_temporary else f"log: {started.log_path}"
        who = (
            "its URL, with its token, is on stdout"
            if started.authenticated
            else f"its URL is on stdout; {started.access}"
        )
        print(
            f"{PROG} serve: {started.engine} server pid {started.pid} on "
            f"localhost:{started.port} ({where}); {who}; Ctrl-C or SIGTERM stops it",
            file=sys.stderr,
            flush=True,
        )

    try:
        return _serve.serve(server, ready)
    except (RuntimeError, ValueError, OSError) as error:
        if isinstance(error, BrokenPipeError):
            # Nobody reads the URL, so nobody can use the server (already stopped): say so,
            # and let the exit's flush of stdout go nowhere instead of failing again.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            _error("serve", "stdout was closed before the URL could be written; stopped")
        else:
            _error("serve", error)
        return EXIT_REFUSED


# -- the command ------------------------------------------------------------------------------

_SUBCOMMANDS: tuple[Callable[[_Subparsers], None], ...] = (
    _add_free_port,
    _add_kill_port,
    _add_doctor,
    _add_serve,
    _add_servers,
)


def _error(command: str, error: object) -> None:
    print(f"{PROG} {command}: {error}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the ``pyspark-safestop`` command."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Check and serve Spark Connect for tests: doctor (is the hang here, is the shim "
            "active), serve (a local server), servers (the warm ones kept between runs), and "
            "the ports and processes of test servers."
        ),
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="log more (-v: info, -vv: debug)"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in _SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command with ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        # argparse exits for --help (0) and for usage errors (2); report it as a status.
        code = exit_.code
        return code if isinstance(code, int) else EXIT_USAGE
    if args.command is None:
        parser.print_usage(sys.stderr)
        print(f"{PROG}: error: a command is required", file=sys.stderr)
        return EXIT_USAGE
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    logging.basicConfig(level=level, format=f"{PROG}: %(message)s", stream=sys.stderr)
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)
