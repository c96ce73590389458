"""A small TCP fault proxy for the reliability tests: latency, cut connections, black-holes.

It sits between Kafka clients and the embedded broker on loopback, in its own thread with its
own asyncio loop. librdkafka learns broker addresses from metadata, so the broker must
advertise the proxy's port (`start_broker_behind_proxy`); otherwise clients would bypass it
after the first request.

Faults can be aimed at some clients only: every Kafka request header carries the client's
`client.id`, read here from the first request of each connection. The guard runs with its
own `client.id`, so the test's producers and readers pass untouched while the guard suffers.

- latency: every chunk, both ways, is delivered `latency_s` later (order kept, no rate cap);
- `cut()`: each targeted connection is cut mid-request — the next chunk towards the broker is
  half forwarded, then both sides are reset;
- black-hole: targeted bytes are discarded (new connections are accepted and go nowhere);
  when it ends, every connection that lost bytes is reset, as a long partition ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from streams.broker.embedded import EmbeddedBroker, broker_binary, free_port, wait_for_port

CHUNK = 65536
# Kafka request: int32 size, int16 api_key, int16 api_version, int32 correlation id,
# nullable string client_id (int16 length + bytes).
CLIENT_ID_LENGTH_AT = 12


def client_id_of(first_request: bytes) -> str | None:
    """The client.id in the header of a Kafka request, if the chunk holds it."""
    if len(first_request) < CLIENT_ID_LENGTH_AT + 2:
        return None
    (length,) = struct.unpack_from(">h", first_request, CLIENT_ID_LENGTH_AT)
    start = CLIENT_ID_LENGTH_AT + 2
    if length < 0 or len(first_request) < start + length:
        return None
    return first_request[start : start + length].decode("utf-8", "replace")


@dataclass(eq=False)
class _Connection:
    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter
    client_id: str | None = None
    targeted: bool = True
    cut_pending: bool = False
    lost_bytes: bool = False
    closed: bool = False

    def reset(self) -> None:
        """Close both sides at once, without flushing (the peer sees a reset)."""
        if not self.closed:
            self.closed = True
            self.client.transport.abort()
            self.upstream.transport.abort()


@dataclass
class ProxyStats:
    """What the proxy did, for the test's printout."""

    connections: int = 0
    cut: int = 0
    reset_after_blackhole: int = 0
    bytes_discarded: int = 0
    client_ids: set[str] = field(default_factory=set)


