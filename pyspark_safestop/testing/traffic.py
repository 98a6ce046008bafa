"""gRPC traffic in this process, as a test run has while it starts subprocesses.

With :func:`busy_grpc`, a test can show what its own subprocesses go through while gRPC is
busy: where a child is made by fork (Python 3.9's subprocess, ``os.fork``), gRPC's fork
handlers run in it and can abort or hang it before it runs its command (README, Limitations).
Needs ``grpcio``.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from concurrent import futures

__all__ = ["busy_grpc"]

#: The method every caller calls: the server implements none, so each call ends at once.
_METHOD = "/pyspark_safestop.Busy/Call"


@contextlib.contextmanager
def busy_grpc(callers: int = 4) -> Iterator[None]:
    """Until the end of the block: a gRPC server on loopback and ``callers`` threads calling it
    without pause, each call with a deadline of 10 ms."""
    import grpc

    if callers < 1:
        raise ValueError(f"callers={callers!r}: at least one")
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=callers))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    done = threading.Event()

    def call() -> None:
        # Raw bytes both ways: no (de)serializers.
        method = channel.unary_unary(_METHOD, request_serializer=None, response_deserializer=None)
        while not done.is_set():
            with contextlib.suppress(grpc.RpcError):
                method(b"", timeout=0.01)

    threads = [
        threading.Thread(target=call, name=f"busy-grpc-{n}", daemon=True) for n in range(callers)
    ]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        done.set()
        for thread in threads:
            thread.join(5)
        channel.close()
        server.stop(None)
