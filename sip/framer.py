"""``StreamFramer``: SIP messages out of a TCP/TLS byte stream, framed by Content-Length.

Theory of operation. Bytes are appended to one buffer, which is consumed from the front:
1. CR/LF bytes between messages are keep-alives (RFC 5626 section 3.5.1 "CRLFCRLF" pings,
   RFC 3261 section 7.5) and are dropped.
2. The first line must look like a request or status line; if it does not, bytes are discarded
   up to the next line that does (a ``garbage`` `FramingError` reports how many).
3. Once the blank line ending the headers is in, Content-Length gives the body size (RFC 3261
   section 18.3: mandatory on streams; when missing the body is taken as empty and the message
   carries a ``missing_content_length`` violation). A non-numeric or negative value cannot be
   framed: the header block is reported and dropped and the framer resynchronises.
4. A message larger than ``max_message_bytes`` is reported and its bytes are skipped as they
   arrive, so the buffer never holds more than about one maximum-size message.
The framer never raises on input: every problem becomes a `FramingError` in the output list.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sip.defects import Defect, SipParseError, SipReason
from sip.limits import MAX_MESSAGE_BYTES, MAX_START_LINE_BYTES
from sip.message import Request, Response, with_defects
from sip.parser import find_header_end, parse_message

_TOKEN = rb"[A-Za-z0-9!%*_+`'~.\-]+"
_VERSION = rb"SIP/[0-9]+\.[0-9]+"
_START_LINE = re.compile(
    rb"(?:" + _TOKEN + rb"[ \t]+[^ \t\r\n].*[ \t]" + _VERSION + rb"[ \t]*"
    rb"|" + _VERSION + rb" [0-9]{3}(?: [^\r\n]*)?)\r?"
)
_LINE_START = re.compile(
    rb"\n(?=" + _TOKEN + rb"[ \t]+[^\r\n]*" + _VERSION + rb"|" + _VERSION + rb" )"
)
_CONTENT_LENGTH = re.compile(rb"(?im)^(?:content-length|l)[ \t]*:[ \t]*([^\r\n]*?)[ \t]*\r?$")


@dataclass(frozen=True, slots=True)
class FramingError:
    """Something in the stream that is not a message: ``reason`` says what, ``stream_offset``
    where it started (bytes since the framer was created), ``length`` how many bytes went.

    RFC 3261 section 18.3.
    """

    reason: SipReason
    stream_offset: int
    length: int
    detail: str = ""


class StreamFramer:
    """Incremental framer for one direction of a TCP/TLS connection (sans-IO).

    ``feed(data)`` returns the messages and framing errors completed by ``data``;
    ``close()`` reports any bytes left over when the stream ends. RFC 3261 section 18.3.
    """

    def __init__(self, *, max_message_bytes: int = MAX_MESSAGE_BYTES, strict: bool = False) -> None:
        self._buf = bytearray()
        self._offset = 0  # stream offset of self._buf[0]
        self._skip = 0  # bytes of an oversize message still to discard
        self._max = max_message_bytes
        self._strict = strict

    @property
    def buffered(self) -> int:
        """Bytes held waiting for the rest of a message."""
        return len(self._buf)

    def _drop(self, count: int) -> None:
        del self._buf[:count]
        self._offset += count

    def feed(self, data: bytes) -> list[Request | Response | FramingError]:
        out: list[Request | Response | FramingError] = []
        if self._skip:
            skipped = min(self._skip, len(data))
            self._skip -= skipped
            self._offset += skipped
            data = data[skipped:]
        self._buf += data
        while self._step(out):
            pass
        return out

    def close(self) -> list[Request | Response | FramingError]:
        """End of stream: leftover bytes (other than keep-alives) are a truncated message."""
        out: list[Request | Response | FramingError] = []
        rest = bytes(self._buf).lstrip(b"\r\n")
        if rest:
            out.append(
                FramingError(
                    SipReason.MISSING_HEADER_TERMINATOR
                    if find_header_end(rest, 0)[0] < 0
                    else SipReason.CONTENT_LENGTH_EXCEEDS_DATA,
                    self._offset + len(self._buf) - len(rest),
                    len(rest),
                    "stream ended inside a message",
                )
            )
        self._drop(len(self._buf))
        return out

    def _resync(self, out: list[Request | Response | FramingError], detail: str) -> None:
        """Discard bytes up to the next plausible start line (or keep only a partial line)."""
        buf = self._buf
        match = _LINE_START.search(buf)
        if match is not None:
            count = match.start() + 1
        else:
            last_nl = buf.rfind(b"\n")
            count = last_nl + 1 if last_nl >= 0 else len(buf)
            if len(buf) - count > MAX_START_LINE_BYTES:
                count = len(buf)
        if count:
            out.append(FramingError(SipReason.INVALID_START_LINE, self._offset, count, detail))
            self._drop(count)

    def _step(self, out: list[Request | Response | FramingError]) -> bool:
        """Consume one thing from the buffer; False when more data is needed."""
        buf = self._buf
        if self._skip:
            return False
        keepalive = len(buf) - len(buf.lstrip(b"\r\n"))
        if keepalive:
            self._drop(keepalive)
        if not buf:
            return False
        nl = buf.find(b"\n")
        if nl < 0:
            if len(buf) > MAX_START_LINE_BYTES:
                self._resync(out, "start line too long")
                return bool(self._buf)
            return False
        if not _START_LINE.fullmatch(buf, 0, nl):
            before = len(buf)
            self._resync(out, "not a start line")
            return len(buf) != before
        head_end, body_start = find_header_end(buf, 0)
        if head_end < 0:
            if len(buf) > self._max:
                out.append(
                    FramingError(SipReason.MESSAGE_TOO_LARGE, self._offset, len(buf), "headers")
                )
                self._drop(len(buf))
            return False
        lengths = _CONTENT_LENGTH.findall(buf, 0, head_end + 1)
        missing = not lengths
        length = 0
        if lengths:
            text = lengths[0]
            if not (text.isdigit() and len(text) <= 9):
                out.append(
                    FramingError(
                        SipReason.INVALID_CONTENT_LENGTH,
                        self._offset,
                        body_start,
                        text[:20].decode("ascii", "replace"),
                    )
                )
                self._drop(body_start)
                return True
            length = int(text)
        total = body_start + length
        if total > self._max:
            dropped = min(total, len(buf))
            out.append(FramingError(SipReason.MESSAGE_TOO_LARGE, self._offset, total, "message"))
            self._drop(dropped)
            self._skip = total - dropped
            return bool(self._buf) and not self._skip
        if len(buf) < total:
            return False
        raw = bytes(buf[:total])
        start = self._offset
        self._drop(total)
        try:
            message = parse_message(raw, strict=self._strict)
        except SipParseError as exc:
            out.append(FramingError(exc.reason, start, total, exc.detail))
            return True
        if missing:
            if self._strict:
                out.append(FramingError(SipReason.MISSING_CONTENT_LENGTH, start, total))
                return True
            defect = Defect(
                SipReason.MISSING_CONTENT_LENGTH, "stream message without Content-Length", None
            )
            message = with_defects(message, [defect])
        out.append(message)
        return True
