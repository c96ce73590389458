"""IAB TCF v2.x TC string decoding and the legal-basis check for one vendor.

Read: the core segment (version, CMP, vendor list and policy versions, special features,
purpose consents and legitimate interests, publisher country, vendor consents and
legitimate interests, publisher restrictions); of the other segments only their type.
Every count is checked against the bits actually present before anything is allocated,
and vendor ids are kept as a bitfield int or as ranges, never expanded: a range that spans
65,535 vendors costs what one vendor costs.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterator
from dataclasses import dataclass

from streams.core.signals.bits import BitReader, SignalError

LI_PURPOSES = frozenset({2, 7, 8, 9, 10, 11})
TCF_VERSION = 2
MAX_PURPOSE_ID = 24  # PurposesConsent is a 24-bit field (_PURPOSES_BITS): no purpose id beyond it exists
# Publisher restriction types (RestrictionType, 2 bits; 3 is undefined).
RESTRICTION_NOT_ALLOWED = 0
RESTRICTION_REQUIRE_CONSENT = 1
RESTRICTION_REQUIRE_LI = 2
RESTRICTION_TYPES = frozenset({RESTRICTION_NOT_ALLOWED, RESTRICTION_REQUIRE_CONSENT, RESTRICTION_REQUIRE_LI})
# Segment types after the core segment.
SEGMENT_DISCLOSED_VENDORS = 1
SEGMENT_ALLOWED_VENDORS = 2
SEGMENT_PUBLISHER_TC = 3
SEGMENT_TYPES = frozenset({SEGMENT_DISCLOSED_VENDORS, SEGMENT_ALLOWED_VENDORS, SEGMENT_PUBLISHER_TC})

# Field widths in bits, named as the TC string format names the fields; the core segment
# reads them in this order.
_VERSION_BITS = 6  # Version
_TIMESTAMP_BITS = 36  # Created, LastUpdated (deciseconds)
_CMP_ID_BITS = 12  # CmpId
_CMP_VERSION_BITS = 12  # CmpVersion
_CONSENT_SCREEN_BITS = 6  # ConsentScreen
_LETTER_BITS = 6  # one letter of ConsentLanguage or PublisherCC (0 = A .. 25 = Z)
_LETTER_PAIR_BITS = 2 * _LETTER_BITS
_VENDOR_LIST_VERSION_BITS = 12  # VendorListVersion
_POLICY_VERSION_BITS = 6  # TcfPolicyVersion
_FLAG_BITS = 1  # IsServiceSpecific, UseNonStandardTexts, PurposeOneTreatment, IsRangeEncoding
_SPECIAL_FEATURES_BITS = 12  # SpecialFeatureOptIns
_PURPOSES_BITS = 24  # PurposesConsent, PurposesLITransparency
_MAX_VENDOR_ID_BITS = 16  # MaxVendorId
_VENDOR_ID_BITS = 16  # StartOrOnlyVendorId, EndVendorId
_NUM_ENTRIES_BITS = 12  # NumEntries (ranges), NumPubRestrictions
_PURPOSE_ID_BITS = 6  # PurposeId of a publisher restriction
_RESTRICTION_TYPE_BITS = 2  # RestrictionType
_SEGMENT_TYPE_BITS = 3  # SegmentType, first in every segment after the core
# Smallest encodings, used to refuse a count before looping over it.
_RANGE_ENTRY_MIN_BITS = _FLAG_BITS + _VENDOR_ID_BITS  # IsARange, StartOrOnlyVendorId
_RESTRICTION_MIN_BITS = _PURPOSE_ID_BITS + _RESTRICTION_TYPE_BITS + _NUM_ENTRIES_BITS


@dataclass(frozen=True, slots=True)
class VendorSet:
    """Vendor ids from a bitfield (kept as one int) or from sorted, merged ranges."""

    bitfield: int = 0
    width: int = 0
    starts: tuple[int, ...] = ()
    ends: tuple[int, ...] = ()

    def __contains__(self, vendor_id: object) -> bool:
        if not isinstance(vendor_id, int) or vendor_id < 1:
            return False
        if vendor_id <= self.width and self.bitfield >> (self.width - vendor_id) & 1:
            return True
        index = bisect_right(self.starts, vendor_id) - 1
        return index >= 0 and vendor_id <= self.ends[index]

    def __iter__(self) -> Iterator[int]:
        """Every id (for tests and small sets: a range is expanded here)."""
        yield from (v for v in range(1, self.width + 1) if self.bitfield >> (self.width - v) & 1)
        for start, end in zip(self.starts, self.ends, strict=True):
            yield from range(start, end + 1)

    @property
    def max_id(self) -> int:
        """The largest id in the set (0 when empty)."""
        top = self.ends[-1] if self.ends else 0
        if self.bitfield:  # the highest id is the lowest set bit
            lowest_set = (self.bitfield & -self.bitfield).bit_length() - 1
            top = max(top, self.width - lowest_set)
        return top


@dataclass(frozen=True, slots=True)
class PublisherRestriction:
    """A publisher restriction: purpose, type (one of `RESTRICTION_TYPES`) and vendors."""

    purpose: int
    restriction_type: int
    vendors: VendorSet


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
    vendor_consent: VendorSet
    vendor_li: VendorSet
    restrictions: tuple[PublisherRestriction, ...]

    def allows(self, vendor_id: int, purpose: int) -> bool:
        """True when `vendor_id` has a legal basis for `purpose` under this string.

        Every restriction that covers the vendor counts: "not allowed" denies, and a
        required basis must be present (both, when both are required).
        """
        required = {
            r.restriction_type for r in self.restrictions if r.purpose == purpose and vendor_id in r.vendors
        }
        if RESTRICTION_NOT_ALLOWED in required:
            return False
        consent = purpose in self.purposes_consent and vendor_id in self.vendor_consent
        li = purpose in LI_PURPOSES and purpose in self.purposes_li and vendor_id in self.vendor_li
        if required:
            return (RESTRICTION_REQUIRE_CONSENT not in required or consent) and (
                RESTRICTION_REQUIRE_LI not in required or li
            )
        return consent or li


def _read_ranges(reader: BitReader) -> VendorSet:
    entries = reader.read(_NUM_ENTRIES_BITS)
    if entries * _RANGE_ENTRY_MIN_BITS > reader.remaining:
        raise SignalError("more vendor ranges than bits")
    spans: list[tuple[int, int]] = []
    for _ in range(entries):
        head = reader.read(_RANGE_ENTRY_MIN_BITS)  # IsARange, then StartOrOnlyVendorId: one read
        start = head & ((1 << _VENDOR_ID_BITS) - 1)
        end = reader.read(_VENDOR_ID_BITS) if head >> _VENDOR_ID_BITS else start
        if end < start or start == 0:
            raise SignalError("bad vendor range")
        spans.append((start, end))
    spans.sort()
    starts: list[int] = []
    ends: list[int] = []
    for start, end in spans:
        if ends and start <= ends[-1] + 1:
            ends[-1] = max(ends[-1], end)
        else:
            starts.append(start)
            ends.append(end)
    return VendorSet(starts=tuple(starts), ends=tuple(ends))


def _read_vendor_section(reader: BitReader) -> VendorSet:
    max_vendor = reader.read(_MAX_VENDOR_ID_BITS)
    if reader.read_bool():  # IsRangeEncoding
        ids = _read_ranges(reader)
        if ids.max_id > max_vendor:
            raise SignalError("vendor beyond MaxVendorId")
        return ids
    return VendorSet(bitfield=reader.read(max_vendor), width=max_vendor)


def _read_restrictions(reader: BitReader) -> tuple[PublisherRestriction, ...]:
    count = reader.read(_NUM_ENTRIES_BITS)
    if count * _RESTRICTION_MIN_BITS > reader.remaining:
        raise SignalError("more publisher restrictions than bits")
    seen: set[tuple[int, int]] = set()
    restrictions = []
    for _ in range(count):
        purpose = reader.read(_PURPOSE_ID_BITS)
        restriction_type = reader.read(_RESTRICTION_TYPE_BITS)
        if not 1 <= purpose <= MAX_PURPOSE_ID:
            raise SignalError("publisher restriction for an undefined purpose")
        if restriction_type not in RESTRICTION_TYPES:
            raise SignalError("undefined publisher restriction type")
        if (purpose, restriction_type) in seen:  # the spec allows one entry per pair
            raise SignalError("publisher restriction repeated")
        seen.add((purpose, restriction_type))
        restrictions.append(PublisherRestriction(purpose, restriction_type, _read_ranges(reader)))
    return tuple(restrictions)


def _letters(value: int) -> str:
    """Two letters, six bits each, 0 = A .. 25 = Z; 26-63 are undefined."""
    first, second = value >> _LETTER_BITS, value & ((1 << _LETTER_BITS) - 1)
    if first > 25 or second > 25:
        raise SignalError("a letter outside A-Z")
    return chr(ord("A") + first) + chr(ord("A") + second)


def _check_other_segments(segments: list[str]) -> None:
    seen: set[int] = set()
    for segment in segments:
        segment_type = BitReader(segment).read(_SEGMENT_TYPE_BITS)
        if segment_type not in SEGMENT_TYPES or segment_type in seen:
            raise SignalError("undefined or repeated TC string segment")
        seen.add(segment_type)


def decode_tc_string(tc_string: str) -> TCString:
    """Decode a TC string (v2); raise `SignalError` on anything truncated, undefined or unsupported."""
    if tc_string.count(".") > len(SEGMENT_TYPES):
        raise SignalError("more TC string segments than segment types")
    core, *others = tc_string.split(".")
    reader = BitReader(core)
    version = reader.read(_VERSION_BITS)
    if version != TCF_VERSION:
        raise SignalError(f"unsupported TCF version {version}")
    _check_other_segments(others)
    reader.read(_TIMESTAMP_BITS)  # Created
    reader.read(_TIMESTAMP_BITS)  # LastUpdated
    cmp_id = reader.read(_CMP_ID_BITS)
    cmp_version = reader.read(_CMP_VERSION_BITS)
    reader.read(_CONSENT_SCREEN_BITS)
    _letters(reader.read(_LETTER_PAIR_BITS))  # ConsentLanguage
    vendor_list_version = reader.read(_VENDOR_LIST_VERSION_BITS)
    policy_version = reader.read(_POLICY_VERSION_BITS)
    reader.read(_FLAG_BITS)  # IsServiceSpecific
    reader.read(_FLAG_BITS)  # UseNonStandardTexts
    special_features = reader.read_set(_SPECIAL_FEATURES_BITS)
    purposes_consent = reader.read_set(_PURPOSES_BITS)
    purposes_li = reader.read_set(_PURPOSES_BITS)
    reader.read(_FLAG_BITS)  # PurposeOneTreatment
    publisher_cc = _letters(reader.read(_LETTER_PAIR_BITS))
    vendor_consent = _read_vendor_section(reader)
    vendor_li = _read_vendor_section(reader)
    restrictions = _read_restrictions(reader)
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
