"""Clients built like a known line with a difference of their own (Databricks Connect 16.1:
4.0's pool, 3.5's stub attribute): the watchdog moves every stub the client object holds to
its intercepted channel, and leaves a read-only property alone."""

from __future__ import annotations

from typing import Any

import pytest

from pyspark_safestop.client import _layouts, _operations

pytest.importorskip("grpc")


class _Channel:
    """Enough of a gRPC channel for a stub to be built on it."""

    def unary_unary(self, *args: Any, **kwargs: Any) -> object:
        return object()

    unary_stream = stream_unary = stream_stream = unary_unary


class _Artifacts:
    def __init__(self) -> None:
        self._stub = "artifacts"


class _Like40:
    """4.0's client: the stub in _internal_stub, _stub a read-only property."""

    def __init__(self) -> None:
        self._internal_stub = "old"
        self._artifact_manager = _Artifacts()
        self._channel = "old channel"

    @property
    def _stub(self) -> Any:
        return self._internal_stub


class _LikeDatabricks16:
    """Databricks Connect 16.1's client: built like 4.0, its stub still in _stub."""

    def __init__(self) -> None:
        self._stub = "old"
        self._artifact_manager = _Artifacts()
        self._channel = "old channel"


@pytest.mark.parametrize(
    ("cls", "attribute"), [(_Like40, "_internal_stub"), (_LikeDatabricks16, "_stub")]
)
def test_every_stub_the_client_holds_moves_to_the_new_channel(cls: type, attribute: str) -> None:
    pytest.importorskip("pyspark.sql.connect.proto.base_pb2_grpc")
    client = cls()
    channel = _Channel()
    _operations.replace_channel(client, _layouts.LAYOUT_4_0, channel)
    assert client._channel is channel
    assert type(getattr(client, attribute)).__name__ == "SparkConnectServiceStub"
    assert type(client._artifact_manager._stub).__name__ == "SparkConnectServiceStub"
    assert "_stub" not in vars(client) or cls is _LikeDatabricks16
