"""Strict decoders for consent strings: IAB TCF v2, GPP, US Privacy.

Every decoder is bound-checked: a truncated or malformed string raises `SignalError`,
which the consent evaluation turns into a block. A decoder that fails open is a defect.
"""

from streams.core.signals.bits import SignalError

__all__ = ["SignalError"]
