"""`/healthz`, `/readyz`, `/metrics`: concurrent clients, an idle connection never blocks a probe."""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Iterator

import pytest

from streams.broker.embedded import free_port
from streams.runtime.ops.metrics import MAX_HTTP_CLIENTS, GuardMetrics, serve_http


@pytest.fixture
def port() -> Iterator[int]:
    port = free_port()
    server = serve_http(GuardMetrics(), "127.0.0.1", port, lambda: True, lambda: True)
    try:
        yield port
    finally:
        server.shutdown()
        server.server_close()


def _get(port: int, path: str) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as response:
        return int(response.status)


def test_idle_connections_do_not_block_health_checks(port: int) -> None:
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
    idle[0].sendall(b"GET /metrics HTTP/1.1\r\n")  # ... and one that never finishes its request
    try:
        assert [_get(port, p) for p in ("/healthz", "/readyz", "/metrics")] == [200, 200, 200]
    finally:
        for connection in idle:
            connection.close()


def test_a_flood_of_connections_is_bounded_and_served_after(port: int) -> None:
    flood = [socket.create_connection(("127.0.0.1", port)) for _ in range(MAX_HTTP_CLIENTS + 8)]
    for connection in flood:
        connection.close()
    assert _get(port, "/healthz") == 200
