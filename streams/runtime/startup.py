"""What `run` checks before it starts, for every engine: settings, rules, keys, payload mode.

`partner-guard run` (either engine) builds its `GuardSetup` through `keyed_setup`;
`faust -A streams.engines.faust_app worker`, which has no command line of ours, through
`prepare`, which makes the same checks in the same order. A setting, a rule or a key that
refuses one refuses the other.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streams.core.errors import RefusalError
from streams.core.rules.loader import RulesetError, load_ruleset
from streams.core.rules.ruleset import Ruleset
from streams.runtime.config import ConfigError, Settings, load_settings, unknown_env_warnings
from streams.runtime.payload import Keyring, PayloadKeyError, PayloadProtector
from streams.runtime.preflight import StartupRefusedError, preflight
from streams.runtime.secrets import MissingKeyError, load_keys

log = logging.getLogger(__name__)


class StartupError(RefusalError):
    """The guard must not start; the message says why and what to fix."""


@dataclass(frozen=True)
class GuardSetup:
    """A validated start: settings, the keyed ruleset, the blocked-payload protector."""

    settings: Settings
    ruleset: Ruleset
    payload: PayloadProtector
    notices: tuple[str, ...]  # local-run warnings (ephemeral keys) to show the operator


def keyed_setup(settings: Settings, ruleset: Ruleset) -> GuardSetup:
    """The partners' keys and the blocked-payload protector, or `StartupError`.

    Missing keys refuse the start, except in a local run (`dev`), which makes ephemeral ones
    and says so in `notices`.
    """
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


def prepare(config_file: Path | None = None, **overrides: Any) -> GuardSetup:
    """Settings, rules, keys, payload and preflight checks, as `run` makes them; or `StartupError`."""
    try:
        settings = load_settings(config_file, **overrides)
    except ConfigError as exc:
        raise StartupError(str(exc)) from None
    for warning in unknown_env_warnings():
        log.warning("ignoring %s", warning)
    if not settings.rules_dir.is_dir():
        raise StartupError(f"no rules directory at {settings.rules_dir.resolve()} (PARTNER_GUARD_RULES_DIR)")
    try:
        ruleset = load_ruleset(settings.rules_dir, reserved_topics=settings.guard_topics())
    except RulesetError as exc:
        problems = "\n  ".join(str(p) for p in exc.problems)
        raise StartupError(f"rules refused ({len(exc.problems)} problem(s)):\n  {problems}") from None
    setup = keyed_setup(settings, ruleset)
    try:
        preflight(settings)
    except StartupRefusedError as exc:
        raise StartupError(str(exc)) from None
    return setup
