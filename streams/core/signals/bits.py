"""A bounds-checked bit reader over base64url segments."""

from __future__ import annotations

_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_SEXTETS = {c: i for i, c in enumerate(_ALPHABET)}


class SignalError(ValueError):
    """A consent string is truncated, malformed or of an unsupported version."""


class BitReader:
    """Reads big-endian bit fields from an unpadded base64url segment, six bits a character.

    Reading past the end raises instead of inventing bits, so a string cut short is an
    error, never a grant.
    """

    def __init__(self, segment: str) -> None:
        if not segment:
            raise SignalError("empty segment")
        value = 0
        for char in segment:
            sextet = _SEXTETS.get(char)
            if sextet is None:
                raise SignalError("not base64url")
            value = value << 6 | sextet
        self._value = value
        self.length = len(segment) * 6
        self.pos = 0

    def read(self, width: int) -> int:
        """Read `width` bits as an unsigned integer."""
        if width < 0 or self.pos + width > self.length:
            raise SignalError("truncated")
        shift = self.length - self.pos - width
        self.pos += width
        return (self._value >> shift) & ((1 << width) - 1)

    def read_bool(self) -> bool:
        """Read one bit."""
        return self.read(1) == 1

    def read_set(self, width: int) -> frozenset[int]:
        """Read a bitfield of `width` bits as the set of 1-based positions that are set."""
        bits = self.read(width)
        return frozenset(i + 1 for i in range(width) if bits >> (width - 1 - i) & 1)

    def read_fibonacci(self) -> int:
        """Read one Fibonacci-coded positive integer (terminated by two consecutive 1 bits)."""
        weights = [1, 2]
        total = 0
        index = 0
        previous = 0
        while True:
            bit = self.read(1)
            if bit and previous:
                return total
            while index >= len(weights):
                weights.append(weights[-1] + weights[-2])
            total += bit * weights[index]
            index += 1
            previous = bit
            if index > 64:
                raise SignalError("fibonacci value too long")
