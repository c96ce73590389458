"""How the blocked topic holds the original record: `full`, `redacted` or `encrypted`.

- full: the raw input bytes, base64.
- redacted: the event as JSON with every tagged field (content, url, search, pii,
  identifier) and every undeclared property replaced by a keyed hash; undecodable input is
  kept only as its SHA-256. Replay cannot re-decide these exactly (see docs/records.md).
- encrypted: AES-256-GCM over the raw bytes, the source reference as associated data, the
  key id recorded so keys can rotate; replay decrypts with the keyring. Only the
  ciphertext counts: a record that also carries plaintext is treated as tampered.

In redacted and encrypted modes the identifiers outside the payload are keyed hashes too:
the input key (`source.key_redacted`, and the blocked record's own Kafka key), the
`event_id`, and the subjects and account id in the state snapshot.

Keys come from the environment (`PARTNER_GUARD_PAYLOAD_KEYS="id:base64,..."`, the first
one encrypts) or a file of such lines, never from rules or the blocked topic.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from streams.core.errors import PartnerGuardError, RefusalError
from streams.core.schema import FORBIDDEN_TAGS, privacy_tags

PayloadMode = Literal["full", "redacted", "encrypted"]
KEYS_ENV = "PARTNER_GUARD_PAYLOAD_KEYS"
# Reader member of a `reference`-mode record: the original fetched from its source topic.
FETCHED_ORIGINAL = "_source_original_b64"
_SENSITIVE_PREFIXES = ("pii:", "identifier:")
# Input keys are copied into blocked records only up to this size (then only their hash):
# a key is as unbounded as a value, and must never make a blocked record too large.
MAX_KEY_BYTES = 1024


class PayloadKeyError(RefusalError):
    """Payload keys are missing or malformed."""


class PayloadTamperedError(PayloadKeyError):
    """An encrypted payload failed authentication: altered, or not ours."""


@dataclass(frozen=True)
class Keyring:
    """AES-256 keys by id; `current` encrypts, any of them decrypts."""

    keys: Mapping[str, bytes]
    current: str

    def __repr__(self) -> str:
        return f"Keyring(ids={sorted(self.keys)}, current={self.current!r})"

    @classmethod
    def parse(cls, text: str) -> Keyring:
        """Parse `id:base64key` entries separated by commas or newlines."""
        keys: dict[str, bytes] = {}
        order: list[str] = []
        for entry in text.replace("\n", ",").split(","):
            if not entry.strip():
                continue
            key_id, sep, encoded = entry.strip().partition(":")
            try:
                key = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError):
                key = b""
            if not sep or len(key) != 32:
                raise PayloadKeyError(f"payload key '{key_id}' must be 'id:<base64 of 32 bytes>'")
            keys[key_id] = key
            order.append(key_id)
        if not keys:
            raise PayloadKeyError(f"no payload keys: set {KEYS_ENV} or a keys file")
        return cls(keys, order[0])

    @classmethod
    def load(cls, keys_file: Path | None = None) -> Keyring:
        """From the environment, else from the file."""
        text = os.environ.get(KEYS_ENV, "")
        if not text and keys_file is not None:
            text = keys_file.read_text()
        return cls.parse(text)

    @classmethod
    def ephemeral(cls) -> Keyring:
        """A random key for local runs (`--dev`)."""
        return cls({"dev": secrets.token_bytes(32)}, "dev")


_FULL_PAYLOAD_HEAD = b'"payload_mode":"full","original_b64":"'
_KEY_B64_HEAD = b'"key_b64":"'
_NO_KEY_JSON = b'"key_b64":null'


def _associated_data(source: Mapping[str, Any]) -> bytes:
    return f"{source.get('topic')}/{source.get('partition')}/{source.get('offset')}".encode()


class PayloadFormatError(PartnerGuardError, ValueError):
    """A blocked record's payload members are not what its payload mode writes."""


def _redact_value(key: bytes, value: Any) -> str:
    digest = hmac.new(key, orjson.dumps(value, option=orjson.OPT_SORT_KEYS), hashlib.sha256).hexdigest()
    return "redacted:" + digest[:32]


