"""IAB TCF v2.x TC string decoding and the legal-basis check for one vendor."""

from __future__ import annotations

from dataclasses import dataclass

from streams.core.signals.bits import BitReader, SignalError

LI_PURPOSES = frozenset({2, 7, 8, 9, 10, 11})


@dataclass(frozen=True, slots=True)
class PublisherRestriction:
    """A publisher restriction: purpose, type (0 not allowed, 1 consent, 2 LI) and vendors."""

    purpose: int
    restriction_type: int
    vendors: frozenset[int]


@dataclass(frozen=True, slots=True)
class TCString:
    """The decoded core segment of a TC string."""

    version: int
    cmp_id: int
    cmp_version: int
    vendor_list_version: int
    policy_version: int
    publisher_cc: str
    special_features: frozenset[int]
    purposes_consent: frozenset[int]
    purposes_li: frozenset[int]
    vendor_consent: frozenset[int]
    vendor_li: frozenset[int]
    restrictions: tuple[PublisherRestriction, ...]

    def allows(self, vendor_id: int, purpose: int) -> bool:
        """True when `vendor_id` has a legal basis for `purpose` under this string."""
        required_basis = None
        for restriction in self.restrictions:
            if restriction.purpose == purpose and vendor_id in restriction.vendors:
                if restriction.restriction_type == 0:
                    return False
                required_basis = restriction.restriction_type
        consent = purpose in self.purposes_consent and vendor_id in self.vendor_consent
        li = purpose in LI_PURPOSES and purpose in self.purposes_li and vendor_id in self.vendor_li
        if required_basis == 1:
            return consent
        if required_basis == 2:
            return li
        return consent or li


def _read_ranges(reader: BitReader) -> frozenset[int]:
    entries = reader.read(12)
    ids: set[int] = set()
    for _ in range(entries):
        is_range = reader.read_bool()
        start = reader.read(16)
        end = reader.read(16) if is_range else start
        if end < start or start == 0:
            raise SignalError("bad vendor range")
        ids.update(range(start, end + 1))
    return frozenset(ids)


def _read_vendor_section(reader: BitReader) -> frozenset[int]:
    max_vendor = reader.read(16)
    if reader.read_bool():
        ids = _read_ranges(reader)
        if any(v > max_vendor for v in ids):
            raise SignalError("vendor beyond MaxVendorId")
        return ids
    return reader.read_set(max_vendor)


def _letters(value: int) -> str:
    return chr(ord("A") + (value >> 6)) + chr(ord("A") + (value & 0x3F))


def decode_tc_string(tc_string: str) -> TCString:
    """Decode a TC string (v2); raise `SignalError` on anything truncated or unsupported."""
    core = tc_string.strip().split(".")[0]
    reader = BitReader(core)
    version = reader.read(6)
    if version != 2:
        raise SignalError(f"unsupported TCF version {version}")
    reader.read(36)  # created
    reader.read(36)  # last updated
    cmp_id = reader.read(12)
    cmp_version = reader.read(12)
    reader.read(6)  # consent screen
    reader.read(12)  # consent language
    vendor_list_version = reader.read(12)
    policy_version = reader.read(6)
    reader.read(1)  # is service specific
    reader.read(1)  # use non-standard texts
    special_features = reader.read_set(12)
    purposes_consent = reader.read_set(24)
    purposes_li = reader.read_set(24)
    reader.read(1)  # purpose one treatment
    publisher_cc = _letters(reader.read(12))
    vendor_consent = _read_vendor_section(reader)
    vendor_li = _read_vendor_section(reader)
    restrictions = []
    for _ in range(reader.read(12)):
        purpose = reader.read(6)
        restriction_type = reader.read(2)
        restrictions.append(PublisherRestriction(purpose, restriction_type, _read_ranges(reader)))
    return TCString(
        version=version,
        cmp_id=cmp_id,
        cmp_version=cmp_version,
        vendor_list_version=vendor_list_version,
        policy_version=policy_version,
        publisher_cc=publisher_cc,
        special_features=special_features,
        purposes_consent=purposes_consent,
        purposes_li=purposes_li,
        vendor_consent=vendor_consent,
        vendor_li=vendor_li,
        restrictions=tuple(restrictions),
    )
