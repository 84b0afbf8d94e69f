"""TNAuthList: which numbers or service provider a STIR certificate speaks for.

Theory of operation: the extension (OID 1.3.6.1.5.5.7.1.26) is DER with EXPLICIT tags::

    TNAuthorizationList ::= SEQUENCE SIZE (1..MAX) OF TNEntry
    TNEntry ::= CHOICE { spc [0] IA5String, range [1] SEQUENCE {start, count}, one [2] IA5String }

Real certificates are messier than the module (see the ``edge_certs`` of the real-world
corpus): a bare PrintableString instead of the SEQUENCE, entries without their context tag,
a length octet missing so the DER is truncated, lower-case SPCs, a URL where an SPC belongs.
``parse_tnauthlist`` decodes what can be decoded and records every deviation as text in
``TnAuthList.deviations`` (the certificate view turns them into profile findings); it raises
``ShakenError(TNAUTHLIST_INVALID)`` only when nothing usable can be recovered.

RFC 8226 section 9.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from shaken.asn1 import (
    STRING_TAGS,
    TAG_CONTEXT_0,
    TAG_CONTEXT_1,
    TAG_CONTEXT_2,
    TAG_IA5STRING,
    TAG_INTEGER,
    TAG_SEQUENCE,
    DerError,
    Tlv,
    decode_integer,
    decode_string,
    read_tlv,
)
from shaken.errors import Reason, ShakenError

OID_TNAUTHLIST = "1.3.6.1.5.5.7.1.26"
# TelephoneNumber ::= IA5String (SIZE (1..15)) (FROM ("0123456789#*")) (RFC 8226 section 9).
TN_PATTERN = re.compile(r"[0-9#*]{1,15}")
# TelephoneNumberRange count is INTEGER (2..MAX) (RFC 8226 section 9).
MIN_RANGE_COUNT = 2
# A string found without its [0] tag is only taken as an SPC if it looks like one: OCNs are
# four alphanumerics, other SPC schemes (Canadian SPID, ...) stay short. Anything else (a URL,
# free text) is kept in ``other`` instead (ATIS-1000080 via the real-world corpus).
PLAUSIBLE_SPC = re.compile(r"[0-9A-Za-z]{1,10}")
# IMPLICIT-tag encodings seen from some encoders: primitive [0] / [2] holding the string bytes.
TAG_IMPLICIT_0 = 0x80
TAG_IMPLICIT_2 = 0x82


@dataclass(frozen=True, slots=True)
class TnRange:
    """``count`` consecutive numbers from ``start`` (same digit count). RFC 8226 section 9."""

    start: str
    count: int

    def covers(self, tn: str) -> bool:
        """True when ``tn`` (canonical digits) lies in the range. RFC 8226 section 9."""
        if not (tn.isdigit() and self.start.isdigit()) or len(tn) != len(self.start):
            return False
        first = int(self.start)
        return first <= int(tn) < first + self.count

    def to_json(self) -> dict[str, object]:
        return {"start": self.start, "count": self.count}


@dataclass(frozen=True, slots=True)
class TnAuthList:
    """Decoded TNAuthList: SPCs, TN ranges, single TNs, plus what could not be interpreted.

    ``deviations`` lists every departure from the DER module that the lenient decoder had to
    tolerate (empty for a conforming extension); ``other`` keeps strings that are not an SPC
    (e.g. a URL). RFC 8226 section 9.
    """

    spcs: tuple[str, ...]
    ranges: tuple[TnRange, ...] = ()
    tns: tuple[str, ...] = ()
    other: tuple[str, ...] = ()
    deviations: tuple[str, ...] = ()

    @property
    def spc(self) -> str | None:
        """The first SPC, the SHAKEN signing-provider identity (ATIS-1000080)."""
        return self.spcs[0] if self.spcs else None

    @property
    def is_conforming(self) -> bool:
        return not self.deviations

    def covers(self, tn: str) -> bool:
        """True when ``tn`` is listed as one TN or lies inside a range.

        An SPC entry covers no specific number: whether a TN belongs to an SPC needs data the
        verifier does not have (STANDARDS.md section 7.3), so SPC-only lists return False.
        RFC 8226 section 9.
        """
        return tn in self.tns or any(r.covers(tn) for r in self.ranges)

    def to_json(self) -> dict[str, object]:
        return {
            "spcs": list(self.spcs),
            "ranges": [r.to_json() for r in self.ranges],
            "tns": list(self.tns),
            "other": list(self.other),
            "deviations": list(self.deviations),
        }


class _Builder:
    """Accumulates entries and deviations while walking a (possibly broken) TNAuthList."""

    def __init__(self) -> None:
        self.spcs: list[str] = []
        self.ranges: list[TnRange] = []
        self.tns: list[str] = []
        self.other: list[str] = []
        self.deviations: list[str] = []

    def add_loose_string(self, text: str, where: str) -> None:
        if PLAUSIBLE_SPC.fullmatch(text):
            self.spcs.append(text)
        else:
            self.other.append(text)
            self.deviations.append(f"{where}: string {text!r} is not a service provider code")

    def build(self) -> TnAuthList:
        return TnAuthList(
            tuple(self.spcs),
            tuple(self.ranges),
            tuple(self.tns),
            tuple(self.other),
            tuple(self.deviations),
        )


def _read_lenient(data: bytes, offset: int, deviations: list[str], where: str) -> Tlv:
    """Read a TLV; if its length overruns the data, keep what is there and note it."""
    try:
        return read_tlv(data, offset)
    except DerError as exc:
        if offset + 2 > len(data) or data[offset + 1] & 0x80:
            raise
        deviations.append(f"{where}: truncated DER ({exc})")
        return Tlv(data[offset], data[offset + 2 :], len(data))


def _read_string(data: bytes, deviations: list[str], where: str) -> str:
    """Decode one string element, recovering a missing length octet.

    Seen in real certificates: ``16 38 36 37 4A`` where the enclosing lengths prove that the
    length octet ``04`` was dropped; the bytes after the tag are the string.
    """
    if not data:
        raise DerError(f"{where}: empty element")
    tag = data[0]
    if tag not in STRING_TAGS:
        raise DerError(f"{where}: expected a string, found tag 0x{tag:02x}")
    try:
        tlv = read_tlv(data)
    except DerError:
        rest = data[1:]
        if rest and all(0x20 < b < 0x7F for b in rest):
            deviations.append(f"{where}: string length octet missing (truncated DER)")
            return rest.decode("ascii")
        raise
    if tlv.end != len(data):
        deviations.append(f"{where}: {len(data) - tlv.end} bytes after the string")
    if tag != TAG_IA5STRING:
        deviations.append(f"{where}: string type 0x{tag:02x} instead of IA5String")
    return decode_string(tlv)


def _decode_range(value: bytes, b: _Builder, where: str) -> None:
    seq = _read_lenient(value, 0, b.deviations, where)
    if seq.tag != TAG_SEQUENCE:
        raise DerError(f"{where}: range is not a SEQUENCE")
    start_tlv = _read_lenient(seq.value, 0, b.deviations, where)
    start = _read_string(seq.value[: start_tlv.end], b.deviations, f"{where} start")
    count_tlv = read_tlv(seq.value, start_tlv.end)
    if count_tlv.tag != TAG_INTEGER:
        raise DerError(f"{where}: range count is not an INTEGER")
    count = decode_integer(count_tlv)
    if not TN_PATTERN.fullmatch(start) or not start.isdigit():
        b.deviations.append(f"{where}: range start {start!r} is not a digit string")
    if count < MIN_RANGE_COUNT:
        b.deviations.append(f"{where}: range count {count} below {MIN_RANGE_COUNT}")
    if count >= 1:
        b.ranges.append(TnRange(start, count))


def _decode_entry(entry: Tlv, data: bytes, b: _Builder, index: int) -> None:
    """Decode one TNEntry ``entry`` whose raw bytes (tag included) are ``data``."""
    where = f"entry {index}"
    if entry.tag == TAG_CONTEXT_0:
        b.spcs.append(_read_string(entry.value, b.deviations, where))
    elif entry.tag == TAG_CONTEXT_1:
        _decode_range(entry.value, b, where)
    elif entry.tag == TAG_CONTEXT_2:
        tn = _read_string(entry.value, b.deviations, where)
        if not TN_PATTERN.fullmatch(tn):
            b.deviations.append(f"{where}: {tn!r} is not a TelephoneNumber")
        b.tns.append(tn)
    elif entry.tag in (TAG_IMPLICIT_0, TAG_IMPLICIT_2):
        text = entry.value.decode("ascii", "replace")
        b.deviations.append(f"{where}: IMPLICIT tag 0x{entry.tag:02x} (module uses EXPLICIT)")
        (b.spcs if entry.tag == TAG_IMPLICIT_0 else b.tns).append(text)
    elif entry.tag in STRING_TAGS:
        b.deviations.append(f"{where}: string without its [0] context tag")
        b.add_loose_string(_read_string(data[: entry.end], b.deviations, where), where)
    else:
        b.deviations.append(f"{where}: unknown TNEntry tag 0x{entry.tag:02x} skipped")


def parse_tnauthlist(der: bytes) -> TnAuthList:
    """Decode a TNAuthList extension value, leniently; see the module docstring.

    Raises ``ShakenError(Reason.TNAUTHLIST_INVALID)`` when no entry can be recovered.
    RFC 8226 section 9.
    """
    b = _Builder()
    try:
        if not der:
            raise DerError("empty extension value")
        top = _read_lenient(der, 0, b.deviations, "TNAuthList")
        if top.end < len(der):
            b.deviations.append(f"TNAuthList: {len(der) - top.end} trailing bytes")
        if top.tag in STRING_TAGS:
            b.deviations.append("TNAuthList: bare string instead of SEQUENCE OF TNEntry")
            b.add_loose_string(_read_string(der[: top.end], b.deviations, "TNAuthList"), "top")
        elif top.tag == TAG_SEQUENCE:
            pos, index = 0, 0
            while pos < len(top.value):
                child = _read_lenient(top.value, pos, b.deviations, f"entry {index}")
                _decode_entry(child, top.value[pos : child.end], b, index)
                pos, index = child.end, index + 1
        else:
            raise DerError(f"TNAuthList starts with tag 0x{top.tag:02x}")
    except DerError as exc:
        if not (b.spcs or b.ranges or b.tns or b.other):
            raise ShakenError(Reason.TNAUTHLIST_INVALID, str(exc)) from exc
        b.deviations.append(f"undecodable remainder: {exc}")
    result = b.build()
    if not (result.spcs or result.ranges or result.tns or result.other):
        raise ShakenError(Reason.TNAUTHLIST_INVALID, "TNAuthList has no entries")
    return result