class FaultProxy:
    """`127.0.0.1:port` → `127.0.0.1:upstream_port`, with faults for targeted clients."""

    def __init__(self, upstream_port: int, port: int | None = None, target_prefix: str = "") -> None:
        self.upstream_port = upstream_port
        self.port = port or free_port()
        self.target_prefix = target_prefix
        self.latency_s = 0.0
        self.blackholed = False
        self.stats = ProxyStats()
        self._connections: set[_Connection] = set()
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="fault-proxy", daemon=True)
        self._server: asyncio.Server | None = None

    # -- control (called from the test thread) ------------------------------------------------

    def start(self) -> FaultProxy:
        """Listen, and return once connections are accepted."""
        self._thread.start()
        self._started.wait(10)
        return self

    def stop(self) -> None:
        """Reset every connection and stop the loop."""
        self._call(self._shutdown)
        self._thread.join(10)

    def set_latency(self, seconds: float) -> None:
        """Delay every targeted chunk by `seconds` (0 turns it off)."""
        self.latency_s = seconds

    def cut(self) -> None:
        """Cut every targeted connection mid-request (idle ones after a second)."""
        self._call(self._cut_all)

    def blackhole(self, on: bool) -> None:
        """Start or end discarding targeted traffic; ending it resets connections that lost bytes."""
        self.blackholed = on
        if not on:
            self._call(self._reset_lost)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the loop thread ------------------------------------------------------------------------

    def _call(self, action: Callable[[], object]) -> None:
        done = threading.Event()

        def run() -> None:
            try:
                action()
            finally:
                done.set()

        self._loop.call_soon_threadsafe(run)
        done.wait(10)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def listen() -> None:
            self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
            self._started.set()

        self._loop.run_until_complete(listen())
        self._loop.run_forever()

    def _shutdown(self) -> None:
        for connection in list(self._connections):
            connection.reset()
        if self._server is not None:
            self._server.close()
        self._loop.call_later(0.1, self._loop.stop)

    def _cut_all(self) -> None:
        victims = [c for c in self._connections if c.targeted and not c.closed]
        for connection in victims:
            connection.cut_pending = True

        def cut_idle() -> None:
            for connection in victims:
                if not connection.closed:
                    self.stats.cut += 1
                    connection.reset()

        self._loop.call_later(1.0, cut_idle)

    def _reset_lost(self) -> None:
        for connection in list(self._connections):
            if connection.lost_bytes and not connection.closed:
                self.stats.reset_after_blackhole += 1
                connection.reset()

    async def _accept(self, client_reader: asyncio.StreamReader, client: asyncio.StreamWriter) -> None:
        try:
            upstream_reader, upstream = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            client.transport.abort()
            return
        connection = _Connection(client, upstream)
        self._connections.add(connection)
        self.stats.connections += 1
        try:
            await asyncio.gather(
                self._pump(client_reader, upstream, connection, to_broker=True),
                self._pump(upstream_reader, client, connection, to_broker=False),
            )
        finally:
            connection.reset()
            self._connections.discard(connection)

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        connection: _Connection,
        to_broker: bool,
    ) -> None:
        """Copy one direction; a delivery task applies the latency so reading never stalls."""
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
        deliver = asyncio.ensure_future(self._deliver(queue, writer, connection))
        try:
            while not connection.closed:
                try:
                    data = await reader.read(CHUNK)
                except (ConnectionError, OSError):
                    break
                if not data:
                    break
                if to_broker and connection.client_id is None:
                    connection.client_id = client_id_of(data) or "?"
                    connection.targeted = connection.client_id.startswith(self.target_prefix)
                    self.stats.client_ids.add(connection.client_id)
                if connection.targeted and self.blackholed:
                    connection.lost_bytes = True
                    self.stats.bytes_discarded += len(data)
                    continue
                if connection.targeted and to_broker and connection.cut_pending:
                    writer.write(data[: max(1, len(data) // 2)])  # half a request, then gone
                    self.stats.cut += 1
                    connection.reset()
                    break
                delay = self.latency_s if connection.targeted else 0.0
                queue.put_nowait((time.monotonic() + delay, data))
        finally:
            queue.put_nowait(None)
            with contextlib.suppress(Exception):
                await deliver
            connection.reset()

    async def _deliver(
        self,
        queue: asyncio.Queue[tuple[float, bytes] | None],
        writer: asyncio.StreamWriter,
        connection: _Connection,
    ) -> None:
        while (item := await queue.get()) is not None:
            due, data = item
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if connection.closed:
                return
            writer.write(data)
            try:
                await writer.drain()
            except (ConnectionError, OSError):
                connection.reset()
                return


def start_broker_behind_proxy(
    log_path: Path | None = None, target_prefix: str = ""
) -> tuple[EmbeddedBroker, FaultProxy]:
    """Tansu listening on one port and advertising the proxy's, and the proxy in front of it."""
    listen, advertised = free_port(), free_port()
    log: IO[bytes] | int = open(log_path, "wb") if log_path else subprocess.DEVNULL  # noqa: SIM115
    command = [
        broker_binary(),
        "broker",
        "--listener-url",
        f"tcp://127.0.0.1:{listen}",
        "--advertised-listener-url",
        f"tcp://127.0.0.1:{advertised}",
    ]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    broker = EmbeddedBroker(advertised, process, log_path)  # clients bootstrap via the proxy
    try:
        wait_for_port(listen)
        proxy = FaultProxy(listen, advertised, target_prefix).start()
    except Exception:
        broker.stop()
        raise
    return broker, proxy


@contextlib.contextmanager
def broker_behind_proxy(
    log_path: Path | None = None, target_prefix: str = ""
) -> Iterator[tuple[EmbeddedBroker, FaultProxy]]:
    """Context manager form: the broker (its `bootstrap` is the proxy's) and the proxy, both
    stopped at the end."""
    broker, proxy = start_broker_behind_proxy(log_path, target_prefix)
    try:
        yield broker, proxy
    finally:
        proxy.stop()
        broker.stop()
