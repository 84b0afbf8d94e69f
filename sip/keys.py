"""Call-correlation keys of a SIP message, read with or without a full parse.

A call tracker sees every message of a capture but needs only a few values of each: the start
line (method or status), Call-ID, CSeq, the To tag, the top Via branch and whether Identity
is present. ``keys_of`` reads them from a parsed message; ``scan_keys`` reads them straight
from the bytes at a fraction of the cost of ``parse_message``, and only for messages of the
common, unremarkable shape: pure ASCII header block, CRLF line ends (a bare CR only outside
the values it reads), no folding, no leading CRLF, a well-formed start line, within every size
limit. For anything else it returns
``None`` and the caller parses in full. Contract (tested, fuzzed): when ``scan_keys(data)``
returns keys, ``parse_message(data)`` succeeds and ``keys_of`` of it returns equal keys.

RFC 3261 section 7 (message format), section 8.1.1 (Call-ID, CSeq, Via), section 19.3 (tags).
"""

from __future__ import annotations

import re
from typing import NamedTuple

from sip.fields import split_identity_line
from sip.headers import is_token
from sip.limits import (
    MAX_HEADER_COUNT,
    MAX_HEADER_LINE_BYTES,
    MAX_MESSAGE_BYTES,
    MAX_START_LINE_BYTES,
)
from sip.message import SIP_VERSION, Request, Response

