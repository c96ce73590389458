"""US Privacy (CCPA) strings: `1YNN`-style, exactly four characters.

Read: version (`1`), explicit notice, opt-out of sale, LSPA covered, each `Y`, `N` or `-`
(upper case, as the specification writes them). Anything else, including surrounding
whitespace or lower case, is unparseable.
"""

from __future__ import annotations

from streams.core.signals.bits import SignalError

US_PRIVACY_VERSION = "1"
INDEX_OPT_OUT_SALE = 2
_FLAGS = frozenset("YN-")


def us_privacy_opted_out(value: str) -> bool:
    """True when the string says the person opted out of sale (third character `Y`)."""
    if len(value) != 4 or value[0] != US_PRIVACY_VERSION or any(c not in _FLAGS for c in value[1:]):
        raise SignalError("not a US Privacy string")
    return value[INDEX_OPT_OUT_SALE] == "Y"
