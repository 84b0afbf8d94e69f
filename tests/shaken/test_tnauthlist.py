"""TNAuthList decoding: RFC 9118 sample, hand-built DER, lenient recovery, malformed input."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shaken.asn1 import encode_tlv as tlv
from shaken.errors import Reason, ShakenError
from shaken.tnauthlist import TnAuthList, TnRange, parse_tnauthlist


def spc(code: bytes, string_tag: int = 0x16) -> bytes:
    return tlv(0xA0, tlv(string_tag, code))


def one(tn: bytes) -> bytes:
    return tlv(0xA2, tlv(0x16, tn))


def rng(start: bytes, count: int) -> bytes:
    body = tlv(0x16, start) + tlv(0x02, count.to_bytes(count.bit_length() // 8 + 1, "big"))
    return tlv(0xA1, tlv(0x30, body))


CONFORMING = [
    pytest.param(
        bytes.fromhex("3008a006160431323334"), TnAuthList(("1234",)), id="rfc9118-sample-spc"
    ),
    pytest.param(tlv(0x30, spc(b"1234A")), TnAuthList(("1234A",)), id="spc"),
    pytest.param(
        tlv(0x30, rng(b"12025550100", 100)),
        TnAuthList((), (TnRange("12025550100", 100),)),
        id="range",
    ),
    pytest.param(tlv(0x30, one(b"12025550199")), TnAuthList((), (), ("12025550199",)), id="one"),
    pytest.param(
        tlv(0x30, spc(b"1234") + rng(b"12025550100", 300) + one(b"*67#")),
        TnAuthList(("1234",), (TnRange("12025550100", 300),), ("*67#",)),
        id="mixed",
    ),
]


@pytest.mark.parametrize(("der", "expected"), CONFORMING)
def test_conforming_tnauthlist(der: bytes, expected: TnAuthList) -> None:
    result = parse_tnauthlist(der)
    assert result == expected
    assert result.is_conforming


LENIENT = [
    # Real-world shapes (certs/edge_certs of the corpus): decoded, deviation recorded.
    pytest.param(bytes.fromhex("300613043735354a"), ("755J",), (), id="printablestring-no-tag"),
    pytest.param(bytes.fromhex("3008a006163836374a"), ("867J",), (), id="missing-length-octet"),
    pytest.param(tlv(0x16, b"1234"), ("1234",), (), id="bare-ia5string"),
    pytest.param(
        tlv(0x16, b"ca.shaken.signalwire.cloud/sti-ca/acme/TNAuthList"),
        (),
        ("ca.shaken.signalwire.cloud/sti-ca/acme/TNAuthList",),
        id="url-instead-of-spc",
    ),
    pytest.param(tlv(0x30, spc(b"1234", 0x0C)), ("1234",), (), id="utf8string-spc"),
    pytest.param(tlv(0x30, tlv(0x80, b"1234")), ("1234",), (), id="implicit-tag"),
    pytest.param(tlv(0x30, spc(b"1234")) + b"\x00", ("1234",), (), id="trailing-byte"),
    pytest.param(tlv(0x30, spc(b"1234") + tlv(0xA5, b"x")), ("1234",), (), id="unknown-entry"),
]


@pytest.mark.parametrize(("der", "spcs", "other"), LENIENT)
def test_lenient_tnauthlist(der: bytes, spcs: tuple[str, ...], other: tuple[str, ...]) -> None:
    result = parse_tnauthlist(der)
    assert result.spcs == spcs
    assert result.other == other
    assert not result.is_conforming


def test_lower_case_spc_is_decoded_as_is() -> None:
    # Case is a profile question (shaken.profile SPC_FORMAT), not a decoding one.
    assert parse_tnauthlist(bytes.fromhex("3008a00616043731396b")).spcs == ("719k",)


MALFORMED = [
    pytest.param(b"", id="empty"),
    pytest.param(b"\x30", id="tag-only"),
    pytest.param(b"\x30\x00", id="empty-sequence"),
    pytest.param(b"\x04\x02ab", id="octet-string"),
    pytest.param(b"\x30\x80\xa0\x06\x16\x041234\x00\x00", id="indefinite-length"),
    pytest.param(tlv(0x30, tlv(0xA0, tlv(0x04, b"1234"))), id="spc-not-a-string"),
    pytest.param(tlv(0x30, tlv(0xA0, b"")), id="spc-empty-explicit"),
    pytest.param(tlv(0x30, tlv(0xA1, tlv(0x30, tlv(0x16, b"1")))), id="range-without-count"),
]


@pytest.mark.parametrize("der", MALFORMED)
def test_malformed_tnauthlist(der: bytes) -> None:
    with pytest.raises(ShakenError) as info:
        parse_tnauthlist(der)
    assert info.value.reason is Reason.TNAUTHLIST_INVALID


@pytest.mark.parametrize(
    ("tn", "covered"),
    [
        pytest.param("12025550100", True, id="range-start"),
        pytest.param("12025550199", True, id="range-end"),
        pytest.param("12025550200", False, id="after-range"),
        pytest.param("12025550099", False, id="before-range"),
        pytest.param("2025550150", False, id="other-length"),
        pytest.param("15551234567", True, id="single-tn"),
    ],
)
def test_covers(tn: str, covered: bool) -> None:
    tnal = parse_tnauthlist(tlv(0x30, rng(b"12025550100", 100) + one(b"15551234567")))
    assert tnal.covers(tn) is covered


def test_spc_covers_no_specific_number() -> None:
    assert not parse_tnauthlist(tlv(0x30, spc(b"1234"))).covers("12025550100")


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_only_tnauthlist_invalid_escapes(data: bytes) -> None:
    reason = None
    try:
        parse_tnauthlist(data)
    except ShakenError as exc:
        reason = exc.reason
    assert reason in (None, Reason.TNAUTHLIST_INVALID)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=40))
def test_prefixes_of_valid_der_never_crash(tail: bytes) -> None:
    der = tlv(0x30, spc(b"1234") + rng(b"12025550100", 100)) + tail
    for cut in range(len(der) + 1):
        reason = None
        try:
            parse_tnauthlist(der[:cut])
        except ShakenError as exc:
            reason = exc.reason
        assert reason in (None, Reason.TNAUTHLIST_INVALID)
