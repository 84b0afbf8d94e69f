"""A small DER reader for the few STIR extensions ``cryptography`` leaves undecoded.

Only what RFC 8226 and RFC 9118 need: definite-length TLVs with single-byte tags, walked
strictly (X.690 section 10 DER: definite lengths, minimal length octets). Callers that want
to be lenient catch ``DerError`` and decide what a partial decode is worth.

ITU-T X.690 section 8.1 (TLV encoding) and section 10.1 (DER length form).
"""

from __future__ import annotations

from dataclasses import dataclass

# Universal tags used by the STIR extensions (X.680 section 8.4, table 1).
TAG_INTEGER = 0x02
TAG_UTF8STRING = 0x0C
TAG_PRINTABLESTRING = 0x13
TAG_IA5STRING = 0x16
TAG_SEQUENCE = 0x30
# Context-specific constructed tags [0], [1], [2] (X.690 section 8.1.2.2: class bits 10,
# constructed bit set), as EXPLICIT TAGS produce them in RFC 8226 section 9 and RFC 9118.
TAG_CONTEXT_0 = 0xA0
TAG_CONTEXT_1 = 0xA1
TAG_CONTEXT_2 = 0xA2
# Universal string types a lenient reader accepts where a STIR string is expected.
STRING_TAGS = frozenset({TAG_UTF8STRING, TAG_PRINTABLESTRING, TAG_IA5STRING})
# Length octets beyond four would describe objects far larger than any certificate extension
# (X.690 section 8.1.3.5 allows up to 126; we cap at 4 = 4 GiB).
MAX_LENGTH_OCTETS = 4


class DerError(ValueError):
    """The bytes are not the DER the caller expected. X.690 section 8.1."""


@dataclass(frozen=True, slots=True)
class Tlv:
    """One decoded element: ``tag`` byte, ``value`` bytes and where it ends in the input.

    X.690 section 8.1.1.
    """

    tag: int
    value: bytes
    end: int

    @property
    def is_constructed(self) -> bool:
        return bool(self.tag & 0x20)


def read_tlv(data: bytes, offset: int = 0) -> Tlv:
    """Decode the TLV at ``offset``; raise ``DerError`` if it is malformed or overruns.

    X.690 section 8.1.2 (identifier), section 8.1.3 and section 10.1 (definite, minimal length).
    """
    if offset >= len(data):
        raise DerError("unexpected end of data (no tag)")
    tag = data[offset]
    if tag & 0x1F == 0x1F:
        raise DerError(f"multi-byte tag 0x{tag:02x} not supported")
    pos = offset + 1
    if pos >= len(data):
        raise DerError("unexpected end of data (no length)")
    first = data[pos]
    pos += 1
    if first < 0x80:
        length = first
    elif first == 0x80:
        raise DerError("indefinite length is not DER")
    else:
        count = first & 0x7F
        if count > MAX_LENGTH_OCTETS:
            raise DerError(f"length uses {count} octets")
        if pos + count > len(data):
            raise DerError("unexpected end of data (length octets)")
        length = int.from_bytes(data[pos : pos + count], "big")
        if length < 0x80 or data[pos] == 0:
            raise DerError("non-minimal length encoding")
        pos += count
    end = pos + length
    if end > len(data):
        raise DerError(f"element 0x{tag:02x} claims {length} bytes, {len(data) - pos} available")
    return Tlv(tag, data[pos:end], end)


def read_single(data: bytes, tag: int) -> Tlv:
    """Decode exactly one TLV with ``tag`` spanning all of ``data``. X.690 section 8.1."""
    tlv = read_tlv(data)
    if tlv.tag != tag:
        raise DerError(f"expected tag 0x{tag:02x}, found 0x{tlv.tag:02x}")
    if tlv.end != len(data):
        raise DerError(f"{len(data) - tlv.end} trailing bytes after element")
    return tlv


def iter_children(value: bytes) -> list[Tlv]:
    """Split the contents of a constructed element into its child TLVs. X.690 section 8.9."""
    children: list[Tlv] = []
    pos = 0
    while pos < len(value):
        child = read_tlv(value, pos)
        children.append(child)
        pos = child.end
    return children


def decode_string(tlv: Tlv) -> str:
    """The text of a UTF8String, PrintableString or IA5String. X.680 section 41."""
    if tlv.tag == TAG_UTF8STRING:
        try:
            return tlv.value.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DerError("UTF8String is not UTF-8") from exc
    if tlv.tag in (TAG_IA5STRING, TAG_PRINTABLESTRING):
        if any(b > 0x7F for b in tlv.value):
            raise DerError("non-ASCII byte in IA5String/PrintableString")
        return tlv.value.decode("ascii")
    raise DerError(f"expected a string, found tag 0x{tlv.tag:02x}")


def decode_integer(tlv: Tlv) -> int:
    """A signed INTEGER (X.690 section 8.3); rejects empty and non-minimal encodings."""
    if tlv.tag != TAG_INTEGER:
        raise DerError(f"expected INTEGER, found tag 0x{tlv.tag:02x}")
    raw = tlv.value
    if not raw:
        raise DerError("empty INTEGER")
    if len(raw) > 1 and ((raw[0] == 0x00 and raw[1] < 0x80) or (raw[0] == 0xFF and raw[1] >= 0x80)):
        raise DerError("non-minimal INTEGER")
    return int.from_bytes(raw, "big", signed=True)


def encode_tlv(tag: int, value: bytes) -> bytes:
    """DER-encode one element (used by tests and fixture generators). X.690 section 10.1."""
    length = len(value)
    if length < 0x80:
        header = bytes([tag, length])
    else:
        octets = length.to_bytes((length.bit_length() + 7) // 8, "big")
        header = bytes([tag, 0x80 | len(octets), *octets])
    return header + value


def decode_oid(value: bytes) -> str:
    """Dotted form of an OBJECT IDENTIFIER's contents octets. X.690 section 8.19."""
    if not value or value[-1] & 0x80:
        raise DerError("malformed OBJECT IDENTIFIER")
    arcs: list[int] = []
    current = 0
    for byte in value:
        current = (current << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(current)
            current = 0
    first = min(arcs[0] // 40, 2)
    return ".".join(str(a) for a in [first, arcs[0] - 40 * first, *arcs[1:]])
