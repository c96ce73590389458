"""Optional per-rule conditions in CEL (Common Expression Language), compiled once.

Variables: `event` (the event as JSON, nulls omitted), `consent` (`jurisdiction`,
`gdpr_applies`, `limit_ad_tracking`) and `status` (sign-up status or ""). The condition is
handed only the event fields it can read, as resolved from its syntax tree by `celreach`
(so a field it does not name cannot influence it, whatever the CEL engine does). CEL is
pure, so results are memoized on exactly that view: a condition that reads
`event.device.platform` is evaluated once per distinct platform.

The view is length-bounded before evaluation: when the fields a condition reads serialize
to more than `MAX_VIEW_BYTES`, the condition is not evaluated and the rule blocks
(`rule_condition_error`, fail closed). That bounds both the evaluation (at most
`MAX_EVENT_READS` reads of at most that many bytes) and the memo (`_CACHE_LIMIT` entries of
at most that many bytes), however large the event.
"""

from __future__ import annotations

from typing import Any

import cel
import orjson
from pydantic import BaseModel

from streams.core.errors import PartnerGuardError
from streams.core.memo import remember
from streams.core.rules.celreach import Reach, reach

MAX_VIEW_BYTES = 8_192  # the fields a condition reads; shipped conditions read a few bytes
_CACHE_LIMIT = 50_000


class ConditionError(PartnerGuardError):
    """The condition could not be evaluated (missing field, type error)."""


class Condition:
    """A compiled CEL condition with a memo of its results."""

    def __init__(self, expression: str) -> None:
        """Parse (raises `CelSubsetError` outside the allowed subset) and compile."""
        self.expression = expression
        self.reach: Reach = reach(expression)
        self._include = self.reach.include()
        self._program = cel.compile(expression)
        self._cache: dict[bytes, bool | None] = {}

    def variables(self) -> list[str]:
        """Names of the variables the expression reads."""
        return list(self._program.variables())

    def holds(self, event: BaseModel, consent: dict[str, Any], status: str) -> bool:
        """True when the expression evaluates to exactly `true`; raises `ConditionError`.

        Only the event fields the expression can read are serialized and passed in, and
        only when they fit in `MAX_VIEW_BYTES`.
        """
        visible = event.model_dump(mode="json", exclude_none=True, include=self._include)
        context = {"event": visible, "consent": consent, "status": status}
        key = orjson.dumps(context, option=orjson.OPT_SORT_KEYS)
        if len(key) > MAX_VIEW_BYTES:
            raise ConditionError(f"{self.expression} (inputs over {MAX_VIEW_BYTES} bytes)")
        try:
            result = self._cache[key]
        except KeyError:
            try:
                result = self._program.execute(context) is True
            except Exception:  # the binding raises several types for missing keys and bad types
                result = None
            remember(self._cache, key, result, _CACHE_LIMIT)
        if result is None:
            raise ConditionError(self.expression)
        return result
