"""IAB GPP strings: header, section ids, the US National section and its GPC subsection.

Read: the header (type 3, version 1, Fibonacci-coded section ids), then per section id
its encoded body. From usnat (v1 and v2) every field is read and checked against its
enumeration; the decisive ones are the sale, sharing and targeted-advertising opt-outs,
the known-child consents and every GPC subsection. Section ids are bounded before they are
expanded, so a header announcing millions of sections is refused, not built.
"""

from __future__ import annotations

from dataclasses import dataclass

from streams.core.signals.bits import BitReader, SignalError

SECTION_TCFEUV2 = 2
SECTION_USPV1 = 6
SECTION_USNAT = 7
GPP_HEADER_TYPE = 3
GPP_VERSION = 1
# Why 64: the GPP section registry assigns ids up to the low twenties; 64 leaves room for
# new sections while keeping the expanded id list tiny whatever the header claims.
MAX_SECTION_ID = 64
_SECTION_ENTRY_MIN_BITS = 3  # IsRange, then the shortest Fibonacci code "11"

# usnat field values. Notices: 0 n/a, 1 provided, 2 not provided. Opt-outs: 0 n/a,
# 1 opted out, 2 did not opt out. Consents: 0 n/a, 1 no consent, 2 consent.
# MSPA covered transaction: 1 yes, 2 no (no n/a). 3 is undefined everywhere.
_TRI_STATE = frozenset({0, 1, 2})
_YES_NO = frozenset({1, 2})
USNAT_VERSIONS = frozenset({1, 2})
USNAT_SUBSECTION_GPC = 1
# Why 8: GPC is the only subsection type usnat defines; a few repeats are read (any "yes"
# counts), more are refused before the string is split.
MAX_USNAT_SUBSECTIONS = 8


@dataclass(frozen=True, slots=True)
class UsNat:
    """The decisive fields of a usnat section (values: 0 n/a, 1 opted out, 2 did not)."""

    version: int
    sale_opt_out: int
    sharing_opt_out: int
    targeted_advertising_opt_out: int
    known_child_consents: tuple[int, ...]
    gpc: bool

    @property
    def opted_out(self) -> bool:
        """True for a sale, sharing or targeted-advertising opt-out."""
        return 1 in (self.sale_opt_out, self.sharing_opt_out, self.targeted_advertising_opt_out)

    @property
    def known_child(self) -> bool:
        """True when any known-child consent is present and not 'consent' (2)."""
        return any(v not in (0, 2) for v in self.known_child_consents)


@dataclass(frozen=True, slots=True)
class GppString:
    """A GPP string split into its sections, keyed by section id (still encoded)."""

    section_ids: tuple[int, ...]
    sections: dict[int, str]


def decode_header(header: str) -> tuple[int, ...]:
    """Decode a GPP header into its section ids (strictly increasing, at most `MAX_SECTION_ID`)."""
    reader = BitReader(header)
    if reader.read(6) != GPP_HEADER_TYPE:
        raise SignalError("not a GPP header")
    if reader.read(6) != GPP_VERSION:
        raise SignalError("unsupported GPP version")
    entries = reader.read(12)
    if entries * _SECTION_ENTRY_MIN_BITS > reader.remaining:
        raise SignalError("more GPP section entries than bits")
    spans: list[tuple[int, int]] = []
    last = 0
    for _ in range(entries):
        is_range = reader.read_bool()
        start = last + reader.read_fibonacci()
        end = start + reader.read_fibonacci() if is_range else start
        if end > MAX_SECTION_ID:
            raise SignalError("GPP section id out of range")
        spans.append((start, end))
        last = end
    return tuple(i for start, end in spans for i in range(start, end + 1))


def decode_gpp(value: str) -> GppString:
    """Split a GPP string; the number of sections must match the header."""
    header, _, rest = value.partition("~")
    ids = decode_header(header)
    bodies = rest.split("~", len(ids)) if ids else ([rest] if rest else [])  # never more than announced
    if len(bodies) != len(ids) or (not ids and "~" in value):
        raise SignalError("GPP section count does not match its header")
    return GppString(ids, dict(zip(ids, bodies, strict=True)))


def _read_fields(reader: BitReader, count: int, allowed: frozenset[int]) -> tuple[int, ...]:
    values = tuple(reader.read(2) for _ in range(count))
    if any(v not in allowed for v in values):
        raise SignalError("usnat field value outside its enumeration")
    return values


def decode_usnat(section: str) -> UsNat:
    """Decode a usnat section (v1 or v2) with its GPC subsections; any GPC set counts."""
    if section.count(".") > MAX_USNAT_SUBSECTIONS:
        raise SignalError("too many usnat subsections")
    core, *subsections = section.split(".")
    reader = BitReader(core)
    version = reader.read(6)
    if version not in USNAT_VERSIONS:
        raise SignalError(f"unsupported usnat version {version}")
    _read_fields(reader, 6, _TRI_STATE)  # the six notice fields
    sale, sharing, targeted = _read_fields(reader, 3, _TRI_STATE)
    _read_fields(reader, 12 if version == 1 else 16, _TRI_STATE)  # sensitive data processing
    child = _read_fields(reader, 2 if version == 1 else 3, _TRI_STATE)
    _read_fields(reader, 1, _TRI_STATE)  # personal data consents
    _read_fields(reader, 1, _YES_NO)  # MSPA covered transaction
    _read_fields(reader, 2, _TRI_STATE)  # MSPA opt-out option mode, service provider mode
    gpc = False
    for sub in subsections:
        sub_reader = BitReader(sub)
        if sub_reader.read(2) != USNAT_SUBSECTION_GPC:
            raise SignalError("undefined usnat subsection type")
        gpc = sub_reader.read_bool() or gpc
    return UsNat(version, sale, sharing, targeted, child, gpc)
