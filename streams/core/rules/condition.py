"""Optional per-rule conditions in CEL (Common Expression Language), compiled once.

Variables: `event` (the event as JSON, nulls omitted), `consent` (`jurisdiction`,
`gdpr_applies`, `limit_ad_tracking`) and `status` (sign-up status or ""). CEL is pure, so
results are memoized on the exact part of the input the expression can see: a condition
that reads `event.device` is evaluated once per distinct device object.
"""

from __future__ import annotations

import re
from typing import Any

import cel
import orjson
from pydantic import BaseModel

_EVENT_FIELD = re.compile(r"\bevent\s*\.\s*([A-Za-z_]\w*)")
_BARE_EVENT = re.compile(r"\bevent\b(?!\s*\.)")
_CACHE_LIMIT = 50_000


class ConditionError(Exception):
    """The condition could not be evaluated (missing field, type error)."""


class Condition:
    """A compiled CEL condition with a memo of its results."""

    def __init__(self, expression: str) -> None:
        self.expression = expression
        self._program = cel.compile(expression)
        bare = bool(_BARE_EVENT.search(expression))
        self._event_fields: set[str] | None = None if bare else set(_EVENT_FIELD.findall(expression))
        self._cache: dict[bytes, bool | None] = {}

    def variables(self) -> list[str]:
        """Names of the variables the expression reads."""
        return list(self._program.variables())

    def holds(self, event: BaseModel, consent: dict[str, Any], status: str) -> bool:
        """True when the expression evaluates to exactly `true`; raises `ConditionError`.

        Only the event fields the expression names are serialized (all of them when it uses
        `event` as a whole).
        """
        visible = event.model_dump(mode="json", exclude_none=True, include=self._event_fields)
        context = {"event": visible, "consent": consent, "status": status}
        key = orjson.dumps(context, option=orjson.OPT_SORT_KEYS)
        try:
            result = self._cache[key]
        except KeyError:
            try:
                result = self._program.execute(context) is True
            except Exception:  # the binding raises several types for missing keys and bad types
                result = None
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[key] = result
        if result is None:
            raise ConditionError(self.expression)
        return result
