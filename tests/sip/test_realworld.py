"""Real SIP messages from the shared corpus parse leniently and yield their Identity values."""

from __future__ import annotations

from pathlib import Path

import pytest

from sip import Request, Response, SipReason, originating_identity, parse_message

pytestmark = pytest.mark.realworld

# file -> number of Identity values expected (per message, in order)
FILES = {
    "sip/real_neustar_382com_vapi_invite.sip": [1],
    "sip/portsip_doc_example_invite.sip": [1],
    "sip/opensips_man_verify200_invite_template.sip.txt": [1],
    "sip/telnyx_freeswitch_pr92_multi_identity_fragment.sip.txt": [2],
    "sip/sansay_nss_sti_as_exchange.sip.txt": [1, 1],
    "edge/asterisk_testsuite_legacy_invite_1_2020-06-16.sip.txt": [1],
    "edge/asterisk_testsuite_legacy_invite_2_2021-04-19.sip.txt": [1],
    "edge/asterisk_testsuite_legacy_invite_3_2021-05-10.sip.txt": [1],
}


def messages(path: Path) -> list[bytes]:
    data = path.read_bytes()
    if "sansay" in path.name:
        # Two messages separated by a blank line, LF endings as published: the 302 starts after
        # the INVITE's (empty-body) header block.
        cut = data.index(b"\n\nSIP/2.0 ") + 2
        return [data[:cut], data[cut:]]
    return [data]


@pytest.mark.parametrize(("name", "counts"), FILES.items(), ids=[Path(n).stem for n in FILES])
def test_real_messages_parse_leniently(realworld: Path, name: str, counts: list[int]) -> None:
    parsed = [parse_message(raw) for raw in messages(realworld / name)]
    assert [len(m.identity_values) for m in parsed] == counts
    for msg in parsed:
        assert msg.call_id
        assert msg.cseq is not None
        assert msg.from_ is not None


def test_neustar_invite_values(realworld: Path) -> None:
    msg = parse_message((realworld / "sip/real_neustar_382com_vapi_invite.sip").read_bytes())
    assert isinstance(msg, Request)
    assert msg.defects == ()
    (identity,) = msg.identity_values
    assert identity.startswith("eyJhbGciOiJFUzI1NiIs")
    assert identity.endswith(
        ';info=<https://cr.ccid.neustar.biz/ccid/authn/v2/certs/11184.11104.pem>;alg=ES256;ppt="shaken"'
    )
    assert len(msg.body) == 306
    assert msg.p_asserted_identity[0].uri.user == "+918850510969"
    assert originating_identity(msg.p_asserted_identity[0].uri).value == "918850510969"


def test_sansay_exchange(realworld: Path) -> None:
    invite, moved = (
        parse_message(raw) for raw in messages(realworld / "sip/sansay_nss_sti_as_exchange.sip.txt")
    )
    assert isinstance(invite, Request)
    assert isinstance(moved, Response)
    assert invite.identity_values == ("",)
    assert SipReason.EMPTY_IDENTITY in {d.code for d in invite.defects}
    assert SipReason.LF_LINE_ENDINGS in {d.code for d in invite.defects}
    assert moved.status == 302
    assert moved.identity_values[0].endswith(
        ';info=<https://cr.sansay.com/Sansay_997T>;alg=ES256;ppt="shaken"'
    )


def test_telnyx_fragment_keeps_both_identity_headers(realworld: Path) -> None:
    msg = parse_message(
        (realworld / "sip/telnyx_freeswitch_pr92_multi_identity_fragment.sip.txt").read_bytes()
    )
    assert msg.identity_values == ("foo", "bar")
    assert {SipReason.MISSING_HEADER_TERMINATOR, SipReason.MALFORMED_HEADER_LINE} <= {
        d.code for d in msg.defects
    }