# A header block no longer than this cannot hold a start line or header line over the limits
# ``parse_message`` enforces (sip/limits.py), so the scan need not measure each line.
_MAX_SCANNED_HEAD = min(MAX_HEADER_LINE_BYTES, MAX_START_LINE_BYTES)
# Methods seen on every call (RFC 3261 section 7.1 and extensions): skip the token check.
_COMMON_METHODS = frozenset(
    {"INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "PRACK", "UPDATE", "INFO"}
)
# Lookup keys (sip.headers.header_key) of the headers the scan reads.
_CALL_ID, _CSEQ, _TO, _VIA, _IDENTITY = "call-id", "cseq", "to", "via", "identity"
# Every spelling of their names: long and compact forms (RFC 3261 section 7.3.3; RFC 8224
# section 4 for ``y``), lower case, plus the spellings seen on the wire, so that the common
# case needs no ``str.lower`` per header.
_SCANNED_KEYS = {
    "call-id": _CALL_ID, "i": _CALL_ID, "cseq": _CSEQ, "to": _TO, "t": _TO,
    "via": _VIA, "v": _VIA, "identity": _IDENTITY, "y": _IDENTITY,
    "Call-ID": _CALL_ID, "Call-Id": _CALL_ID, "CALL-ID": _CALL_ID, "I": _CALL_ID,
    "CSeq": _CSEQ, "Cseq": _CSEQ, "CSEQ": _CSEQ, "To": _TO, "TO": _TO, "T": _TO,
    "Via": _VIA, "VIA": _VIA, "V": _VIA, "Identity": _IDENTITY, "IDENTITY": _IDENTITY,
    "Y": _IDENTITY,
}  # fmt: skip
# One of those header lines, searched in the header block decoded as text: as
# ``parse_message`` splits it, the name is everything before the first colon with trailing
# blanks dropped (any case), the value the rest, stripped. The scan only runs on a header
# block whose line ends are all CRLF, so ``[^\r]*`` is the rest of the line unless a bare CR
# ends it early: the third group catches that (the value would differ from the parser's).
# The fourth group catches a folded line (a line starting with SP or HTAB, RFC 3261 section
# 7.3.1). On either the scan gives up.
_WANTED_LINE = re.compile(
    r"\r\n(?:(call-id|cseq|identity|via|to|i|t|v|y)[ \t]*:[ \t]*([^\r]*)(\r(?!\n))?|([ \t]))",
    re.IGNORECASE | re.ASCII,
)

# A line feed not preceded by CR: a bare LF line end (the parser then splits lines there too).
_BARE_LF = re.compile(rb"\n(?<!\r\n)")
# A header block at most this long cannot hold more than ``MAX_HEADER_COUNT`` line breaks: it
# has no empty line (it ends at the first) and does not start with one, so each line takes at
# least one character besides its CRLF. Only longer blocks need their lines counted.
_HEAD_WITHIN_HEADER_COUNT = 3 * MAX_HEADER_COUNT

# Read from the raw header values (the typed accessors parse every Via and the full
# name-addr, several times the cost): the branch of the first Via value (RFC 3261 section
# 8.1.1.7) and the To tag outside the ``<URI>`` (section 19.3).
_BRANCH = re.compile(r";[ \t]*branch[ \t]*=[ \t]*([^;, \t]+)", re.IGNORECASE)
_TAG = re.compile(r";[ \t]*tag[ \t]*=[ \t]*([^;, \t]+)", re.IGNORECASE)


class MessageKeys(NamedTuple):
    """What a call tracker reads of one message.

    ``method`` is set for requests, ``status`` for responses; ``identity`` holds the value of
    every Identity header line as ``Headers`` would give it (unfolded, stripped). A named
    tuple rather than a frozen dataclass: one is built per message of a capture, and a tuple
    is built (and pickled) several times faster. RFC 3261 sections 8.1.1 and 19.3; RFC 8224
    section 4 (Identity).
    """

    method: str | None
    status: int | None
    call_id: str | None
    cseq: tuple[int, str] | None
    to_tag: str | None
    branch: str
    identity: tuple[str, ...] = ()

    @property
    def is_request(self) -> bool:
        return self.method is not None

    @property
    def signed(self) -> bool:
        """True when the message carries an Identity header (RFC 8224 section 4)."""
        return bool(self.identity)

    @property
    def identity_values(self) -> tuple[str, ...]:
        """Each Identity value separately, as ``Request.identity_values`` (RFC 8224 section 4)."""
        out: list[str] = []
        for index, line in enumerate(self.identity):
            if "," not in line:  # one value: what split_identity_line gives, without its objects
                out.append(line.strip())
                continue
            values, _defects = split_identity_line(line, index, -1)
            out.extend(v.value for v in values)
        return tuple(out)


_new_keys = tuple.__new__


def branch_of(via: str | None) -> str:
    """The branch of the first value of a Via header line, ``""`` if none.

    RFC 3261 section 8.1.1.7.
    """
    if not via:
        return ""
    found = _BRANCH.search(via.partition(",")[0])
    return found.group(1) if found else ""


def tag_of(value: str | None) -> str | None:
    """The ``tag`` parameter of a To/From value (not a parameter inside ``<URI>``).

    RFC 3261 section 19.3.
    """
    if not value:
        return None
    found = _TAG.search(value, value.rfind(">") + 1)
    return found.group(1) if found else None


def cseq_of(value: str | None) -> tuple[int, str] | None:
    """CSeq number and method, or None when malformed. RFC 3261 section 20.16."""
    parts = value.split() if value else ()
    if len(parts) != 2 or not parts[0].isdigit() or not parts[0].isascii():
        return None
    return int(parts[0]), parts[1]


def keys_of(message: Request | Response) -> MessageKeys:
    """The correlation keys of a parsed message. RFC 3261 section 8.1.1."""
    headers = message.headers
    if isinstance(message, Request):
        method: str | None = message.method
        status = None
    else:
        method, status = None, message.status
    return MessageKeys(
        method,
        status,
        headers.get(_CALL_ID),
        cseq_of(headers.get(_CSEQ)),
        tag_of(headers.get(_TO)),
        branch_of(headers.get(_VIA)),
        tuple(headers.get_all(_IDENTITY)),
    )


def scan_keys(data: bytes) -> MessageKeys | None:
    """The correlation keys read straight from ``data``, or None when the message is not of the
    plain shape this scan accepts (see the module docstring): then use ``parse_message``.

    RFC 3261 section 7 (message format), section 7.3.1 (header fields).
    """
    if not data or len(data) > MAX_MESSAGE_BYTES or data[0] in (10, 13):
        return None
    end = data.find(b"\r\n\r\n", 0, _MAX_SCANNED_HEAD + 4)
    if end < 0:
        return None
    head = data[:end]
    # Pure ASCII with no bare LF line end: then the text is the bytes and the parser splits
    # the lines where the scan does. A bare CR is harmless outside the values read here
    # (caught by the pattern).
    if not head.isascii() or _BARE_LF.search(head) is not None:
        return None
    if end > _HEAD_WITHIN_HEADER_COUNT and head.count(b"\n") > MAX_HEADER_COUNT:
        return None
    text = head.decode("ascii")
    eol = text.find("\r\n")
    first = text[:eol] if eol >= 0 else text
    method: str | None = None
    status: int | None = None
    if first.startswith("SIP/"):
        version, _, rest = first.partition(" ")
        code = rest.partition(" ")[0]
        if version != SIP_VERSION or len(code) != 3 or not code.isdigit() or code[0] == "0":
            return None
        status = int(code)
    else:
        parts = first.split(" ")
        if len(parts) != 3 or not parts[1] or parts[2] != SIP_VERSION:
            return None
        method = parts[0]
        if method not in _COMMON_METHODS and not is_token(method):
            return None
    call_id = cseq = to = via = None
    identity: list[str] = []
    names = _SCANNED_KEYS
    for name, value, bare_cr, fold in _WANTED_LINE.findall(text):
        if bare_cr or fold:
            return None
        key = names.get(name) or names[name.lower()]
        if key is _IDENTITY:
            identity.append(value.rstrip(" \t"))
        elif key is _CALL_ID:
            if call_id is None:
                call_id = value.rstrip(" \t")
        elif key is _CSEQ:
            if cseq is None:
                cseq = value.rstrip(" \t")
        elif key is _TO:
            if to is None:
                to = value.rstrip(" \t")
        elif via is None:
            via = value.rstrip(" \t")
    # ``tuple.__new__`` straight away: the named tuple's own ``__new__`` is a Python-level
    # call, a visible share of the scan's cost on every message of a capture.
    return _new_keys(
        MessageKeys,
        (method, status, call_id, cseq_of(cseq), tag_of(to), branch_of(via), tuple(identity)),
    )
