"""Prometheus metrics and the `/metrics`, `/healthz`, `/readyz` endpoints on one port.

The server answers each connection in its own thread, with a socket timeout, and at most
`MAX_HTTP_CLIENTS` at once (more are closed at once): an idle or slow client never
blocks a health check, and a flood of connections cannot exhaust threads.
"""

from __future__ import annotations

import threading
import time
from bisect import bisect_left
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Sequence
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, make_wsgi_app

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# End-to-end latency is judged against 250 ms at p99: finer steps around it, so a quantile read
# from the buckets is a bound within 25-50 ms of the truth there rather than a factor of 2.
END_TO_END_BUCKETS = (
    *(0.01, 0.025, 0.05, 0.075, 0.1, 0.125, 0.15, 0.175, 0.2, 0.225, 0.25, 0.3, 0.4, 0.5),
    *(0.75, 1.0, 2.5, 5.0, 10.0, 30.0),
)
# A scraper or probe sends its request at once; a connection silent this long is dropped.
HTTP_TIMEOUT_S = 5.0
# Prometheus, a couple of probes and a human: far fewer; more would only be a flood.
MAX_HTTP_CLIENTS = 32


class GuardMetrics:
    """All metrics of one guard instance, in their own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.records_in = Counter(
            "partner_guard_records_in_total", "Input records consumed.", ["topic"], registry=r
        )
        self.decisions = Counter(
            "partner_guard_decisions_total",
            "Decisions per partner and verdict.",
            ["partner", "verdict"],
            registry=r,
        )
        self.block_reasons = Counter(
            "partner_guard_block_reasons_total",
            "Blocked decisions per partner and reason code.",
            ["partner", "reason"],
            registry=r,
        )
        self.fields_stripped = Counter(
            "partner_guard_fields_stripped_total",
            "Listed fields dropped from forwarded records by a transform.",
            ["partner"],
            registry=r,
        )
        self.leaks_caught = Counter(
            "partner_guard_leaks_caught_total",
            "Records the leak scan stopped after projection.",
            ["partner"],
            registry=r,
        )
        self.undeclared_fields = Counter(
            "partner_guard_undeclared_fields_total",
            "Input events carrying a key no section declares (top level, device, context), by path.",
            ["path"],
            registry=r,
        )
        self.registry_open = Gauge(
            "partner_guard_schema_registry_open",
            "1 while the Schema Registry circuit is open (new schema ids blocked as schema_unknown).",
            registry=r,
        )
        self.transactions = Counter(
            "partner_guard_transactions_total", "Transactions by outcome.", ["outcome"], registry=r
        )
        self.optout_notices = Counter(
            "partner_guard_optout_notices_total",
            "Opt-out and deletion notices sent (committed), by partner and kind.",
            ["partner", "kind"],
            registry=r,
        )
        self.consent_changes = Counter(
            "partner_guard_consent_changes_total",
            "Consent-topic records the notice path acted on (committed), by what they were.",
            ["kind"],
            registry=r,
        )
        self.batch_seconds = Histogram(
            "partner_guard_batch_duration_seconds",
            "Time to decide and commit one batch.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.end_to_end_seconds = Histogram(
            "partner_guard_end_to_end_latency_seconds",
            "From input record timestamp to committed output.",
            buckets=END_TO_END_BUCKETS,
            registry=r,
        )
        self.state_entries = Gauge(
            "partner_guard_state_entries", "Entries in a state table.", ["table"], registry=r
        )
        self.state_lag = Gauge(
            "partner_guard_state_lag_records",
            "State-topic records not yet applied at the last catch-up.",
            ["topic"],
            registry=r,
        )
        self.state_invalid = Counter(
            "partner_guard_state_invalid_records_total",
            "State records that could not be decoded (stored fail-closed).",
            ["topic"],
            registry=r,
        )
        self.consumer_lag = Gauge(
            "partner_guard_consumer_lag_records",
            "Input records not yet consumed.",
            ["topic", "partition"],
            registry=r,
        )
        self.group_lag = Gauge(
            "partner_guard_group_lag_records",
            "End offset minus the consumer group's committed offset, per input partition, whoever "
            "owns it (take max over instances, not sum).",
            ["topic", "partition"],
            registry=r,
        )
        self.assigned_partitions = Gauge(
            "partner_guard_assigned_partitions", "Input partitions this instance owns.", registry=r
        )
        self.state_store_bytes = Gauge(
            "partner_guard_state_store_bytes", "Bytes of the disk state store on disk", ["table"], registry=r
        )
        self.state_checkpoint_age = Gauge(
            "partner_guard_state_checkpoint_age_seconds",
            "Seconds since the disk state store last checkpointed",
            ["table"],
            registry=r,
        )
        self.state_rebuilds = Counter(
            "partner_guard_state_rebuilds",
            "Disk state stores rebuilt from their topic at start",
            ["table"],
            registry=r,
        )
        self.ready = Gauge(
            "partner_guard_ready", "1 when state is loaded and the job is deciding.", registry=r
        )
        self.ruleset = Info("partner_guard_ruleset", "The ruleset in force.", registry=r)
        # When this process started: the crash-loop alert counts its changes.
        self.start_time = Gauge(
            "partner_guard_start_time_seconds", "Unix time this guard process started.", registry=r
        )
        self.start_time.set_to_current_time()


def observe_all(histogram: Histogram, amounts: Sequence[float]) -> None:
    """`histogram.observe(a)` for every amount, with one update per bucket touched.

    prometheus_client has no bulk observe; this reads its private `_upper_bounds`, `_buckets`
    and `_sum` (pinned against the exposition output by `tests/runtime/ops/test_metrics.py`). An
    amount goes to the first bucket whose bound is >= it, as `observe` does. The sum is added
    once, so it can differ from one-by-one additions in the last bits of the float. A NaN
    (which `observe` counts in no bucket, and bisect would put in the first) goes through
    `observe` itself.
    """
    if not amounts:
        return
    histogram._raise_if_not_observable()  # type: ignore[no-untyped-call]  # a labelled parent cannot observe
    numbers = [amount for amount in amounts if amount == amount]
    for _ in range(len(amounts) - len(numbers)):
        histogram.observe(float("nan"))
    bounds, buckets = histogram._upper_bounds, histogram._buckets
    for index, count in Tally([bisect_left(bounds, amount) for amount in numbers]).items():
        buckets[index].inc(count)
    if numbers:
        histogram._sum.inc(sum(numbers))


class _QuietHandler(WSGIRequestHandler):
    timeout = HTTP_TIMEOUT_S  # socket timeout of each connection (StreamRequestHandler)

    def log_message(self, format: str, *args: Any) -> None:
        return


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    """One daemon thread per connection, at most `MAX_HTTP_CLIENTS` of them."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._slots = threading.BoundedSemaphore(MAX_HTTP_CLIENTS)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)  # too many at once: close, never queue behind them
            return
        try:
            super().process_request(request, client_address)
        except Exception:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        return  # a client that timed out or hung up is not the guard's error (and logs no payload)


def serve_http(
    metrics: GuardMetrics | CollectorRegistry,
    host: str,
    port: int,
    is_ready: Callable[[], bool],
    is_healthy: Callable[[], bool],
) -> WSGIServer:
    """Serve `/metrics`, `/healthz` and `/readyz` in a daemon thread; returns the server."""
    metrics_app = make_wsgi_app(metrics if isinstance(metrics, CollectorRegistry) else metrics.registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path in ("/healthz", "/readyz"):
            ok = is_healthy() if path == "/healthz" else is_ready()
            start_response("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "text/plain")])
            return [b"ok\n" if ok else b"not ready\n"]
        result: Iterable[bytes] = metrics_app(environ, start_response)
        return result

    server = make_server(host, port, app, server_class=_ThreadingServer, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="metrics-http", daemon=True).start()
    return server


class Heartbeat:
    """The main loop's pulse, for `/healthz`."""

    def __init__(self, max_silence_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_silence_s = max_silence_s
        self._clock = clock
        self._last = clock()

    def beat(self) -> None:
        """Record that the loop is alive."""
        self._last = self._clock()

    def alive(self) -> bool:
        """True when the loop beat recently."""
        return self._clock() - self._last < self.max_silence_s
