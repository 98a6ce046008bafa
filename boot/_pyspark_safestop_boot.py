"""Site-wide activation of pyspark-safestop, at no measurable start-up cost.

The wheel installs this module at the root of site-packages, beside two start-up files:

- ``pyspark_safestop.pth``, whose import line every interpreter runs at start-up (up to Python
  3.14, and later for as long as ``.pth`` import lines are run);
- ``pyspark_safestop.start``, a PEP 829 entry point (Python 3.15+), whose presence makes those
  interpreters skip the ``.pth`` import line: the hook is never armed twice.

Both call :func:`boot`. It reads ``PYSPARK_SAFESTOP`` and puts this module at the front of
``sys.meta_path`` (its :func:`find_spec` is the hook); nothing else is imported. When pyspark's
Spark Connect client or session module is about to be imported, the hook imports the package
(wrapt and all), which activates the shim and registers its post-import hooks before the module
executes, exactly as ``import pyspark_safestop`` at the top of a conftest does. The hook then
stays in place, inert.

The pytest plugin is imported through :data:`pytest_plugin` (the ``pytest11`` entry point):
the package reads :data:`activating` while it is imported, to record which path activated it.

Nothing here may break an interpreter's start-up or an ``import pyspark...``: an error becomes
one line on stderr, once, and everything carries on unpatched.

PYTEST_DONT_REWRITE: this module is imported at start-up, before pytest could rewrite it (it
holds no assertions); the marker keeps pytest from warning about that.
"""

# No `from __future__ import annotations` and no typing at run time: every import made here is
# start-up time of every interpreter of the environment (even a __future__ import loads a
# module). Annotations are strings; the names in them exist only for the type checker.
import _thread
import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from importlib.machinery import ModuleSpec
    from types import ModuleType

__all__ = [
    "ENV_ENABLED",
    "WATCHED_MODULES",
    "activating",
    "boot",
    "enabled",
    "find_spec",
    "state",
]

ENV_ENABLED = "PYSPARK_SAFESTOP"
# The same words as the package's settings (a test keeps the two in step). An unrecognised
# value enables; the package itself warns about it once it is imported.
_FALSE_WORDS = frozenset({"0", "false", "no", "off", "disable", "disabled"})

#: The modules whose import activates the package: pyspark's Spark Connect client and session.
WATCHED_MODULES = frozenset({"pyspark.sql.connect.client.core", "pyspark.sql.connect.session"})

#: ``"off"`` (never booted: ``python -S``, or a ``PYTHONPATH`` set-up), ``"disabled"``
#: (``PYSPARK_SAFESTOP=0``), ``"armed"`` (waiting for pyspark's client), ``"fired"`` (the
#: package was imported) or ``"failed"`` (an error was reported on stderr).
state = "off"

#: The activation path the package records while this module imports it (``"pth"`` or
#: ``"pytest-plugin"``), else ``None``.
activating: "str | None" = None

_lock = _thread.RLock()
_local = _thread._local()
_reported = False


def enabled() -> bool:
    """Return whether ``PYSPARK_SAFESTOP`` allows the shim (unset means yes)."""
    raw = os.environ.get(ENV_ENABLED)
    return raw is None or raw.strip().lower() not in _FALSE_WORDS


def boot() -> None:
    """Arm the import hook unless ``PYSPARK_SAFESTOP`` says no. Idempotent; never raises.

    Called by the ``.pth`` line and the ``.start`` entry point. Called late, when pyspark's
    client is already imported, it activates the package at once.
    """
    global state
    try:
        with _lock:
            if state != "off":
                return
            if not enabled():
                state = "disabled"
                return
            me = sys.modules[__name__]
            if me not in sys.meta_path:
                sys.meta_path.insert(0, me)
            state = "armed"
        if any(name in sys.modules for name in WATCHED_MODULES):
            _fire()
    except Exception as error:
        _report(error)


def _report(error: BaseException) -> None:
    global state, _reported
    with _lock:
        state = "failed"
        if _reported:
            return
        _reported = True
    try:
        message = f"{type(error).__name__}: {error}".splitlines()[0]
        sys.stderr.write(f"pyspark-safestop: not activated ({message})\n")
    except Exception:
        pass  # no usable stderr (closed, pythonw): nothing more can be done


def _import_activating(module: str, source: str) -> "ModuleType":
    """Import ``module``, telling the package being imported that ``source`` activates it."""
    global activating
    activating = source
    try:
        __import__(module)
        return sys.modules[module]
    finally:
        activating = None


def _fire() -> None:
    """Import the package, once (it activates the shim)."""
    global state
    # Held across the import: another thread importing pyspark at the same moment waits until
    # the package's hooks are registered. The package never imports pyspark: no lock cycle.
    with _lock:
        if state != "armed":
            return
        state = "fired"
        try:
            # Already imported (a conftest line came first): its own hooks do the patching, and
            # a shim uninstalled on purpose stays uninstalled.
            _import_activating("pyspark_safestop", "pth")
        except Exception as error:
            _report(error)


def find_spec(
    fullname: str,
    path: "Sequence[str] | None" = None,
    target: "ModuleType | None" = None,
) -> "ModuleSpec | None":
    """The import hook (this module is the finder: no class to build at start-up).

    For a watched module: activate the package, then return the spec the other finders give.
    """
    if fullname not in WATCHED_MODULES or getattr(_local, "busy", False):
        return None
    _fire()
    if state != "fired":
        return None
    # The package's post-import hooks come with a finder of their own, put at the front of
    # sys.meta_path, which importlib has already passed for this module: ask the finders here,
    # in order, so that the hooks see this module too.
    me = sys.modules.get(__name__)
    _local.busy = True  # a finder that calls importlib.util.find_spec must not loop back
    try:
        for finder in list(sys.meta_path):
            other = getattr(finder, "find_spec", None)
            if finder is me or other is None:
                continue
            spec: ModuleSpec | None = other(fullname, path, target)
            if spec is not None:
                return spec
        return None
    finally:
        _local.busy = False


def __getattr__(name: str) -> object:
    # `pytest_plugin` is what the pytest11 entry point names: pytest registers the module this
    # returns, and the package records "pytest-plugin" as the path that activated it.
    if name == "pytest_plugin":
        return _import_activating("pyspark_safestop.plugin", "pytest-plugin")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
