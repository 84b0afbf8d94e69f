"""``parse_message``: one SIP message from bytes (a datagram or a framed stream message)."""

from __future__ import annotations

from sip.defects import Defect, SipParseError, SipReason
from sip.headers import Headers, is_token
from sip.limits import (
    MAX_HEADER_COUNT,
    MAX_HEADER_LINE_BYTES,
    MAX_MESSAGE_BYTES,
    MAX_START_LINE_BYTES,
)
from sip.message import (
    _NAME_INFO,
    SIP_VERSION,
    Request,
    Response,
    _digits,
    _is_version,
    _name_info,
)


def find_header_end(data: bytes | bytearray, start: int) -> tuple[int, int]:
    """(end of the header block, start of the body), or (-1, -1) if no blank line yet.

    The header block ends at the first empty line, whether lines end in CRLF or bare LF.
    RFC 3261 section 7.
    """
    p = data.find(b"\n\r\n", start)
    q = data.find(b"\n\n", start, p if p >= 0 else len(data))
    if q >= 0:
        return q, q + 2
    if p >= 0:
        return p, p + 3
    return -1, -1


def _split_lines(
    data: bytes, start: int, head: bytes, defects: list[Defect]
) -> tuple[list[str], list[int] | None]:
    """Lines of the header block as text, with the byte offset of each line (None on the fast
    path: pure ASCII with CRLF endings, where offsets follow from the line lengths)."""
    lf_only = head.count(b"\n") != head.count(b"\r\n")
    if head.isascii():
        text = head.decode("ascii")
        if not lf_only:
            return text.split("\r\n"), None
        pieces = text.split("\n")
        offsets = []
        off = start
        for piece in pieces:
            offsets.append(off)
            off += len(piece) + 1
        defects.append(Defect.of(SipReason.LF_LINE_ENDINGS, "lines end in bare LF", start))
        return [p[:-1] if p.endswith("\r") else p for p in pieces], offsets
    if lf_only:
        defects.append(Defect.of(SipReason.LF_LINE_ENDINGS, "lines end in bare LF", start))
    # Non-ASCII: decode line by line so byte offsets stay exact; invalid UTF-8 is kept with
    # surrogateescape so the text round-trips to the same bytes (RFC 3261 section 7.3.1: UTF-8).
    lines = []
    offsets = []
    off = start
    bad = False
    for chunk in head.split(b"\n"):
        offsets.append(off)
        off += len(chunk) + 1
        if chunk.endswith(b"\r"):
            chunk = chunk[:-1]
        try:
            lines.append(chunk.decode("utf-8"))
        except UnicodeDecodeError:
            lines.append(chunk.decode("utf-8", "surrogateescape"))
            if not bad:
                defects.append(Defect.of(SipReason.NON_UTF8, "invalid UTF-8", offsets[-1]))
                bad = True
    return lines, offsets


def _parse_start_line(first: str, offset: int, defects: list[Defect]) -> tuple[str, str, str]:
    """(method or version, Request-URI or status, version or reason) of the first line."""
    if len(first) > MAX_START_LINE_BYTES:
        raise SipParseError(SipReason.START_LINE_TOO_LONG, f"{len(first)} bytes", offset)
    if first.startswith("SIP/"):
        version, _, rest = first.partition(" ")
        code, sp, reason = rest.partition(" ")
        if not _is_version(version) or len(code) != 3 or _digits(code) is None:
            raise SipParseError(SipReason.INVALID_STATUS_LINE, first[:80], offset)
        if not sp:
            defects.append(Defect.of(SipReason.START_LINE_WHITESPACE, "no SP after code", offset))
        if int(code) < 100:
            raise SipParseError(SipReason.INVALID_STATUS_LINE, first[:80], offset)
        return version, code, reason
    parts = first.split(" ")
    if len(parts) != 3 or not all(parts):
        parts = first.split()
        if len(parts) < 3:
            raise SipParseError(SipReason.INVALID_START_LINE, first[:80], offset)
        if len(parts) == 3:
            defects.append(Defect.of(SipReason.START_LINE_WHITESPACE, "extra whitespace", offset))
        else:
            parts = [parts[0], " ".join(parts[1:-1]), parts[-1]]
    method, uri, version = parts
    if not is_token(method) or not _is_version(version):
        raise SipParseError(SipReason.INVALID_START_LINE, first[:80], offset)
    return method, uri, version


