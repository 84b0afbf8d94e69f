"""StreamFramer: Content-Length framing, splits, keep-alives, garbage, limits."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from sip import FramingError, Request, Response, SipReason, StreamFramer
from sip.limits import MAX_MESSAGE_BYTES
from tests.sip.conftest import crlf

M1 = (
    crlf(
        "INVITE sip:b@x SIP/2.0\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\nMax-Forwards: 70\n"
        "To: <sip:b@x>\nFrom: <sip:a@x>;tag=1\nCall-ID: c1\nCSeq: 1 INVITE\n"
        "Content-Length: 10\n\n"
    )
    + b"0123456789"
)
M2 = crlf(
    "SIP/2.0 200 OK\nVia: SIP/2.0/TCP h;branch=z9hG4bK1\nTo: <sip:b@x>;tag=2\n"
    "From: <sip:a@x>;tag=1\nCall-ID: c1\nCSeq: 1 INVITE\nl: 0\n\n"
)
M3 = crlf("BYE sip:b@x SIP/2.0\nCall-ID: c1\nContent-Length: 3\n\n") + b"\r\n\r"


def raws(items: list[Request | Response | FramingError]) -> list[bytes]:
    return [i.raw for i in items if not isinstance(i, FramingError)]


def feed_chunks(chunks: list[bytes]) -> list[Request | Response | FramingError]:
    framer = StreamFramer()
    out: list[Request | Response | FramingError] = []
    for chunk in chunks:
        out.extend(framer.feed(chunk))
    out.extend(framer.close())
    return out


def test_several_messages_in_one_segment() -> None:
    assert raws(feed_chunks([M1 + M2 + M3])) == [M1, M2, M3]


def test_byte_at_a_time() -> None:
    stream = M1 + b"\r\n\r\n" + M2 + M3
    out = feed_chunks([stream[i : i + 1] for i in range(len(stream))])
    assert raws(out) == [M1, M2, M3]
    assert not [o for o in out if isinstance(o, FramingError)]


def test_body_bytes_that_look_like_crlf_belong_to_the_body() -> None:
    (msg,) = feed_chunks([M3])
    assert isinstance(msg, Request)
    assert msg.body == b"\r\n\r"


def test_keepalives_are_dropped() -> None:
    assert raws(feed_chunks([b"\r\n\r\n", M1, b"\r\n", b"\r\n\r\n", M2])) == [M1, M2]


def test_missing_content_length_means_empty_body_and_violation() -> None:
    raw = crlf("OPTIONS sip:x@y SIP/2.0\nCall-ID: a\n\n")
    (msg,) = feed_chunks([raw + M2])[:1]
    assert isinstance(msg, Request)
    assert msg.body == b""
    found = [d for d in msg.defects if d.code is SipReason.MISSING_CONTENT_LENGTH]
    assert found
    assert found[0].violation


def test_garbage_is_skipped_and_reported() -> None:
    out = feed_chunks([b"\x16\x03\x01 not sip at all\r\nmore junk\r\n" + M1 + b"junk\r\n" + M2])
    assert raws(out) == [M1, M2]
    errors = [o for o in out if isinstance(o, FramingError)]
    assert errors
    assert all(e.reason is SipReason.INVALID_START_LINE for e in errors)
    assert errors[0].stream_offset == 0


def test_invalid_content_length_is_reported_and_framing_recovers() -> None:
    bad = crlf("INVITE sip:b@x SIP/2.0\nContent-Length: -999\n\n") + b"v=0\r\n"
    out = feed_chunks([bad + M2])
    assert raws(out) == [M2]
    assert any(
        isinstance(o, FramingError) and o.reason is SipReason.INVALID_CONTENT_LENGTH for o in out
    )


def test_oversize_message_is_skipped_without_buffering_it() -> None:
    head = crlf(f"MESSAGE sip:b@x SIP/2.0\nContent-Length: {MAX_MESSAGE_BYTES * 2}\n\n")
    framer = StreamFramer()
    out = framer.feed(head)
    assert any(isinstance(o, FramingError) and o.reason is SipReason.MESSAGE_TOO_LARGE for o in out)
    chunk = b"x" * 4096
    for _ in range(MAX_MESSAGE_BYTES * 2 // 4096):
        assert framer.feed(chunk) == []
        assert framer.buffered == 0
    rest = MAX_MESSAGE_BYTES * 2 - (MAX_MESSAGE_BYTES * 2 // 4096) * 4096
    assert raws(framer.feed(b"x" * rest + M2)) == [M2]


def test_endless_headers_are_bounded() -> None:
    framer = StreamFramer()
    out: list[Request | Response | FramingError] = []
    out += framer.feed(b"INVITE sip:b@x SIP/2.0\r\n")
    for _ in range(MAX_MESSAGE_BYTES // 1000 + 2):
        out += framer.feed(b"X-Pad: " + b"a" * 991 + b"\r\n")
        assert framer.buffered <= MAX_MESSAGE_BYTES + 1000
    assert any(isinstance(o, FramingError) and o.reason is SipReason.MESSAGE_TOO_LARGE for o in out)


def test_close_reports_truncated_message() -> None:
    framer = StreamFramer()
    assert framer.feed(M1[:-3]) == []
    (err,) = framer.close()
    assert isinstance(err, FramingError)
    assert err.reason is SipReason.CONTENT_LENGTH_EXCEEDS_DATA


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(M1 + M2 + M3) * 2), max_size=12))
def test_any_split_gives_the_same_messages(cuts: list[int]) -> None:
    stream = b"\r\n" + M1 + M2 + b"\r\n\r\n" + M3 + M1
    points = sorted({min(c, len(stream)) for c in cuts} | {0, len(stream)})
    chunks = [stream[a:b] for a, b in itertools.pairwise(points)]
    out = feed_chunks(chunks)
    assert raws(out) == [M1, M2, M3, M1]
    assert not [o for o in out if isinstance(o, FramingError)]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.lists(st.integers(min_value=1, max_value=64), max_size=8))
def test_framer_never_raises_and_recovers_after_garbage(junk: bytes, sizes: list[int]) -> None:
    stream = junk + b"\r\n" + M2
    chunks = []
    pos = 0
    for size in sizes:
        chunks.append(stream[pos : pos + size])
        pos += size
    chunks.append(stream[pos:])
    out = feed_chunks(chunks)
    assert all(isinstance(o, Request | Response | FramingError) for o in out)
    if b"SIP/" not in junk:
        assert raws(out)[-1:] == [M2]
