"""What `run` checks before it starts, for every engine: settings, rules, keys, payload mode.

`partner-guard run` (either engine) builds its `GuardSetup` through `keyed_setup`;
`faust -A streams.engines.faust_app worker`, which has no command line of ours, through
`prepare`, which makes the same checks in the same order. A setting, a rule or a key that
refuses one refuses the other.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streams.core.errors import RefusalError
from streams.core.rules.loader import load_ruleset
from streams.core.rules.ruleset import Ruleset
from streams.runtime.config import (
    Settings,
    TopicRole,
    load_settings,
    topic_role_clash,
    unknown_env_warnings,
)
from streams.runtime.formats.payload import Keyring, PayloadKeyError, PayloadProtector
from streams.runtime.ops.preflight import preflight
from streams.runtime.ops.secrets import load_keys

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


def partner_keys(
    partners: Sequence[str], keys_dir: Path | None, dev: bool
) -> tuple[Mapping[str, bytes], list[str]]:
    """The partners' keys and the notices to show; the one place every command loads them.

    A missing key refuses (`MissingKeyError`), except in a local run (`dev`), which makes an
    ephemeral one and says so in a notice.
    """
    loaded = load_keys(partners, keys_dir, dev)
    notices = []
    if loaded.ephemeral:
        named = ", ".join(loaded.ephemeral)
        notices.append(f"--dev: ephemeral keys for {named}; pseudonyms change every run")
    return loaded.keys, notices


def check_topic_roles(settings: Settings, ruleset: Ruleset) -> None:
    """Refuse a start where one topic has two roles: inputs, consent, sign-up status, blocked,
    republish markers, forwarded markers and every partner's output and notice topic are all
    distinct (`StartupError`)."""
    outputs = [
        TopicRole(
            rule.topic, f"the output topic of partner '{rule.partner}'", f"topic in {rule.partner}.yaml"
        )
        for rule in ruleset.rules
    ]
    outputs += [
        TopicRole(
            rule.source.optout_topic,
            f"the notice topic of partner '{rule.partner}'",
            f"optout_notices.topic in {rule.partner}.yaml",
        )
        for rule in ruleset.rules
        if rule.source.optout_notices.sends
    ]
    clash = topic_role_clash([*settings.topic_roles(), *outputs])
    if clash is not None:
        raise StartupError(clash)


def keyed_setup(settings: Settings, ruleset: Ruleset) -> GuardSetup:
    """The partners' keys and the blocked-payload protector, or a `RefusalError`.

    Missing keys refuse the start, except in a local run (`dev`), which makes ephemeral ones
    and says so in `notices`. A topic in two roles refuses too (`check_topic_roles`).
    """
    check_topic_roles(settings, ruleset)
    keys, notices = partner_keys(ruleset.partners, settings.keys_dir, settings.dev)
    mode = settings.blocked_payload
    if mode == "full":
        payload = PayloadProtector("full")
    else:
        try:
            payload = PayloadProtector(mode, Keyring.load(settings.payload_keys_file))
        except PayloadKeyError:
            if not settings.dev:
                raise
            notices.append(f"--dev: ephemeral payload key for '{mode}' blocked records")
            payload = PayloadProtector(mode, Keyring.ephemeral())
    return GuardSetup(settings, ruleset.with_keys(keys), payload, tuple(notices))


def prepare(config_file: Path | None = None, **overrides: Any) -> GuardSetup:
    """Settings, rules, keys, payload and preflight checks, as `run` makes them; or a
    `RefusalError` (reported with its `report()`)."""
    settings = load_settings(config_file, **overrides)
    for warning in unknown_env_warnings():
        log.warning("ignoring %s", warning)
    if not settings.rules_dir.is_dir():
        raise StartupError(f"no rules directory at {settings.rules_dir.resolve()} (PARTNER_GUARD_RULES_DIR)")
    ruleset = load_ruleset(settings.rules_dir, reserved_topics=settings.guard_topics())
    setup = keyed_setup(settings, ruleset)
    preflight(settings)
    return setup
