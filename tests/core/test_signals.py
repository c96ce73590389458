"""Consent-string decoders against reference vectors from the public TCF v2, GPP and US Privacy specs."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from streams.core.signals.bits import BitReader, SignalError
from streams.core.signals.gpp import decode_gpp, decode_header, decode_usnat
from streams.core.signals.tcf import decode_tc_string
from streams.core.signals.usprivacy import us_privacy_opted_out
from streams.gen.signals import encode_gpp, encode_tc_string, encode_usnat

TCF_1 = "CLcVDxRMWfGmWAVAHCENAXCkAKDAADnAABRgA5mdfCKZuYJez-NQm0TBMYA4oCAAGQYIAAAAAAEAIAEgAA"
TCF_2 = "COyfVVoOyfVVoADACHENAwCAAAAAAAAAAAAAE5QBgALgAqgD8AQACSwEygJyAnSAMABgAFkAgQCDASeAmYBOgAA"
TCF_3 = "COwAdDhOwAdDhN4ABAENAPCgAAQAAv___wAAAFP_AAp_4AI6ACACAA"


def test_tcf_vector_bitfield() -> None:
    tc = decode_tc_string(TCF_1)
    assert (tc.cmp_id, tc.vendor_list_version, tc.policy_version, tc.publisher_cc) == (
        21,
        23,
        2,
        "KM",
    )
    assert tc.purposes_consent == {1, 3, 9, 10}
    assert tc.purposes_li == {3, 4, 5, 8, 9, 10}
    assert tc.special_features == {2}
    assert tc.vendor_consent.max_id <= 115
    assert set(tc.vendor_li) == {1, 9, 26, 27, 30, 36, 37, 43, 86, 97, 110, 113}


def test_tcf_vector_ranges() -> None:
    tc = decode_tc_string(TCF_2)
    assert tc.purposes_consent == frozenset()
    assert set(tc.vendor_consent) == {23, 42, 126, 127, 128, 587, 613, 626}
    assert set(tc.vendor_li) == {24, 44, 129, 130, 131, 591, 614, 628}


def test_tcf_vector_publisher_restriction() -> None:
    tc = decode_tc_string(TCF_3)
    assert tc.purposes_consent == {6, 23}
    assert tc.purposes_li == set(range(1, 25))
    assert set(tc.vendor_consent) == set(range(1, 11)) == set(tc.vendor_li)
    assert [(r.purpose, r.restriction_type, set(r.vendors)) for r in tc.restrictions] == [(7, 1, {32})]
    assert tc.allows(5, 7)  # LI basis for purpose 7
    assert not tc.allows(5, 1)  # purpose 1 needs consent


@pytest.mark.parametrize("vector", [TCF_1, TCF_2, TCF_3])
def test_truncated_tc_strings_are_errors_never_grants(vector: str) -> None:
    for cut in range(1, len(vector) - 2):
        with pytest.raises(SignalError):
            decode_tc_string(vector[:cut])


def test_fail_open_vector_from_reference_is_refused() -> None:
    with pytest.raises(SignalError):
        decode_tc_string("CLcVDxRMWfGmWAVAHCEN")


@pytest.mark.parametrize("bad", ["", "!!!", "BOEFEAyOEFEAyAHABDENAI4AAAB9vABAASA", "C" * 5])
def test_bad_tc_strings(bad: str) -> None:
    with pytest.raises(SignalError):
        decode_tc_string(bad)


@pytest.mark.parametrize(
    ("header", "ids"),
    [
        ("DBAA", ()),
        ("DBABMA", (2,)),
        ("DBACNYA", (2, 6)),
        ("DBABjw", (5, 6)),
        ("DBABLA", (7,)),
        ("DBABzw", (6, 7)),
    ],
)
def test_gpp_header_vectors(header: str, ids: tuple[int, ...]) -> None:
    assert decode_header(header) == ids


def test_usnat_vectors() -> None:
    with_gpc = decode_usnat("CVVVkkkkkpFY.YA")
    assert (
        with_gpc.sale_opt_out,
        with_gpc.sharing_opt_out,
        with_gpc.targeted_advertising_opt_out,
    ) == (1, 1, 1)
    assert with_gpc.gpc and with_gpc.opted_out
    assert not decode_usnat("CVVVkkkkkpFY").gpc
    child = decode_usnat("CAAAVVVVVVRA.QA")
    assert child.known_child_consents == (1, 1, 1) and child.known_child and not child.gpc
    v1 = decode_usnat("BVQqAAAACg")
    assert (v1.sale_opt_out, v1.sharing_opt_out, v1.targeted_advertising_opt_out) == (2, 2, 2)
    assert not v1.opted_out


def test_full_gpp_vector() -> None:
    gpp = decode_gpp("DBACNYA~CPXxRfAPXxRfAAfKABENB-CgAAAAAAAAAAYgAAAAAAAA~1YNN")
    assert gpp.section_ids == (2, 6)
    assert gpp.sections[6] == "1YNN"
    assert decode_tc_string(gpp.sections[2]).version == 2


@pytest.mark.parametrize("bad", ["DB", "DBACNYA~only-one", "XBAA", "CVVVkkk"])
def test_bad_gpp(bad: str) -> None:
    with pytest.raises(SignalError):
        decode_gpp(bad) if bad[0] != "C" else decode_usnat(bad)


@pytest.mark.parametrize(
    ("text", "opted_out"), [("1YNN", False), ("1NYY", True), ("1YYN", True), ("1---", False)]
)
def test_us_privacy(text: str, opted_out: bool) -> None:
    assert us_privacy_opted_out(text) is opted_out


@pytest.mark.parametrize("bad", ["", "1Y", "2YNN", "1YXN", "1YNNN"])
def test_bad_us_privacy(bad: str) -> None:
    with pytest.raises(SignalError):
        us_privacy_opted_out(bad)


@given(
    st.sets(st.integers(1, 24)),
    st.sets(st.integers(1, 2000), max_size=20),
    st.sets(st.integers(1, 24)),
    st.sets(st.integers(1, 2000), max_size=20),
)
def test_tcf_encoder_round_trip(
    purposes: set[int], vendors: set[int], li: set[int], li_vendors: set[int]
) -> None:
    tc = decode_tc_string(encode_tc_string(purposes, vendors, li, li_vendors))
    assert (set(tc.purposes_consent), set(tc.vendor_consent), set(tc.purposes_li), set(tc.vendor_li)) == (
        purposes,
        vendors,
        li,
        li_vendors,
    )


@given(st.sets(st.integers(1, 40), min_size=1, max_size=6))
def test_gpp_header_round_trip(ids: set[int]) -> None:
    text = encode_gpp({i: "x" for i in ids})
    assert decode_gpp(text).section_ids == tuple(sorted(ids))


@given(
    st.sampled_from([0, 1, 2]),
    st.sampled_from([0, 1, 2]),
    st.sampled_from([0, 1, 2]),
    st.booleans(),
)
def test_usnat_round_trip(sale: int, sharing: int, targeted: int, gpc: bool) -> None:
    usnat = decode_usnat(encode_usnat(sale, sharing, targeted, gpc=gpc))
    assert (
        usnat.sale_opt_out,
        usnat.sharing_opt_out,
        usnat.targeted_advertising_opt_out,
        usnat.gpc,
    ) == (sale, sharing, targeted, gpc)


@given(
    st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", max_size=30),
    st.integers(0, 400),
)
def test_bit_reader_never_reads_past_the_end(segment: str, width: int) -> None:
    if not segment:
        with pytest.raises(SignalError):
            BitReader(segment)
        return
    reader = BitReader(segment)
    if width > reader.length:
        with pytest.raises(SignalError):
            reader.read(width)
    else:
        assert reader.read(width) < 2**width


def test_vendor_ranges_are_kept_as_ranges_never_expanded() -> None:
    tc = decode_tc_string(TCF_2)
    assert tc.vendor_consent.starts == (23, 42, 126, 587, 613, 626)  # 126..128 merged into one range
    assert 127 in tc.vendor_consent and 129 not in tc.vendor_consent and 0 not in tc.vendor_consent
    bitfield = decode_tc_string(TCF_1).vendor_li
    assert bitfield.width == 113 and 110 in bitfield and 113 in bitfield and 112 not in bitfield
    assert 114 not in bitfield


@pytest.mark.parametrize("value", [1, 2, 3, 4, 5, 12, 89, 10**6])
def test_fibonacci_codes_round_trip(value: int) -> None:
    from streams.gen.signals import BitWriter

    writer = BitWriter()
    writer.write_fibonacci(value)
    assert BitReader(writer.render()).read_fibonacci() == value
