"""US Privacy (CCPA) strings: `1YNN`-style, four characters."""

from __future__ import annotations

from streams.core.signals.bits import SignalError

_FLAGS = frozenset("YN-")


def us_privacy_opted_out(value: str) -> bool:
    """True when the string says the person opted out of sale (third character `Y`)."""
    text = value.strip().upper()
    if len(text) != 4 or text[0] != "1" or any(c not in _FLAGS for c in text[1:]):
        raise SignalError("not a US Privacy string")
    return text[2] == "Y"
