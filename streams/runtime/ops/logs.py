"""Structured (JSON Lines) logs on stderr. Log calls carry counts and ids, never payloads.

librdkafka's own log lines (connection refused, broker down, ...) come through the
`librdkafka` logger, handed to every client as its `logger`, so stderr stays JSON lines;
they are rate-limited (`RateLimit`), since a lost broker makes librdkafka repeat itself
several times a second.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime

import orjson

LIBRDKAFKA_LOGGER = "librdkafka"
# librdkafka lines allowed through per window; the rest are counted and reported once
LIBRDKAFKA_LINES_PER_WINDOW = 10
LIBRDKAFKA_WINDOW_S = 30.0


def iso_time(created: float) -> str:
    """RFC 3339 UTC time with milliseconds: `2026-11-29T10:04:56.123+00:00`."""
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time (ms, UTC offset), level, logger, message."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": iso_time(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


class RateLimit(logging.Filter):
    """At most `limit` records a `window_s`; the next record after a window says how many were dropped."""

    def __init__(
        self,
        limit: int = LIBRDKAFKA_LINES_PER_WINDOW,
        window_s: float = LIBRDKAFKA_WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        self.limit, self.window_s, self.clock = limit, window_s, clock
        self._window_start = -window_s
        self._passed = 0
        self.suppressed = 0
        self._lock = threading.Lock()  # librdkafka logs from its own threads

    def filter(self, record: logging.LogRecord) -> bool:
        with self._lock:
            now = self.clock()
            if now - self._window_start >= self.window_s:
                if self.suppressed:
                    record.msg = f"{record.msg} ({self.suppressed} earlier librdkafka line(s) suppressed)"
                self._window_start, self._passed, self.suppressed = now, 0, 0
            if self._passed < self.limit:
                self._passed += 1
                return True
            self.suppressed += 1
            return False


def librdkafka_logger() -> logging.Logger:
    """The logger every Kafka client gets, so librdkafka's lines become rate-limited JSON."""
    logger = logging.getLogger(LIBRDKAFKA_LOGGER)
    if not any(isinstance(f, RateLimit) for f in logger.filters):
        logger.addFilter(RateLimit())
    return logger


def configure_logging(level: str = "INFO") -> None:
    """Send JSON logs to stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
