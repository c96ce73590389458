"""A bounds-checked bit reader over base64url segments, linear in the segment's length.

Hostile strings are the normal case: the reader refuses anything outside the base64url
alphabet or longer than `MAX_SEGMENT_CHARS` before decoding, decodes in one C-speed pass,
and each read touches only the bytes it needs, so a decoder's cost is bounded by the bits
actually present.
"""

from __future__ import annotations

import base64
import re

from streams.core.errors import PartnerGuardError

# Why 65,536: a TC string whose consent and legitimate-interest sections are full
# 65,535-vendor bitfields needs ~21,900 characters; three times that is still a small
# linear cost, and anything longer is not a consent string.
MAX_SEGMENT_CHARS = 65_536
# Why 64: a Fibonacci code of 64 bits already encodes ~2.8e13, far beyond any id or offset
# a consent string carries; decoders check their own, tighter, limits on the value.
MAX_FIBONACCI_BITS = 64
_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")


class SignalError(PartnerGuardError, ValueError):
    """A consent string is truncated, malformed or of an unsupported version."""


class BitReader:
    """Reads big-endian bit fields from an unpadded base64url segment, six bits a character.

    Reading past the end raises instead of inventing bits, so a string cut short is an
    error, never a grant.
    """

    __slots__ = ("_bytes", "length", "pos")

    def __init__(self, segment: str) -> None:
        if not segment:
            raise SignalError("empty segment")
        if len(segment) > MAX_SEGMENT_CHARS:
            raise SignalError("segment too long")
        if not _SEGMENT.fullmatch(segment):
            raise SignalError("not base64url")
        # "A" is the zero sextet: padding with it to a multiple of four characters keeps
        # every real bit in place and adds only zero bits after `length`.
        self._bytes = base64.urlsafe_b64decode(segment + "A" * (-len(segment) % 4))
        self.length = len(segment) * 6
        self.pos = 0

    @property
    def remaining(self) -> int:
        """Bits not read yet."""
        return self.length - self.pos

    def read(self, width: int) -> int:
        """Read `width` bits as an unsigned integer."""
        if width < 0 or self.pos + width > self.length:
            raise SignalError("truncated")
        if width == 0:
            return 0
        first, end = self.pos >> 3, (self.pos + width + 7) >> 3
        chunk = int.from_bytes(self._bytes[first:end], "big")
        shift = end * 8 - self.pos - width
        self.pos += width
        return (chunk >> shift) & ((1 << width) - 1)

    def read_bool(self) -> bool:
        """Read one bit."""
        return self.read(1) == 1

    def read_set(self, width: int) -> frozenset[int]:
        """Read a small bitfield (purposes, features) as the set of 1-based positions set."""
        if width > 64:
            raise ValueError("read_set is for small bitfields; keep large ones as an int")
        bits = self.read(width)
        return frozenset(i + 1 for i in range(width) if bits >> (width - 1 - i) & 1)

    def read_fibonacci(self) -> int:
        """Read one Fibonacci-coded positive integer (terminated by two consecutive 1 bits)."""
        weight, next_weight = 1, 2
        total = 0
        last_bit = 0
        for _ in range(MAX_FIBONACCI_BITS + 1):  # value bits, then the terminating 1
            bit = self.read(1)
            if bit and last_bit:
                return total
            total += bit * weight
            weight, next_weight = next_weight, weight + next_weight
            last_bit = bit
        raise SignalError("fibonacci value too long")
