"""A Schema Registry on loopback: a real HTTP server the real client talks to, never a mock of it.

It answers `GET /schemas/ids/<id>` from a table of schema texts (404 for any other id), and
can stall: each request then waits `stall_s` before it is answered (or until `release()`),
as a registry that accepts connections and never replies does. It counts what it was asked.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class FakeRegistry:
    """The server's state: schemas by id, the stall, and the requests seen."""

    def __init__(self, schemas: dict[int, str] | None = None, stall_s: float = 0.0) -> None:
        self.schemas = dict(schemas or {})
        self.stall_s = stall_s
        self.asked: list[int] = []
        self._lock = threading.Lock()
        self._released = threading.Event()
        self.url = ""

    @property
    def requests(self) -> int:
        """How many schema lookups reached the server."""
        with self._lock:
            return len(self.asked)

    def release(self) -> None:
        """End every stall now (and answer the stalled requests)."""
        self._released.set()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        registry = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                match = re.fullmatch(r"/schemas/ids/(\d+)(\?.*)?", self.path)
                schema_id = int(match.group(1)) if match else -1
                with registry._lock:
                    registry.asked.append(schema_id)
                if registry.stall_s:
                    registry._released.wait(registry.stall_s)
                text = registry.schemas.get(schema_id)
                if text is None:
                    self._reply(404, {"error_code": 40403, "message": "Schema not found"})
                else:
                    self._reply(200, {"schema": text})

            def _reply(self, status: int, body: dict[str, Any]) -> None:
                payload = json.dumps(body).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:
                    pass  # the client gave up waiting

            def log_message(self, format: str, *args: Any) -> None:
                return

        return Handler


@contextmanager
def fake_registry(schemas: dict[int, str] | None = None, stall_s: float = 0.0) -> Iterator[FakeRegistry]:
    """Serve a `FakeRegistry` on a free loopback port for the block; its `url` is set."""
    registry = FakeRegistry(schemas, stall_s)
    server = ThreadingHTTPServer(("127.0.0.1", 0), registry._handler())
    server.daemon_threads = True
    server.block_on_close = False
    registry.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, name="fake-registry", daemon=True)
    thread.start()
    try:
        yield registry
    finally:
        registry.release()
        server.shutdown()
        server.server_close()