def _sensitive(tag: str | None) -> bool:
    return tag is None or tag in FORBIDDEN_TAGS or tag.startswith(_SENSITIVE_PREFIXES)


def _redact(node: Any, path: str, key: bytes) -> Any:
    if isinstance(node, dict):
        return {k: _redact(v, f"{path}.{k}" if path else str(k), key) for k, v in node.items()}
    return _redact_value(key, node) if _sensitive(privacy_tags().tag(path)) else node


def redact_event(raw: bytes, key: bytes) -> dict[str, Any] | None:
    """The event with sensitive values replaced by keyed hashes; None when not a JSON object."""
    try:
        event = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return _redact(event, "", key) if isinstance(event, dict) else None


class PayloadProtector:
    """Builds the `original*` members of a blocked record for the configured mode."""

    def __init__(self, mode: PayloadMode, keyring: Keyring | None = None) -> None:
        if mode != "full" and keyring is None:
            raise PayloadKeyError(f"payload mode '{mode}' needs keys: set {KEYS_ENV}")
        self.mode = mode
        self.keyring = keyring

    @property
    def _hash_key(self) -> bytes | None:
        """The key of the identifier hashes; None in full mode (identifiers stay readable)."""
        if self.mode == "full" or self.keyring is None:
            return None
        return self.keyring.keys[self.keyring.current]

    def identifier(self, value: str | None) -> str | None:
        """An identifier as the blocked record may carry it (keyed hash unless full mode)."""
        key = self._hash_key
        return value if key is None or value is None else _redact_value(key, value)

    def input_key(self, raw_key: bytes | None) -> tuple[bytes | None, dict[str, Any]]:
        """The blocked record's Kafka key, and the members describing the input key.

        Full mode keeps a key up to `MAX_KEY_BYTES` (base64), larger ones only as their
        SHA-256; the other modes keep a keyed hash of any key.
        """
        if raw_key is None:
            return None, {"key_b64": None}
        key = self._hash_key
        if key is not None:
            hashed = "redacted:" + hmac.new(key, raw_key, hashlib.sha256).hexdigest()[:32]
            return hashed.encode(), {"key_b64": None, "key_redacted": hashed}
        if len(raw_key) <= MAX_KEY_BYTES:
            return raw_key, {"key_b64": base64.b64encode(raw_key).decode()}
        digest = hashlib.sha256(raw_key).hexdigest()
        return digest.encode(), {"key_b64": None, "key_sha256": digest, "key_size": len(raw_key)}

    def input_key_serialized(self, raw_key: bytes | None) -> tuple[bytes | None, bytes]:
        """`input_key`, its members as JSON (`orjson.dumps` without braces); the common cases
        (no key, a full-mode key up to `MAX_KEY_BYTES`) written straight from the bytes."""
        if raw_key is None:
            return None, _NO_KEY_JSON
        if self._hash_key is None and len(raw_key) <= MAX_KEY_BYTES:
            return raw_key, _KEY_B64_HEAD + binascii.b2a_base64(raw_key, newline=False) + b'"'
        kafka_key, members = self.input_key(raw_key)
        return kafka_key, orjson.dumps(members)[1:-1]

    def snapshot(self, dumped: dict[str, Any]) -> dict[str, Any]:
        """A dumped state snapshot with its subjects and account id hashed (unless full mode)."""
        key = self._hash_key
        if key is None:
            return dumped
        consent = [{**c, "subject": _redact_value(key, c.get("subject"))} for c in dumped.get("consent", ())]
        status = dumped.get("signup_status")
        if isinstance(status, dict):
            status = {**status, "account_id": _redact_value(key, status.get("account_id"))}
        return {**dumped, "consent": consent, "signup_status": status}

    def protect(self, raw: bytes, source: Mapping[str, Any]) -> dict[str, Any]:
        """Members to merge into the blocked record."""
        return self.protect_serialized(raw, source)[0]

    def protect_serialized(self, raw: bytes, source: Mapping[str, Any]) -> tuple[dict[str, Any], bytes]:
        """The members `protect` gives, and the same members as JSON (`orjson.dumps` without braces).

        Full mode writes the JSON straight from the base64 bytes, which need no escaping: no
        second pass over a ~1 KB string per input.
        """
        if self.mode == "full" or self.keyring is None:
            encoded = binascii.b2a_base64(raw, newline=False)
            return {"payload_mode": "full", "original_b64": encoded.decode("ascii")}, (
                _FULL_PAYLOAD_HEAD + encoded + b'"'
            )
        members = self._protect_keyed(raw, source, self.keyring)
        return members, orjson.dumps(members)[1:-1]

    def _protect_keyed(self, raw: bytes, source: Mapping[str, Any], keyring: Keyring) -> dict[str, Any]:
        key = keyring.keys[keyring.current]
        if self.mode == "redacted":
            return {
                "payload_mode": "redacted",
                "original_b64": None,
                "original_redacted": redact_event(raw, key),
                "key_id": keyring.current,
            }
        nonce = secrets.token_bytes(12)
        ciphertext = AESGCM(key).encrypt(nonce, raw, _associated_data(source))
        return {
            "payload_mode": "encrypted",
            "original_b64": None,
            "key_id": keyring.current,
            "nonce_b64": base64.b64encode(nonce).decode(),
            "ciphertext_b64": base64.b64encode(ciphertext).decode(),
        }


