"""Partner HMAC keys: from the environment or files, never from rules, never logged."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from streams.core.errors import RefusalError

KEY_ENV_PREFIX = "PARTNER_GUARD_KEY_"
MIN_KEY_BYTES = 16
KEY_FORMAT = (
    "keys are raw bytes: an env value as its UTF-8 bytes, a key file's bytes with surrounding "
    "whitespace trimmed; base64 text is used as text, not decoded"
)


class MissingKeyError(RefusalError):
    """A partner has no key and the run is not explicitly local."""


def env_name(partner: str) -> str:
    """The environment variable holding a partner's key: `PARTNER_GUARD_KEY_<PARTNER>`."""
    return KEY_ENV_PREFIX + partner.upper().replace("-", "_")


@dataclass(frozen=True, slots=True)
class LoadedKeys:
    """Keys by partner, and which ones are ephemeral (local runs only)."""

    keys: Mapping[str, bytes]
    ephemeral: tuple[str, ...]

    def __repr__(self) -> str:  # never print key material
        return f"LoadedKeys(partners={sorted(self.keys)}, ephemeral={list(self.ephemeral)})"


class KeysDirError(MissingKeyError):
    """The keys directory or a key file in it cannot be read (refuses start, even with --dev)."""


def _check_keys_dir(keys_dir: Path) -> None:
    if not keys_dir.is_dir():
        raise KeysDirError(f"setting 'keys_dir' = '{keys_dir}': not a directory")
    if not os.access(keys_dir, os.R_OK | os.X_OK):
        raise KeysDirError(
            f"setting 'keys_dir' = '{keys_dir}': not readable by this user (uid {os.getuid()})"
        )


def _read_key_file(path: Path) -> bytes:
    try:
        return path.read_bytes().strip()
    except OSError as exc:
        raise KeysDirError(f"key file '{path}' cannot be read ({exc.strerror})") from None


def load_keys(
    partners: Iterable[str],
    keys_dir: Path | None = None,
    dev: bool = False,
    environ: Mapping[str, str] | None = None,
) -> LoadedKeys:
    """Load one key per partner: env var first, then `<keys_dir>/<partner>.key`.

    Key material is used as raw bytes: the env value's UTF-8 bytes, or the file's bytes with
    surrounding whitespace trimmed (a base64 text is used as that text, not decoded).
    A missing or short key refuses start unless `dev` is set, which uses an ephemeral
    random key (pseudonyms then change every run; say so to the user). An unreadable keys
    directory or key file refuses start even with `dev`.
    """
    env = os.environ if environ is None else environ
    if keys_dir is not None:
        _check_keys_dir(keys_dir)
    keys: dict[str, bytes] = {}
    ephemeral: list[str] = []
    problems: list[str] = []
    for partner in partners:
        value = env.get(env_name(partner), "").encode()
        source = env_name(partner)
        if not value and keys_dir is not None and (keys_dir / f"{partner}.key").is_file():
            source = str(keys_dir / f"{partner}.key")
            value = _read_key_file(keys_dir / f"{partner}.key")
        if len(value) >= MIN_KEY_BYTES:
            keys[partner] = value
        elif dev:
            keys[partner] = secrets.token_bytes(32)
            ephemeral.append(partner)
        elif value:
            problems.append(
                f"the key for partner '{partner}' from {source} is {len(value)} bytes; at least "
                f"{MIN_KEY_BYTES} are needed ({KEY_FORMAT})"
            )
        else:
            where = f"{env_name(partner)} or {keys_dir or '<keys_dir>'}/{partner}.key"
            problems.append(f"no HMAC key for partner '{partner}': set {where}")
    if problems:
        raise MissingKeyError("; ".join(problems) + "; for a local try-out pass --dev to use ephemeral keys")
    return LoadedKeys(keys, tuple(ephemeral))
