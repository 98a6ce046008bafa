"""What the shim sends and where it looks, with stand-in clients (no server needed)."""

from __future__ import annotations

from typing import Any

import pytest

from pyspark_safestop.client import _operations

proto = pytest.importorskip("pyspark.sql.connect.proto")
needs_release_rpc = pytest.mark.skipif(
    not hasattr(proto, "ReleaseSessionRequest"), reason="this client line has no ReleaseSession RPC"
)


class _Builder:
    userAgent = "test-agent"

    def metadata(self) -> list[tuple[str, str]]:
        return [("x-builder", "1")]


class _Stub:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def ReleaseSession(self, request: Any, *, metadata: Any, timeout: float) -> Any:
        self.sent.append({"request": request, "metadata": list(metadata), "timeout": timeout})
        return None


class _ApacheClient:
    _session_id = "session-1"
    _user_id = "user-1"

    def __init__(self) -> None:
        self._builder = _Builder()
        self._stub = _Stub()

    def _handle_error(self, error: Exception) -> None:
        raise error


class _DatabricksClient16(_ApacheClient):
    def metadata(self) -> list[tuple[str, str]]:
        return [*self._builder.metadata(), ("x-databricks-thread", "t1")]


class _DatabricksClientLater(_ApacheClient):
    def _builder_metadata(self) -> list[tuple[str, str]]:
        return [*self._builder.metadata(), ("x-databricks-thread", "t2")]


@needs_release_rpc
@pytest.mark.parametrize(
    ("client_class", "expected"),
    [
        (_ApacheClient, [("x-builder", "1")]),
        (_DatabricksClient16, [("x-builder", "1"), ("x-databricks-thread", "t1")]),
        (_DatabricksClientLater, [("x-builder", "1"), ("x-databricks-thread", "t2")]),
    ],
)
def test_release_sends_what_the_client_itself_would_send(
    client_class: type[_ApacheClient], expected: list[tuple[str, str]]
) -> None:
    client = client_class()
    _operations.release_server_side(client, 2.5)
    (sent,) = client._stub.sent
    assert sent["metadata"] == expected
    assert sent["timeout"] == 2.5
    assert sent["request"].session_id == "session-1"
    assert sent["request"].client_type == "test-agent"
    assert sent["request"].user_context.user_id == "user-1"


def test_server_address_never_shows_the_url() -> None:
    class Builder:
        url = "sc://localhost:1234/;token=secret"
        endpoint = "localhost:1234"

    class Client:
        _builder = Builder()

    assert _operations.server_address(Client()) == "localhost:1234"
    assert _operations.server_address(object()) == "?"