def _b64decode(text: Any, what: str) -> bytes:
    if not isinstance(text, str):
        raise PayloadFormatError(f"{what} is not a base64 string")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise PayloadFormatError(f"{what} is not valid base64") from None


def unhash_key(blocked: Mapping[str, Any], keyring: Keyring | None) -> bytes | None:
    """The key that hashed a redacted or encrypted record's identifiers; None when unknown."""
    if keyring is None:
        return None
    return keyring.keys.get(str(blocked.get("key_id")))


def redacted_identifier(key: bytes, value: str) -> str:
    """How `PayloadProtector.identifier` writes `value` under `key` (replay maps back with it)."""
    return _redact_value(key, value)


def reveal(blocked: Mapping[str, Any], keyring: Keyring | None) -> bytes | None:
    """The original bytes of a blocked record; None when redacted or reduced.

    Only the member of the record's own payload mode counts: plaintext beside a
    ciphertext (or in a redacted record) is tampering, never a way around the key.
    """
    mode = blocked.get("payload_mode", "full")
    if mode == "full":
        original = blocked.get("original_b64")
        return None if original is None else _b64decode(original, "original_b64")
    if blocked.get("original_b64") is not None:
        raise PayloadTamperedError(f"plaintext original beside a {mode} payload")
    if mode == "redacted":
        return None
    if mode == "reference":  # read back from the source topic by the audit reader, SHA-256 checked
        fetched = blocked.get(FETCHED_ORIGINAL)
        return None if fetched is None else _b64decode(fetched, FETCHED_ORIGINAL)
    if mode != "encrypted":
        raise PayloadFormatError(f"unknown payload mode {mode!r}")
    if blocked.get("original_redacted") is not None:
        raise PayloadTamperedError("redacted original beside an encrypted payload")
    if not blocked.get("ciphertext_b64"):
        return None
    if keyring is None or blocked.get("key_id") not in keyring.keys:
        raise PayloadKeyError(f"no payload key with id '{blocked.get('key_id')}' to decrypt with")
    nonce = _b64decode(blocked.get("nonce_b64"), "nonce_b64")
    ciphertext = _b64decode(blocked.get("ciphertext_b64"), "ciphertext_b64")
    if len(nonce) != 12:
        raise PayloadFormatError("nonce_b64 is not a 12-byte nonce")
    try:
        return AESGCM(keyring.keys[blocked["key_id"]]).decrypt(
            nonce, ciphertext, _associated_data(blocked.get("source") or {})
        )
    except InvalidTag as exc:
        raise PayloadTamperedError("encrypted payload failed authentication (tampered or wrong key)") from exc
