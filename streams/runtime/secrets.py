"""Partner HMAC keys: from the environment or files, never from rules, never logged."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

KEY_ENV_PREFIX = "PARTNER_GUARD_KEY_"
MIN_KEY_BYTES = 16


class MissingKeyError(Exception):
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


def load_keys(
    partners: Iterable[str],
    keys_dir: Path | None = None,
    dev: bool = False,
    environ: Mapping[str, str] | None = None,
) -> LoadedKeys:
    """Load one key per partner: env var first, then `<keys_dir>/<partner>.key`.

    A missing or short key refuses start unless `dev` is set, which uses an ephemeral
    random key (pseudonyms then change every run; say so to the user).
    """
    env = os.environ if environ is None else environ
    keys: dict[str, bytes] = {}
    ephemeral: list[str] = []
    missing: list[str] = []
    for partner in partners:
        value = env.get(env_name(partner), "").encode()
        if not value and keys_dir is not None and (keys_dir / f"{partner}.key").is_file():
            value = (keys_dir / f"{partner}.key").read_bytes().strip()
        if len(value) >= MIN_KEY_BYTES:
            keys[partner] = value
        elif dev:
            keys[partner] = secrets.token_bytes(32)
            ephemeral.append(partner)
        else:
            missing.append(partner)
    if missing:
        hints = ", ".join(f"{env_name(p)} or <keys_dir>/{p}.key" for p in missing)
        raise MissingKeyError(
            f"no HMAC key (>= {MIN_KEY_BYTES} bytes) for partner(s) {missing}: set {hints}; "
            "for a local try-out pass --dev to use ephemeral keys"
        )
    return LoadedKeys(keys, tuple(ephemeral))
