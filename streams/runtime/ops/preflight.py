"""Checks before `run` starts, each failing with one line an operator can act on.

The command line prints `refusing to start: <message>` and exits 2 for any `StartupRefusedError`:
a librdkafka passthrough value librdkafka rejects, a metrics port already taken, a
bootstrap no broker answers on.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import socket
from contextlib import closing
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from streams.core.errors import RefusalError
from streams.runtime.config import KAFKA_ENV_PREFIX, SECRET_MARKERS, Settings
from streams.runtime.ops.logs import librdkafka_logger


class StartupRefusedError(RefusalError):
    """The job cannot start; the message names the setting, its value and the problem."""


def kafka_client_config(settings: Settings) -> dict[str, Any]:
    """Base configuration of every Kafka client: bootstrap, passthrough, logs into the JSON stream."""
    return {**settings.kafka_base(), "logger": librdkafka_logger()}


class _LastLine(logging.Handler):
    """Keeps the last librdkafka line of the preflight client (its lines are not printed)."""

    def __init__(self) -> None:
        super().__init__()
        self.last: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        # confluent-kafka logs ("%s [%s] %s", facility, client name, text); keep the text
        args = record.args if isinstance(record.args, tuple) else ()
        text = str(args[2]) if len(args) == 3 else record.getMessage()
        self.last = re.sub(r"^\[thrd:[^\]]*\]: ", "", text)


def _quiet_logger() -> tuple[logging.Logger, _LastLine]:
    logger = logging.getLogger("librdkafka.preflight")
    logger.propagate = False
    keeper = _LastLine()
    logger.handlers[:] = [keeper]
    return logger, keeper


def _setting_of(message: str, settings: Settings) -> str | None:
    """The passthrough property a librdkafka configuration error is about."""
    for prop in sorted(settings.kafka, key=len, reverse=True):
        if re.search(rf"\b{re.escape(prop)}\b", message):
            return prop
    return None


def _describe_property(prop: str, value: str) -> str:
    shown = "***" if any(marker in prop for marker in SECRET_MARKERS) else value
    env = KAFKA_ENV_PREFIX + prop.upper().replace(".", "_")
    source = f" (env {env})" if env in os.environ else ""
    return f"setting 'kafka.{prop}' = {shown!r}{source}"


def check_kafka_client(settings: Settings, timeout_s: float) -> None:
    """Build a client from the passthrough properties and ask the bootstrap servers for metadata."""
    logger, keeper = _quiet_logger()
    admin = _admin_client(settings, logger)
    try:
        admin.list_topics(timeout=timeout_s)
    except KafkaException:
        admin.poll(0)  # librdkafka's log lines wait in its queue until a poll serves them
        cause = f": {keeper.last}" if keeper.last else ""
        raise StartupRefusedError(
            f"cannot reach bootstrap {settings.bootstrap_servers} "
            f"(no broker answered after {timeout_s:g} s{cause})"
        ) from None


def check_kafka_properties(settings: Settings) -> None:
    """Refuse passthrough properties librdkafka rejects, without connecting (`check-config`)."""
    _admin_client(settings, _quiet_logger()[0])


def _admin_client(settings: Settings, logger: logging.Logger) -> AdminClient:
    """A client built from the passthrough properties (librdkafka validates them here)."""
    conf: dict[str, Any] = {
        "bootstrap.servers": settings.bootstrap_servers,
        **settings.kafka,
        "logger": logger,
    }
    try:
        admin = AdminClient(conf)
    except KafkaException as exc:
        message = exc.args[0].str() if hasattr(exc.args[0], "str") else str(exc)
        prop = _setting_of(message, settings)
        what = _describe_property(prop, settings.kafka[prop]) if prop else "a librdkafka property"
        raise StartupRefusedError(f"{what} is refused by librdkafka: {message}") from None
    except (TypeError, ValueError) as exc:
        raise StartupRefusedError(f"a librdkafka passthrough property is refused: {exc}") from None
    return admin


def check_metrics_port(host: str, port: int) -> None:
    """Refuse when the metrics address cannot be bound (port in use, address not local)."""
    if port == 0:
        return
    with closing(socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            what = "is in use" if exc.errno == errno.EADDRINUSE else f"cannot be bound ({exc.strerror})"
            source = " (env PARTNER_GUARD_METRICS_PORT)" if "PARTNER_GUARD_METRICS_PORT" in os.environ else ""
            raise StartupRefusedError(
                f"setting 'metrics_port' = {port}{source} on metrics_host {host!r}: the port {what}; "
                "choose a free port"
            ) from None


def preflight(settings: Settings) -> None:
    """Every check `run` makes before it starts anything."""
    check_metrics_port(settings.metrics_host, settings.metrics_port)
    check_kafka_client(settings, settings.bootstrap_timeout_ms / 1000)
