"""Everything `run` checks before it starts, for every engine: settings, rules, keys, payload mode.

`partner-guard run` (either engine) and `faust -A streams.engines.faust_app worker` both
start through `prepare`, so a setting, a rule or a key that refuses one refuses the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streams.core.rules.loader import RulesetError, load_ruleset
from streams.core.rules.ruleset import Ruleset
from streams.runtime.config import ConfigError, Settings, load_settings
from streams.runtime.payload import Keyring, PayloadKeyError, PayloadProtector
from streams.runtime.secrets import MissingKeyError, load_keys


class StartupError(Exception):
    """The guard must not start; the message says why and what to fix."""


@dataclass(frozen=True)
class GuardSetup:
    """A validated start: settings, the keyed ruleset, the blocked-payload protector."""

    settings: Settings
    ruleset: Ruleset
    payload: PayloadProtector
    notices: tuple[str, ...]  # local-run warnings (ephemeral keys) to show the operator


def prepare(config_file: Path | None = None, **overrides: Any) -> GuardSetup:
    """Load and check everything the guard needs, or raise `StartupError`."""
    try:
        settings = load_settings(config_file, **overrides)
    except ConfigError as exc:
        raise StartupError(str(exc)) from None
    try:
        ruleset = load_ruleset(settings.rules_dir)
    except RulesetError as exc:
        problems = "\n  ".join(str(p) for p in exc.problems)
        raise StartupError(f"rules refused ({len(exc.problems)} problem(s)):\n  {problems}") from None
    try:
        loaded = load_keys(ruleset.partners, settings.keys_dir, settings.dev)
    except MissingKeyError as exc:
        raise StartupError(str(exc)) from None
    notices = []
    if loaded.ephemeral:
        partners = ", ".join(loaded.ephemeral)
        notices.append(f"--dev: ephemeral keys for {partners}; pseudonyms change every run")
    mode = settings.blocked_payload
    if mode == "full":
        payload = PayloadProtector("full")
    else:
        try:
            payload = PayloadProtector(mode, Keyring.load(settings.payload_keys_file))
        except PayloadKeyError as exc:
            if not settings.dev:
                raise StartupError(str(exc)) from None
            notices.append(f"--dev: ephemeral payload key for '{mode}' blocked records")
            payload = PayloadProtector(mode, Keyring.ephemeral())
    return GuardSetup(settings, ruleset.with_keys(loaded.keys), payload, tuple(notices))
