"""IAB GPP strings: header, section ids, the US National section and its GPC subsection."""

from __future__ import annotations

from dataclasses import dataclass

from streams.core.signals.bits import BitReader, SignalError

SECTION_TCFEUV2 = 2
SECTION_USPV1 = 6
SECTION_USNAT = 7


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
        """True when any known-child consent is present and not 'did not opt out' (2)."""
        return any(v not in (0, 2) for v in self.known_child_consents)


@dataclass(frozen=True, slots=True)
class GppString:
    """A GPP string split into its sections, keyed by section id (still encoded)."""

    section_ids: tuple[int, ...]
    sections: dict[int, str]


def decode_header(header: str) -> tuple[int, ...]:
    """Decode a GPP header into its section ids."""
    reader = BitReader(header)
    if reader.read(6) != 3:
        raise SignalError("not a GPP header")
    if reader.read(6) != 1:
        raise SignalError("unsupported GPP version")
    ids: list[int] = []
    last = 0
    for _ in range(reader.read(12)):
        is_range = reader.read_bool()
        start = last + reader.read_fibonacci()
        end = start + reader.read_fibonacci() if is_range else start
        ids.extend(range(start, end + 1))
        last = end
    return tuple(ids)


def decode_gpp(value: str) -> GppString:
    """Split a GPP string; the number of sections must match the header."""
    parts = value.strip().split("~")
    ids = decode_header(parts[0])
    if len(parts) - 1 != len(ids):
        raise SignalError("GPP section count does not match its header")
    return GppString(ids, dict(zip(ids, parts[1:], strict=True)))


def decode_usnat(section: str) -> UsNat:
    """Decode a usnat section (v1 or v2) with its optional GPC subsection."""
    core, *subsections = section.split(".")
    reader = BitReader(core)
    version = reader.read(6)
    if version not in (1, 2):
        raise SignalError(f"unsupported usnat version {version}")
    reader.read(2 * 6)  # the six notice fields
    sale, sharing, targeted = reader.read(2), reader.read(2), reader.read(2)
    reader.read(2 * (12 if version == 1 else 16))  # sensitive data processing
    child = tuple(reader.read(2) for _ in range(2 if version == 1 else 3))
    reader.read(2 * 4)  # personal data consents, MSPA fields
    gpc = False
    for sub in subsections:
        sub_reader = BitReader(sub)
        if sub_reader.read(2) == 1:
            gpc = sub_reader.read_bool()
    return UsNat(version, sale, sharing, targeted, child, gpc)
