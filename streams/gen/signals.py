"""Encoders for TCF v2 and GPP strings, so generated traffic carries real signals.

The decoders in `streams.core.signals` are tested against the reference vectors; these
encoders are tested by round trip through them.
"""

from __future__ import annotations

from collections.abc import Iterable

_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


class BitWriter:
    """Appends big-endian bit fields and renders unpadded base64url."""

    def __init__(self) -> None:
        self.bits: list[int] = []

    def write(self, value: int, width: int) -> None:
        """Append `value` in `width` bits."""
        self.bits.extend((value >> (width - 1 - i)) & 1 for i in range(width))

    def write_set(self, members: Iterable[int], width: int) -> None:
        """Append a bitfield where 1-based position p is set for each member."""
        chosen = set(members)
        self.bits.extend(1 if i + 1 in chosen else 0 for i in range(width))

    def write_fibonacci(self, value: int) -> None:
        """Append a Fibonacci-coded positive integer."""
        fibs = [1, 2]
        while fibs[-1] <= value:
            fibs.append(fibs[-1] + fibs[-2])
        code = [0] * len(fibs)
        rest = value
        for i in range(len(fibs) - 1, -1, -1):
            if fibs[i] <= rest:
                code[i] = 1
                rest -= fibs[i]
        while code and code[-1] == 0:
            code.pop()
        self.bits.extend([*code, 1])

    def render(self) -> str:
        """The bits as base64url, zero-padded to a multiple of six."""
        bits = self.bits + [0] * (-len(self.bits) % 6)
        return "".join(_ALPHABET[int("".join(map(str, bits[i : i + 6])), 2)] for i in range(0, len(bits), 6))


def encode_tc_string(
    purposes_consent: Iterable[int],
    vendor_consent: Iterable[int],
    purposes_li: Iterable[int] = (),
    vendor_li: Iterable[int] = (),
    policy_version: int = 4,
    created_ds: int = 17_000_000_000,
) -> str:
    """A TCF v2 core segment with range-encoded vendor sections, no publisher restrictions."""
    consent_vendors = set(vendor_consent)
    li_vendors = set(vendor_li)
    writer = BitWriter()
    writer.write(2, 6)
    writer.write(created_ds, 36)
    writer.write(created_ds, 36)
    writer.write(7, 12)  # cmp id
    writer.write(1, 12)  # cmp version
    writer.write(1, 6)  # consent screen
    writer.write((ord("E") - 65) << 6 | (ord("N") - 65), 12)
    writer.write(200, 12)  # vendor list version
    writer.write(policy_version, 6)
    writer.write(1, 1)  # service specific
    writer.write(0, 1)
    writer.write_set((), 12)
    writer.write_set(purposes_consent, 24)
    writer.write_set(purposes_li, 24)
    writer.write(0, 1)
    writer.write((ord("U") - 65) << 6 | (ord("S") - 65), 12)
    for vendors in (consent_vendors, li_vendors):  # range encoding: one entry per vendor
        writer.write(max(vendors, default=0), 16)
        writer.write(1, 1)
        writer.write(len(vendors), 12)
        for vendor in sorted(vendors):
            writer.write(0, 1)
            writer.write(vendor, 16)
    writer.write(0, 12)  # no publisher restrictions
    return writer.render()


def encode_usnat(
    sale: int = 2,
    sharing: int = 2,
    targeted: int = 2,
    known_child: tuple[int, int, int] = (0, 0, 0),
    gpc: bool | None = None,
) -> str:
    """A usnat v2 section (opt-out values: 0 n/a, 1 opted out, 2 did not opt out)."""
    writer = BitWriter()
    writer.write(2, 6)
    for _ in range(6):
        writer.write(1, 2)  # notices given
    for value in (sale, sharing, targeted):
        writer.write(value, 2)
    writer.write(0, 32)
    for value in known_child:
        writer.write(value, 2)
    writer.write(0, 2)  # personal data consents: n/a
    writer.write(2, 2)  # MSPA covered transaction: no (1 yes, 2 no; 0 is undefined)
    writer.write(0, 4)  # MSPA opt-out option mode, service provider mode: n/a
    section = writer.render()
    if gpc is not None:
        sub = BitWriter()
        sub.write(1, 2)
        sub.write(int(gpc), 1)
        section += "." + sub.render()
    return section


def encode_gpp(sections: dict[int, str]) -> str:
    """A GPP string: header with Fibonacci-coded section ids, then the sections in order."""
    writer = BitWriter()
    writer.write(3, 6)
    writer.write(1, 6)
    ids = sorted(sections)
    writer.write(len(ids), 12)
    last = 0
    for section_id in ids:
        writer.write(0, 1)
        writer.write_fibonacci(section_id - last)
        last = section_id
    return "~".join([writer.render(), *(sections[i] for i in ids)])
