"""librdkafka security properties (`kafka:` settings) translated to Faust broker credentials.

The Faust engine talks to Kafka through aiokafka, the state reader through librdkafka; both
must reach the same secured cluster from one set of settings. Translated:

    security.protocol                 PLAINTEXT | SSL | SASL_PLAINTEXT | SASL_SSL
    sasl.mechanism (or .mechanisms)   PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512
    sasl.username, sasl.password
    ssl.ca.location, ssl.certificate.location, ssl.key.location, ssl.key.password

Any other property refuses the start (it would silently not apply to aiokafka).
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping

import faust
from aiokafka.helpers import create_ssl_context
from faust.types.auth import CredentialsT

from streams.runtime.ops.startup import StartupError

PROTOCOLS = frozenset({"PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"})
SASL_MECHANISMS = frozenset({"PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"})
TRANSLATED = frozenset(
    {
        "security.protocol",
        "sasl.mechanism",
        "sasl.mechanisms",
        "sasl.username",
        "sasl.password",
        "ssl.ca.location",
        "ssl.certificate.location",
        "ssl.key.location",
        "ssl.key.password",
    }
)


def _ssl_context(kafka: Mapping[str, str]) -> ssl.SSLContext:
    context: ssl.SSLContext = create_ssl_context(
        cafile=kafka.get("ssl.ca.location"),
        certfile=kafka.get("ssl.certificate.location"),
        keyfile=kafka.get("ssl.key.location"),
        password=kafka.get("ssl.key.password"),
    )
    return context


def broker_credentials(kafka: Mapping[str, str]) -> CredentialsT | None:
    """Faust credentials for the librdkafka properties, or None for plaintext."""
    unknown = sorted(set(kafka) - TRANSLATED)
    if unknown:
        raise StartupError(
            f"the Faust engine cannot translate librdkafka properties {unknown} to aiokafka; "
            f"it understands {sorted(TRANSLATED)} (or use the kafka engine)"
        )
    protocol = kafka.get("security.protocol", "PLAINTEXT").upper()
    if protocol not in PROTOCOLS:
        raise StartupError(f"security.protocol '{protocol}' is not one of {sorted(PROTOCOLS)}")
    if protocol == "PLAINTEXT":
        return None
    if protocol == "SSL":
        return faust.SSLCredentials(_ssl_context(kafka))
    mechanism = kafka.get("sasl.mechanism", kafka.get("sasl.mechanisms", "PLAIN")).upper()
    if mechanism not in SASL_MECHANISMS:
        raise StartupError(f"sasl.mechanism '{mechanism}' is not one of {sorted(SASL_MECHANISMS)}")
    return faust.SASLCredentials(
        username=kafka.get("sasl.username"),
        password=kafka.get("sasl.password"),
        mechanism=mechanism,
        ssl_context=_ssl_context(kafka) if protocol == "SASL_SSL" else None,
    )