def parse_message(
    data: bytes | bytearray | memoryview, *, strict: bool = False
) -> Request | Response:
    """Parse one SIP message. Lenient by default: deviations become `Defect`s on the message;
    with ``strict=True`` the first violation (not a mere note) raises `SipParseError`.

    Any input yields a message or `SipParseError`. Leading CRLFs are skipped (RFC 3261
    section 7.5); a body is framed by Content-Length, else it runs to the end of the data
    (RFC 3261 section 18.3).
    """
    data = bytes(data)  # a no-op for bytes; copies bytearray/memoryview input
    n = len(data)
    if n > MAX_MESSAGE_BYTES:
        raise SipParseError(SipReason.MESSAGE_TOO_LARGE, f"{n} bytes")
    defects: list[Defect] = []
    start = 0
    if data[:1] in (b"\r", b"\n"):
        start = n - len(data.lstrip(b"\r\n"))
        defects.append(Defect.of(SipReason.LEADING_CRLF, f"{start} bytes", 0))
    if start >= n:
        raise SipParseError(SipReason.EMPTY, "no start line")
    head_end, body_start = find_header_end(data, start)
    if head_end < 0:
        head_end = body_start = n
        if data.endswith(b"\n"):
            head_end -= 1
        defects.append(Defect.of(SipReason.MISSING_HEADER_TERMINATOR, "", n))
    if head_end > start and data[head_end - 1] == 13:  # a CR before the final LF
        head_end -= 1
    lines, offsets = _split_lines(data, start, data[start:head_end], defects)
    first, second, third = _parse_start_line(lines[0], start, defects)

    names: list[str] = []
    values: list[str] = []
    offs: list[int] = []
    lens: list[int] = []
    keys: list[str] = []
    add_name, add_value, add_off, add_len, add_key = (
        names.append,
        values.append,
        offs.append,
        lens.append,
        keys.append,
    )
    name_info = _NAME_INFO.get
    check_length = head_end - start > MAX_HEADER_LINE_BYTES
    folded_at = -1  # index of the last header whose fold was reported
    next_off = start + len(lines[0]) + 2
    for i in range(1, len(lines)):
        line = lines[i]
        if offsets is None:
            off = next_off
            next_off += len(line) + 2
        else:
            off = offsets[i]
        if check_length and len(line) > MAX_HEADER_LINE_BYTES:
            raise SipParseError(SipReason.HEADER_LINE_TOO_LONG, f"{len(line)} bytes", off)
        if not line:
            continue
        c0 = line[0]
        if c0 == " " or c0 == "\t":
            if not names:
                defects.append(Defect.of(SipReason.MALFORMED_HEADER_LINE, "fold first", off))
                continue
            # obs-fold: the line break and leading whitespace stand for one SP (section 7.3.1).
            values[-1] = (values[-1] + " " + line.strip(" \t")).strip(" \t")
            lens[-1] = off + len(line) - offs[-1]
            if len(values[-1]) > MAX_HEADER_LINE_BYTES:
                raise SipParseError(SipReason.HEADER_LINE_TOO_LONG, "folded", offs[-1])
            if folded_at != len(names):
                defects.append(Defect.of(SipReason.HEADER_FOLDING, names[-1], off))
                folded_at = len(names)
            continue
        name, colon, value = line.partition(":")
        if not colon or not name:
            defects.append(Defect.of(SipReason.MALFORMED_HEADER_LINE, line[:40], off))
            continue
        info = name_info(name) or _name_info(name)
        if info[2]:
            name = name.rstrip(" \t")
            defects.append(Defect.of(SipReason.WHITESPACE_BEFORE_COLON, name, off))
        if not info[1]:
            defects.append(Defect.of(SipReason.INVALID_HEADER_NAME, name[:40], off))
        if value and value[0] != " ":
            defects.append(Defect.of(SipReason.NO_SPACE_AFTER_COLON, name, off))
        add_name(name)
        add_value(value.strip(" \t"))
        add_off(off)
        add_len(len(line))
        add_key(info[0])
    if len(names) > MAX_HEADER_COUNT:
        raise SipParseError(SipReason.TOO_MANY_HEADERS, f"{len(names)} headers")
    headers = Headers(names, values, offs, lens, keys)

    # Body framing (RFC 3261 section 18.3 and section 20.14).
    cl_values = [values[j] for j in range(len(keys)) if keys[j] == "content-length"]
    available = n - body_start
    body_end = n
    if not cl_values:
        if available:
            defects.append(Defect.of(SipReason.MISSING_CONTENT_LENGTH, "body to end", body_start))
    else:
        if len(set(cl_values)) > 1:
            defects.append(Defect.of(SipReason.CONFLICTING_CONTENT_LENGTH, repr(cl_values)))
        length = _digits(cl_values[0], 9)
        if length is None:
            defects.append(Defect.of(SipReason.INVALID_CONTENT_LENGTH, repr(cl_values[0])))
        elif length > available:
            defects.append(
                Defect.of(SipReason.CONTENT_LENGTH_EXCEEDS_DATA, f"{length} > {available}")
            )
        elif length < available:
            body_end = body_start + length
            defects.append(
                Defect.of(SipReason.TRAILING_DATA, f"{available - length} bytes", body_end)
            )
    body = data[body_start:body_end] if body_start < body_end else b""
    message: Request | Response
    if lines[0].startswith("SIP/"):
        if first != SIP_VERSION:
            defects.append(Defect.of(SipReason.UNSUPPORTED_VERSION, first, start))
        message = Response(
            data, first, int(second), third, headers, body, body_start, tuple(defects)
        )
    else:
        if third != SIP_VERSION:
            defects.append(Defect.of(SipReason.UNSUPPORTED_VERSION, third, start))
        message = Request(data, first, second, third, headers, body, body_start, tuple(defects))
    if strict:
        for defect in message.defects:
            if defect.violation:
                raise SipParseError(defect.code, defect.detail, defect.offset)
    return message
