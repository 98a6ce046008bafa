"""TCP ports for test servers: leased allocation, and a kill that only ends our own listeners.

Allocation
    :func:`allocate_free_port` returns a port that is free at the time of the call, lies
    outside the kernel's ephemeral range (so outgoing connections are never given it) and is
    *leased* to the calling process: no other process using this module receives it until the
    holder calls :func:`release_port` or exits, however it exits. A lease is a
    ``flock(LOCK_EX)`` on one file per port in a private, per-user directory
    (:func:`lease_directory`, which refuses a directory another user could change); the kernel
    drops the lock when the last descriptor of the holder goes away, including on a crash or
    SIGKILL.

    What a lease cannot do, stated up front:

    * It binds nothing. Between the allocation and the server's own ``bind()``, a process that
      does not use this module can still bind the port. Not by accident of the kernel, which
      picks ports for ``bind(0)`` and outgoing connections from the ephemeral range only, but
      a program asking for that port by number gets it. The lease rules out collisions among
      users of this module; the range rules out the kernel's own choices.
    * Leases coordinate processes of one user that see the same lease directory (see
      :func:`lease_directory`). Other users, or a container with its own temporary folder,
      are only kept off by the bind test.
    * A port from an environment variable (:func:`port_from_env`) is used as given, not leased.
    * A lease file deleted behind the holder's back (a ``/tmp`` cleaner, ``rm -rf``) no longer
      protects its port from other processes.
    * Where a server can bind port 0 and report the port it got (Spark Connect can), that is
      better still: the server holds its port from the start and nothing is left to race.

    After ``fork()`` the child shares the parent's lock (``flock`` locks belong to the open
    file, not the process). The child forgets the parent's leases and closes its copies of the
    descriptors, so it can neither release them nor keep them alive after the parent exits.

Ending listeners
    :func:`kill_process_on_port` ends the processes listening on a TCP port: SIGTERM, a grace
    period, SIGKILL for survivors. It checks every listener before it signals any of them and
    refuses the whole call, signalling nothing, if one of them is owned by another user (even
    when the caller is root), is PID 1 or lower, the calling process or one of its ancestors,
    or does not match the command line the caller expects. Each signal is sent only after the
    process's identity (PID and start time) is checked again. The check is made through a
    pidfd (Linux 5.3+), so the signal reaches exactly the process checked even if its PID is
    reused at that moment; without pidfds a window of microseconds remains between the check
    and ``kill()``. A process is never reaped: it may be the caller's child, whose exit status
    its ``subprocess.Popen`` is waiting for.

:func:`hold_ipv6_loopback` holds ``[::1]:PORT`` for a server listening on ``127.0.0.1:PORT``, so
that a client of ``localhost`` that tries IPv6 first meets no one else's listener there.

:func:`register_cleanup` ends a server the process started (by port or by PID) when the
process exits normally or on SIGTERM or SIGINT, and then hands the signal on to the handler
that was installed before.
"""

from __future__ import annotations

from ._allocation import (
    allocate_free_port,
    ephemeral_port_range,
    hold_ipv6_loopback,
    is_port_free,
    leased_port,
    leased_ports,
    port_from_env,
    release_port,
)
from ._cleanup import register_cleanup
from ._kill import kill_process_on_port
from ._lease_dir import ENV_LEASE_DIR, LeaseDirectoryError, lease_directory, state_directory
from ._listeners import ProcessInfo, listeners_on_port, process_info
from ._refusals import (
    ForeignProcessError,
    KillRefusedError,
    ProtectedProcessError,
    UnexpectedProcessError,
)

__all__ = [
    "ENV_LEASE_DIR",
    "ForeignProcessError",
    "KillRefusedError",
    "LeaseDirectoryError",
    "ProcessInfo",
    "ProtectedProcessError",
    "UnexpectedProcessError",
    "allocate_free_port",
    "ephemeral_port_range",
    "hold_ipv6_loopback",
    "is_port_free",
    "kill_process_on_port",
    "lease_directory",
    "leased_port",
    "leased_ports",
    "listeners_on_port",
    "port_from_env",
    "process_info",
    "register_cleanup",
    "release_port",
    "state_directory",
]
