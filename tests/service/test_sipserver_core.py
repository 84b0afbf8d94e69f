"""The sans-IO core of the SIP verification server (analyzer/sipserver.py): every answer.

A real verifier over the fixture PKI judges the signed fixture calls as of their signing time;
a counting wrapper proves retransmissions are answered from the transaction table without a
second verification. RFC 3261 sections 8.2, 9.2, 17.2 and 18.3; RFC 8224 section 6.2.2;
RFC 9410; 3GPP TS 24.229 section 7.2A.20.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta
from urllib.parse import unquote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analyzer.extract import request_from_message
from analyzer.sipanswer import (
    _TAG_PARAM,
    SERVER_HEADER,
    stir_reasons,
    uri_header,
    with_verstat,
)
from analyzer.sipserver import (
    TRANSACTION_TTL_S,
    Action,
    Decision,
    DropReason,
    SipServerCore,
    verify_inline,
)
from analyzer.verifying import build_verifier
from shaken.result import VerificationResult
from shaken.verifier import VerificationRequest, Verifier
from sip import Request, Response, parse_message, response_to
from tests.service.invites import (
    FIXTURE_AT,
    build_invite,
    fixture_call,
    fixture_config,
    sign_identity,
    sip_date,
    with_branch,
)
from tests.sip.test_fuzz import lightly_mutated


class CountingVerifier:
    """The real verifier, counting its calls."""

    def __init__(self, verifier: Verifier) -> None:
        self.verifier = verifier
        self.calls = 0

    def __call__(self, request: VerificationRequest, at: datetime) -> VerificationResult:
        self.calls += 1
        return self.verifier.verify(request, at=at)


@pytest.fixture(scope="module")
def verifier() -> Iterator[Verifier]:
    with build_verifier(fixture_config()) as built:
        yield built


@pytest.fixture
def verify(verifier: Verifier) -> CountingVerifier:
    return CountingVerifier(verifier)


def response_of(data: bytes | None) -> Response:
    assert data is not None
    message = parse_message(data)
    assert isinstance(message, Response)
    return message


def causes(response: Response) -> list[int]:
    """The cause codes of the ``Reason: STIR`` headers (RFC 9410 section 3)."""
    found = []
    for value in response.headers.get_all("reason"):
        assert value.startswith("STIR;")
        params = dict(p.split("=", 1) for p in value.split(";")[1:])
        found.append(int(params["cause"]))
    return found


def request(method: str, *, to_tag: str | None = None, extra: str = "", cseq: str = "") -> bytes:
    to = "<sip:+12025550199@bravo.example>" + (f";tag={to_tag}" if to_tag else "")
    return (
        f"{method} sip:+12025550199@bravo.example SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK-{method.lower()}-1\r\n"
        "Max-Forwards: 70\r\n"
        "From: <sip:+12025550101@alpha.example>;tag=abc\r\n"
        f"To: {to}\r\n"
        "Call-ID: call-1@192.0.2.1\r\n"
        f"CSeq: {cseq or '1 ' + method}\r\n"
        f"{extra}"
        "Content-Length: 0\r\n\r\n"
    ).encode()


# -- INVITE answers ------------------------------------------------------------------------

INVITE_CASES = [
    # (fixture, reject, status, verstat in the redirect, Reason causes)
    ("alpha_a", False, 302, "TN-Validation-Passed", []),
    ("charlie_c", False, 302, "TN-Validation-Passed", []),
    ("diverted", False, 302, "TN-Validation-Passed", []),
    ("tampered", False, 302, "TN-Validation-Failed", [438]),
    ("revoked", False, 302, "TN-Validation-Failed", [437]),
    ("untrusted", False, 302, "TN-Validation-Failed", [437]),
    ("unsigned", False, 302, "No-TN-Validation", [428]),
    ("alpha_a", True, 302, "TN-Validation-Passed", []),
    ("tampered", True, 438, None, [438]),
    ("revoked", True, 437, None, [437]),
    ("untrusted", True, 437, None, [437]),
    ("unsigned", True, 428, None, [428]),
]


@pytest.mark.parametrize(
    ("name", "reject", "status", "verstat", "expected_causes"),
    INVITE_CASES,
    ids=[f"{c[0]}-{'reject' if c[1] else 'redirect'}" for c in INVITE_CASES],
)
def test_invite_answer(
    verify: CountingVerifier,
    name: str,
    reject: bool,
    status: int,
    verstat: str | None,
    expected_causes: list[int],
) -> None:
    core = SipServerCore(reject=reject)
    data = fixture_call(name)
    decision, completion = verify_inline(core, data, at=FIXTURE_AT, verify=verify)
    assert decision.action is Action.VERIFY
    assert completion is not None
    assert completion.status == status
    response = response_of(completion.response)
    assert response.status == status
    assert causes(response) == expected_causes
    # The transaction is echoed (RFC 3261 section 8.2.6.2) with a To tag on the final answer.
    original = parse_message(data)
    assert response.call_id == original.call_id
    assert response.headers.get("from") == original.headers.get("from")
    assert response.to is not None
    assert response.to.tag
    if status == 302:
        contact = response.headers.get("contact")
        assert contact is not None
        target, _, uri_headers = contact.strip("<>").partition("?")
        assert target == original.start_line.split(" ")[1]  # the original Request-URI
        redirected_from = unquote(uri_headers.partition("From=")[2])
        assert f"verstat={verstat}" in redirected_from
        assert ";tag=" not in redirected_from  # the new request gets its own From tag
    else:
        assert "contact" not in response.headers
        assert (
            response.reason
            == {
                437: "Unsupported Credential",
                438: "Invalid Identity Header",
                428: "Use Identity Header",
            }[status]
        )
    assert completion.record.verstat.value == (verstat or completion.record.verstat.value)
    assert completion.record.call_id == original.call_id


def test_stale_date_is_403(verify: CountingVerifier) -> None:
    late = FIXTURE_AT + timedelta(hours=2)
    _, redirect = verify_inline(SipServerCore(), fixture_call("alpha_a"), at=late, verify=verify)
    _, rejected = verify_inline(
        SipServerCore(reject=True), fixture_call("alpha_a"), at=late, verify=verify
    )
    assert redirect is not None
    assert rejected is not None
    assert causes(response_of(redirect.response)) == [403]
    assert response_of(rejected.response).status == 403
    assert response_of(rejected.response).reason == "Stale Date"


def test_unobtainable_certificate_is_436(verify: CountingVerifier) -> None:
    x5u = "https://certs.nowhere.example/alpha.pem"
    data = build_invite(identities=[sign_identity(FIXTURE_AT, x5u=x5u)], date=sip_date(FIXTURE_AT))
    decision, completion = verify_inline(
        SipServerCore(reject=True), data, at=FIXTURE_AT, verify=verify
    )
    assert decision.job is not None
    assert decision.job.x5u == (x5u,)
    assert completion is not None
    assert response_of(completion.response).status == 436


def test_pai_gets_verstat(verify: CountingVerifier) -> None:
    pai = "<sip:+12025550101@alpha.example;user=phone>, <tel:+12025550101>"
    data = build_invite(identities=[sign_identity(FIXTURE_AT)], date=sip_date(FIXTURE_AT), pai=pai)
    _, completion = verify_inline(SipServerCore(), data, at=FIXTURE_AT, verify=verify)
    assert completion is not None
    response = response_of(completion.response)
    assert response.headers.values("p-asserted-identity") == [
        "<sip:+12025550101;verstat=TN-Validation-Passed@alpha.example;user=phone>",
        "<tel:+12025550101;verstat=TN-Validation-Passed>",
    ]
    contact = unquote(response.headers.get("contact") or "")
    assert contact.count("P-Asserted-Identity=") == 2


def test_one_failed_passport_of_two_is_reported_with_ppi(verify: CountingVerifier) -> None:
    good = sign_identity(FIXTURE_AT)
    token = good.split(";")[0]
    header, payload, _ = token.split(".")
    broken = f"{header}.{payload}.{'A' * 86};info=<https://certs.alpha.example/alpha.pem>"
    data = build_invite(identities=[good, broken], date=sip_date(FIXTURE_AT))
    _, completion = verify_inline(SipServerCore(), data, at=FIXTURE_AT, verify=verify)
    assert completion is not None
    response = response_of(completion.response)
    assert "verstat%3DTN-Validation-Passed" in (response.headers.get("contact") or "")
    (reason,) = response.headers.get_all("reason")
    assert causes(response) == [438]
    assert f';ppi="{header}..{"A" * 86}"' in reason  # RFC 9410 section 5: which PASSporT


# -- transactions ---------------------------------------------------------------------------


def test_retransmission_is_answered_without_verifying_again(verify: CountingVerifier) -> None:
    core = SipServerCore()
    data = fixture_call("alpha_a")
    first = core.receive(data, at=FIXTURE_AT)
    assert first.action is Action.VERIFY
    assert first.job is not None
    assert first.job.cold
    assert first.status == 100
    # Retransmitted while the verifier works: the 100 Trying again (RFC 3261 17.2.1).
    pending = core.receive(data, at=FIXTURE_AT + timedelta(seconds=0.5))
    assert pending.action is Action.RETRANSMIT
    assert response_of(pending.response).status == 100
    final = core.complete(first.job, verify(first.job.verification_request(), first.job.at))
    for delay in (1, 4, 31):
        again = core.receive(data, at=FIXTURE_AT + timedelta(seconds=delay))
        assert again.action is Action.RETRANSMIT
        assert again.response == final.response
    assert verify.calls == 1
    assert core.stats.retransmissions == 4
    # After 64*T1 the transaction is gone: the same bytes are a new request.
    later = core.receive(data, at=FIXTURE_AT + timedelta(seconds=TRANSACTION_TTL_S + 1))
    assert later.action is Action.VERIFY
    assert later.job is not None
    assert not later.job.cold
    assert later.response is None


def test_trying_timer_sends_one_100(verify: CountingVerifier) -> None:
    core = SipServerCore()
    data = fixture_call("alpha_a")
    _, _ = verify_inline(core, data, at=FIXTURE_AT, verify=verify)
    decision = core.receive(with_branch(data, "z9hG4bK-second"), at=FIXTURE_AT)
    assert decision.job is not None
    assert decision.response is None
    trying = core.trying(decision.job)
    assert response_of(trying).status == 100
    assert core.trying(decision.job) is None
    final = core.complete(
        decision.job, verify(decision.job.verification_request(), decision.job.at)
    )
    assert core.trying(decision.job) is None
    assert response_of(final.response).status == 302


def test_transaction_table_is_bounded(verify: CountingVerifier) -> None:
    core = SipServerCore(max_transactions=3)
    data = fixture_call("alpha_a")
    for n in range(5):
        verify_inline(core, with_branch(data, f"z9hG4bK-{n}"), at=FIXTURE_AT, verify=verify)
    assert core.transactions == 3
    assert core.stats.evictions == 2
    # The evicted first transaction is verified again rather than answered wrongly.
    decision = core.receive(with_branch(data, "z9hG4bK-0"), at=FIXTURE_AT)
    assert decision.action is Action.VERIFY


def test_shed_and_fail_are_stored_answers() -> None:
    core = SipServerCore(retry_after_s=7)
    data = fixture_call("alpha_a")
    decision = core.receive(data, at=FIXTURE_AT)
    assert decision.job is not None
    shed = response_of(core.shed(decision.job))
    assert (shed.status, shed.headers.get("retry-after")) == (503, "7")
    again = core.receive(data, at=FIXTURE_AT)
    assert again.action is Action.RETRANSMIT
    assert response_of(again.response).status == 503
    other = core.receive(with_branch(data, "z9hG4bK-x"), at=FIXTURE_AT)
    assert other.job is not None
    assert response_of(core.fail(other.job)).status == 500


# -- other methods ----------------------------------------------------------------------------

METHOD_CASES = [
    ("options", request("OPTIONS"), 200),
    ("register-405", request("REGISTER"), 405),
    ("bye-outside-dialog-405", request("BYE"), 405),
    ("bye-in-dialog-481", request("BYE", to_tag="t1"), 481),
    ("reinvite-481", request("INVITE", to_tag="t1"), 481),
    ("unknown-method-501", request("FROBNICATE"), 501),
    ("require-420", request("OPTIONS", extra="Require: 100rel\r\n"), 420),
    ("cseq-method-mismatch-400", request("OPTIONS", cseq="1 INVITE"), 400),
    ("bad-uri-scheme-416", request("OPTIONS").replace(b"sip:+12025550199@", b"mailto:x@", 1), 416),
    ("sip-3.0-505", request("OPTIONS").replace(b"SIP/2.0\r\n", b"SIP/3.0\r\n", 1), 505),
    ("missing-call-id-400", request("OPTIONS").replace(b"Call-ID: call-1@192.0.2.1\r\n", b""), 400),
    (
        "truncated-body-400",
        request("OPTIONS").replace(b"Content-Length: 0", b"Content-Length: 40"),
        400,
    ),
    ("cancel-unknown-481", request("CANCEL"), 481),
]


@pytest.mark.parametrize(
    ("data", "status"), [c[1:] for c in METHOD_CASES], ids=[c[0] for c in METHOD_CASES]
)
def test_non_invite_answers(data: bytes, status: int) -> None:
    core = SipServerCore()
    decision = core.receive(data, at=FIXTURE_AT)
    assert decision.action is Action.REPLY
    response = response_of(decision.response)
    assert response.status == decision.status == status
    if status in (200, 405):
        assert response.headers.get("allow") == "INVITE, ACK, CANCEL, OPTIONS"
    if status == 420:
        assert response.headers.get("unsupported") == "100rel"
    # A retransmission of a non-INVITE gets the same answer (RFC 3261 section 17.2.2).
    assert core.receive(data, at=FIXTURE_AT).response == decision.response


def test_ack_gets_no_response(verify: CountingVerifier) -> None:
    core = SipServerCore()
    stray = core.receive(request("ACK"), at=FIXTURE_AT)
    assert (stray.action, stray.response) == (Action.ABSORB, None)
    data = fixture_call("alpha_a")
    verify_inline(core, data, at=FIXTURE_AT, verify=verify)
    ack = data.replace(b"INVITE sip:", b"ACK sip:", 1).replace(b"CSeq: 1 INVITE", b"CSeq: 1 ACK")
    matched = core.receive(ack, at=FIXTURE_AT)
    assert (matched.action, matched.response) == (Action.ABSORB, None)
    assert core.stats.acks == 2


@pytest.mark.parametrize(
    ("data", "absorbed"),
    [
        (request("ACK"), True),
        (request("ACK").replace(b"CSeq: 1 ACK\r\n", b""), True),  # nothing to answer anyway
        (b"ACK sip:+12025550199@bravo.example SIP/2.0\r\n\r\n", True),
        (b"ACK sip:+12025550199@bravo.example", False),  # no request line: parsed, unparseable
        (b"ACK\r\n" + request("ACK"), False),  # not an ACK request line: parsed
    ],
    ids=["ack", "ack-without-cseq", "bare-ack", "cut-request-line", "garbage-first"],
)
def test_an_ack_is_absorbed_from_its_request_line(data: bytes, absorbed: bool) -> None:
    """ACKs never get a response (RFC 3261 section 17.2.1): one that opens with an ACK
    request line is absorbed without a parse (half of a busy server's datagrams); anything
    else takes the parser and its usual decision, never a response."""
    core = SipServerCore()
    decision = core.receive(data, at=FIXTURE_AT)
    assert decision.response is None
    assert (decision.action is Action.ABSORB) == absorbed
    assert core.stats.acks == core.stats.requests["ACK"] == (1 if absorbed else 0)


def _cancel_for(invite: bytes) -> bytes:
    head = invite.split(b"\r\n\r\n", 1)[0]
    keep = [
        line
        for line in head.split(b"\r\n")[1:]
        if line.split(b":", 1)[0].lower() in (b"via", b"from", b"to", b"call-id", b"max-forwards")
    ]
    uri = head.split(b" ")[1]
    lines = [b"CANCEL " + uri + b" SIP/2.0", *keep, b"CSeq: 1 CANCEL", b"Content-Length: 0"]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def test_cancel_of_answered_invite_is_200(verify: CountingVerifier) -> None:
    core = SipServerCore()
    data = fixture_call("alpha_a")
    verify_inline(core, data, at=FIXTURE_AT, verify=verify)
    cancel = core.receive(_cancel_for(data), at=FIXTURE_AT)
    assert response_of(cancel.response).status == 200


def test_cancel_of_pending_invite_ends_it_with_487(verify: CountingVerifier) -> None:
    core = SipServerCore()
    data = fixture_call("alpha_a")
    decision = core.receive(data, at=FIXTURE_AT)
    assert decision.job is not None
    cancel = core.receive(_cancel_for(data), at=FIXTURE_AT)
    assert response_of(cancel.response).status == 200
    final = core.complete(
        decision.job, verify(decision.job.verification_request(), decision.job.at)
    )
    assert final.status == 487
    assert response_of(final.response).status == 487


# -- input that cannot be answered ----------------------------------------------------------


def _with_bare_cr(data: bytes, name: bytes) -> bytes:
    """``data`` with a bare CR inserted at the end of the header line named ``name``."""
    start = data.index(b"\r\n" + name) + 2
    end = data.index(b"\r\n", start)
    return data[:end] + b"\rX-Injected: 1" + data[end:]


DROP_CASES = [
    ("empty", b"", DropReason.KEEPALIVE),
    ("crlf-keepalive", b"\r\n\r\n", DropReason.KEEPALIVE),
    ("garbage", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", DropReason.UNPARSEABLE),
    ("http", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", DropReason.UNPARSEABLE),
    (
        "stray-response",
        b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n\r\n",
        DropReason.STRAY_RESPONSE,
    ),
    (
        "no-via",
        request("OPTIONS").replace(
            b"Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK-options-1\r\n", b""
        ),
        DropReason.UNANSWERABLE,
    ),
    ("no-cseq", request("OPTIONS").replace(b"CSeq: 1 OPTIONS\r\n", b""), DropReason.UNANSWERABLE),
    # A bare CR inside a header the answer would copy (the parse keeps it in the value): no
    # answer can be written without splitting that header.
    ("bare-cr-in-to", _with_bare_cr(request("OPTIONS"), b"To:"), DropReason.UNANSWERABLE),
    ("bare-cr-in-pai", _with_bare_cr(fixture_call("alpha_a").replace(
        b"\r\nCall-ID:", b"\r\nP-Asserted-Identity: <sip:+12025550101@alpha.example>\r\nCall-ID:"
     ), b"P-Asserted-Identity:"), DropReason.UNANSWERABLE),
    ("bare-cr-in-invite-to", _with_bare_cr(fixture_call("alpha_a"), b"To:"),
     DropReason.UNANSWERABLE),
]  # fmt: skip


@pytest.mark.parametrize(
    ("data", "reason"), [c[1:] for c in DROP_CASES], ids=[c[0] for c in DROP_CASES]
)
def test_unanswerable_input_is_dropped_and_counted(data: bytes, reason: DropReason) -> None:
    core = SipServerCore()
    decision = core.receive(data, at=FIXTURE_AT)
    assert (decision.action, decision.drop, decision.response) == (Action.DROP, reason, None)
    assert core.stats.drops[reason.value] == 1


def test_oversized_request_gets_513_when_its_headers_fit() -> None:
    core = SipServerCore(max_message_bytes=2_000)
    data = fixture_call("alpha_a")
    body_padded = data + b"a=x-padding:" + b"x" * 3_000 + b"\r\n"
    decision = core.receive(body_padded, at=FIXTURE_AT)
    assert response_of(decision.response).status == 513
    headers_too_long = data.replace(b"Max-Forwards: 69", b"X-Pad: " + b"y" * 3_000, 1)
    dropped = core.receive(headers_too_long, at=FIXTURE_AT)
    assert (dropped.action, dropped.drop) == (Action.DROP, DropReason.TOO_LARGE)


@settings(max_examples=600, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=600),
        st.builds(
            lambda prefix, cut: prefix[:cut],
            st.sampled_from([request("OPTIONS"), request("INVITE"), request("ACK")]),
            st.integers(0, 400),
        ),
        lightly_mutated(),  # SIP fixtures changed in one or two places of their heads
    ),
    st.booleans(),
)
def test_any_bytes_give_a_decision(data: bytes, shed: bool) -> None:
    decision = SipServerCore().receive(data, at=FIXTURE_AT, shed=shed)
    assert isinstance(decision, Decision)
    if decision.response is not None:
        assert isinstance(parse_message(decision.response), Response)


def _reference_answer(request: Request, result: VerificationResult) -> bytes:
    """The redirect as the definitions give it, without any shortcut: identities decorated
    each time (no memo), the From tag removed by the regex, the response built as a message
    and serialised (``response_to``). 3GPP TS 24.229 section 7.2A.20, RFC 3261 8.2.6.2."""
    verstat = result.verstat
    pai = [with_verstat(v, verstat) for v in request.headers.values("p-asserted-identity")]
    redirected = [uri_header("P-Asserted-Identity", v) for v in pai]
    from_value = request.headers.get("from")
    if from_value is not None:
        gt = from_value.rfind(">")
        if from_value.lstrip().startswith(("<", '"')) or ("<" in from_value and gt > 0):
            bare = from_value[: gt + 1] + _TAG_PARAM.sub("", from_value[gt + 1 :])
        else:
            uri, _, params = from_value.strip().partition(";")
            bare = f"<{uri}>" + (_TAG_PARAM.sub("", f";{params}") if params else "")
        redirected.append(uri_header("From", with_verstat(bare, verstat)))
    target = request.uri_text.strip().strip("<>")
    if redirected and "?" not in target:
        target = f"{target}?{'&'.join(redirected)}"
    headers = [("Contact", f"<{target}>"), *(("P-Asserted-Identity", v) for v in pai)]
    headers += [*stir_reasons(result), ("Server", SERVER_HEADER)]
    return response_to(request, 302, "Moved Temporarily", headers).to_bytes()


_FROMS = st.sampled_from(
    ['"Alpha Caller" <sip:+12025550101@alpha.example;user=phone>;tag=f1',
     "<sip:+12025550101@alpha.example;user=phone>;tag=x;tag=y",
     "<tel:+12025550101>;TAG=a;x=1", "sip:+12025550101@alpha.example;tag=z",
     '"A" <sip:a@b>', "Bob <sip:bob@b.example;lr>;tag="]
)  # fmt: skip
_PAIS = st.sampled_from(
    [None, "<sip:+12025550101@alpha.example;user=phone>", "<tel:+12025550101>",
     '"A" <sip:+12025550101@a.example>, <tel:+12025550101>', "<mailto:a@b>"]
)  # fmt: skip
_URIS = st.sampled_from(
    ["sip:+12025550199@bravo.example;user=phone", "sip:a@b?x=y", "tel:+12025550199", "sips:b@c"]
)


@settings(max_examples=150, deadline=None)
@given(_FROMS, _PAIS, _URIS, st.booleans(), st.sampled_from(["alpha_a", "tampered", "unsigned"]))
def test_redirect_is_the_reference_answer(
    verifier: Verifier, from_: str, pai: str | None, uri: str, two_vias: bool, name: str
) -> None:
    """The 302 for varied INVITEs is byte for byte the one the definitions build."""
    core = SipServerCore()
    signed = parse_message(fixture_call(name))
    assert isinstance(signed, Request)
    result = verifier.verify(request_from_message(signed), at=FIXTURE_AT)
    data = build_invite(identities=[], date=None, pai=pai).decode()
    lines = []
    for line in data.split("\r\n"):
        if line.startswith("INVITE "):
            line = f"INVITE {uri} SIP/2.0"
        elif line.startswith("From:"):
            line = f"From: {from_}"
        elif line.startswith("Via:") and two_vias:
            line += "\r\nVia: SIP/2.0/TCP 192.0.2.99;branch=z9hG4bKsecond"
        lines.append(line)
    request = parse_message("\r\n".join(lines).encode())
    assert isinstance(request, Request)
    for _ in range(2):  # the second time from the remembered decorations
        status, answer = core._answer(request, result)
        assert (status, answer) == (302, _reference_answer(request, result))
