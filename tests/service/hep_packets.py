"""HEP packets and SIP dialogs for the live pipeline and listener tests.

HEPv3 packets are built chunk by chunk per the HEP3 specification (rev. 37: ``HEP3``, total
length, then vendor/type/length/value chunks; STANDARDS.md section 13), around the committed
signed fixture INVITEs and the responses a UAS would send (RFC 3261 section 8.2.6, 12.1.1).
"""

from __future__ import annotations

import socket
import struct
import zlib
from datetime import datetime

from tests.conftest import FIXTURES, load_script

NS = 1_000_000_000
CALLER = ("198.51.100.10", 5060)
CALLEE = ("203.0.113.20", 5060)


gen = load_script(FIXTURES / "gen_captures.py")


def ts_ns(at: datetime) -> int:
    return int(at.timestamp()) * NS + at.microsecond * 1000


def chunk(ctype: int, value: bytes, vendor: int = 0) -> bytes:
    """One HEP3 chunk: vendor id, type id, length (header included), value."""
    return struct.pack("!HHH", vendor, ctype, 6 + len(value)) + value


def hep3(
    payload: bytes,
    at_ns: int | None,
    *,
    src: tuple[str, int] = CALLER,
    dst: tuple[str, int] = CALLEE,
    proto_type: int = 1,
    gzip_payload: bool = False,
    extra: bytes = b"",
) -> bytes:
    """A HEP3 packet over IPv4/UDP: family, protocol, addresses, ports, time (when given),
    protocol type, capture id, ``extra`` raw chunks, then the (optionally gzip) payload."""
    body = (
        chunk(0x01, b"\x02")
        + chunk(0x02, b"\x11")
        + chunk(0x03, socket.inet_aton(src[0]))
        + chunk(0x04, socket.inet_aton(dst[0]))
        + chunk(0x07, struct.pack("!H", src[1]))
        + chunk(0x08, struct.pack("!H", dst[1]))
    )
    if at_ns is not None:
        sec, usec = divmod(at_ns // 1000, 1_000_000)
        body += chunk(0x09, struct.pack("!I", sec)) + chunk(0x0A, struct.pack("!I", usec))
    body += chunk(0x0B, bytes([proto_type])) + chunk(0x0C, struct.pack("!I", 2001)) + extra
    if gzip_payload:
        packer = zlib.compressobj(wbits=31)  # gzip framing, as heplify's compressed payloads
        body += chunk(0x10, packer.compress(payload) + packer.flush())
    else:
        body += chunk(0x0F, payload)
    return b"HEP3" + struct.pack("!H", 6 + len(body)) + body


def heartbeat(at_ns: int) -> bytes:
    """A keep-alive: the keep-alive chunk (0x0d) and no payload."""
    sec = at_ns // NS
    body = chunk(0x01, b"\x02") + chunk(0x09, struct.pack("!I", sec)) + chunk(0x0D, b"\x00\x1e")
    return b"HEP3" + struct.pack("!H", 6 + len(body)) + body


def _header(head: list[str], name: str) -> str:
    prefix = name.lower() + ":"
    return next(line for line in head if line.lower().startswith(prefix))


def dialog(invite: bytes, *, to_tag: str = "t-1") -> list[bytes]:
    """INVITE, 180, 200, ACK, BYE, 200 (BYE) of one call, in order (RFC 3261 section 12)."""
    head = invite.split(b"\r\n\r\n", 1)[0].decode().split("\r\n")
    uri = head[0].split(" ")[1]
    via, frm, to, cid = (_header(head, n) for n in ("Via", "From", "To", "Call-ID"))
    tagged = f"{to};tag={to_tag}"

    def response(status: str, cseq: str) -> bytes:
        lines = [f"SIP/2.0 {status}", via, frm, tagged, cid, f"CSeq: {cseq}"]
        return ("\r\n".join([*lines, "Content-Length: 0", "", ""])).encode()

    def request(method: str, cseq: int, branch: str) -> bytes:
        lines = [
            f"{method} {uri} SIP/2.0",
            f"Via: SIP/2.0/UDP {CALLER[0]}:{CALLER[1]};branch=z9hG4bK-{branch}",
            "Max-Forwards: 70",
            frm,
            tagged,
            cid,
            f"CSeq: {cseq} {method}",
        ]
        return ("\r\n".join([*lines, "Content-Length: 0", "", ""])).encode()

    return [
        invite,
        response("180 Ringing", "1 INVITE"),
        response("200 OK", "1 INVITE"),
        request("ACK", 1, "ack"),
        request("BYE", 2, "bye"),
        response("200 OK", "2 BYE"),
    ]


def dialog_hep(invite: bytes, start_ns: int, *, step_ns: int = NS // 10) -> list[bytes]:
    """The dialog as HEP3 packets, requests caller -> callee, responses back."""
    out = []
    for n, message in enumerate(dialog(invite)):
        response = message.startswith(b"SIP/2.0")
        src, dst = (CALLEE, CALLER) if response else (CALLER, CALLEE)
        out.append(hep3(message, start_ns + n * step_ns, src=src, dst=dst))
    return out


def udp_frame(
    payload: bytes, *, src: tuple[str, int] = CALLER, dst: tuple[str, int] = CALLEE
) -> bytes:
    """An Ethernet/IPv4/UDP frame around ``payload`` (LINKTYPE_ETHERNET)."""
    frame: bytes = gen.build_udp_ipv4_ethernet(src[0], src[1], dst[0], dst[1], payload)
    return frame
