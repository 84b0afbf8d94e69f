"""Responses built from requests (RFC 3261 section 8.2.6)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import NamedTuple, cast

from sip.headers import Headers
from sip.limits import MAX_HEADER_COUNT, MAX_HEADER_LINE_BYTES
from sip.message import LENGTH_NAMES, SIP_VERSION, Request, Response, serialise_message

# Length of the deterministic To tag we add (RFC 3261 section 19.3 asks for at least 32 bits of
# randomness; 16 hex digits of a SHA-256 digest give 64 bits, derived, not drawn, so the
# sans-IO layer stays deterministic and replayable).
_TAG_HEX_DIGITS = 16
# A From/To value of the plain name-addr shape: an optional display name (quoted without
# backslash escapes, or unquoted without quotes and angle brackets), ``<URI>`` without blanks,
# quotes or angle brackets, then ``;name[=value]`` parameters without blanks, quotes or
# semicolons inside; printable ASCII only. For it `parse_name_addr` cannot fail and its
# ``tag`` is the first ``tag`` item of the parameters (see `plain_tag`).
_PLAIN_NAME_ADDR = re.compile(
    r'[ \t]*(?:"[ !#-\[\]-~]*"[ \t]*|[ !#-;=?-~]*)<[!#-;=?-~]*>((?:;[!#-:<-~]*)*)[ \t]*'
)


# A top Via value of the plain shape: ``SIP/2.0/<transport> <host>[:<port>]`` (a host name or
# IPv4 address, a port without a leading zero) then non-empty ``;name[=value]`` parameters
# without blanks, quotes, commas or semicolons inside; printable ASCII only. For it
# `parse_via_checked` cannot fail, its ``sent_by`` is the host and port as written, and its
# ``branch`` is the first ``branch`` item of the parameters (see `plain_top_via`).
_PLAIN_VIA = re.compile(
    r"[ \t]*SIP/2\.0/[A-Za-z]+ ([A-Za-z0-9.-]+(?::[1-9][0-9]{0,4})?)((?:;[!#-+\--:<-~]+)*)[ \t]*"
)


# The first ``;name[=value]`` item named ``tag`` (or ``branch``), any case, of the parameters
# the plain shapes above capture (items without ``;`` inside, printable ASCII), with its
# value (None for a flag). A match can only open at an item's ``;``, so the first match is the
# first such item: one search in C instead of a split and a loop over the items.
_TAG_ITEM = re.compile(r";tag(?:=([^;]*)|(?=;|\Z))", re.IGNORECASE | re.ASCII)
_BRANCH_ITEM = re.compile(r";branch(?:=([^;]*)|(?=;|\Z))", re.IGNORECASE | re.ASCII)


# The header lines `plain_head` reads from a request's bytes: the five a response copies,
# Content-Length and Require, in every spelling a parse reads as the same header (any case,
# the compact forms of RFC 3261 section 7.3.3, blanks before the colon) and their values
# (blanks after the colon skipped, those at the end kept). A match opens at a line's start, so
# only whole header names match. A head with a folded line anywhere is not plain (RFC 3261
# section 7.3.1: the fold continues the header before it, which for a parse may be one of
# these even when the line in between is not a header at all).
_SCANNED_LINE = re.compile(
    r"\r\n(via|v|from|f|to|t|call-id|i|cseq|content-length|l|require)[ \t]*:[ \t]*"
    r"([^\r\n]*)",
    re.IGNORECASE | re.ASCII,
)
# What each is to a parse, by its name in lower case and as usually written.
_SCANNED_KEYS = {
    "Via": "via",
    "From": "from",
    "To": "to",
    "Call-ID": "call-id",
    "CSeq": "cseq",
    "Content-Length": "content-length",
    "Require": "require",
    "via": "via",
    "v": "via",
    "from": "from",
    "f": "from",
    "to": "to",
    "t": "to",
    "call-id": "call-id",
    "i": "call-id",
    "cseq": "cseq",
    "content-length": "content-length",
    "l": "content-length",
    "require": "require",
}
# Digits of a Content-Length the parse reads as a number (``sip.message._digits(value, 9)``).
_MAX_LENGTH_DIGITS = 9
# A method: the ``token`` production (``sip.headers.is_token``), RFC 3261 section 25.1.
_TOKEN = re.compile(r"[-.!%*_+`'~A-Za-z0-9]+")


class ResponseFields(NamedTuple):
    """The header values a response copies from its request, as written: every Via line in
    order, and the first From, To, Call-ID and CSeq (None when absent). RFC 3261 section
    8.2.6.2."""

    via: tuple[str, ...]
    from_: str | None
    to: str | None
    call_id: str | None
    cseq: str | None

    @property
    def complete(self) -> bool:
        """Whether each of them is present (RFC 3261 section 8.1.1)."""
        return bool(self.via) and None not in (self.from_, self.to, self.call_id, self.cseq)


def response_fields(request: Request) -> ResponseFields:
    """`ResponseFields` of ``request``, read by scans over its header keys and remembered
    with its parsed fields: a server answering every INVITE asks for these values several times
    per call (the transaction key, the checks, the To tag, the 100 and the final answer), and
    each ``Headers.get`` is a scan of its own. RFC 3261 section 8.2.6.2.
    """
    # Looked up here rather than through ``_memo``: a hit then costs no closure and no call.
    hit = request._cache.get("response_fields")
    if hit is not None:
        return cast(ResponseFields, hit[0])
    fields = _response_fields(request.headers)
    request._cache["response_fields"] = (fields, [])
    return fields


def _response_fields(headers: Headers) -> ResponseFields:
    # Scans in C over the lookup keys (membership, count, position) instead of one pass in
    # Python: a request has a dozen headers or more and only these five are wanted.
    keys = headers._keys
    values = headers._values
    vias = keys.count("via")
    if vias == 1:
        via: tuple[str, ...] = (values[keys.index("via")],)
    else:
        via = tuple(v for k, v in zip(keys, values, strict=True) if k == "via")
    # The first of each, as ``Headers.get`` gives (written out: a helper's calls cost more).
    return ResponseFields(
        via,
        values[keys.index("from")] if "from" in keys else None,
        values[keys.index("to")] if "to" in keys else None,
        values[keys.index("call-id")] if "call-id" in keys else None,
        values[keys.index("cseq")] if "cseq" in keys else None,
    )


class PlainHead(NamedTuple):
    """What `plain_head` reads from a request's bytes: the method, the Request-URI as written,
    the `ResponseFields` and whether a Require header is present. RFC 3261 sections 7.1,
    8.2.2.3 and 8.2.6.2."""

    method: str
    uri_text: str
    fields: ResponseFields
    require: bool


def plain_head(data: bytes) -> PlainHead | None:
    """The request line and `ResponseFields` of the request ``data`` when its head has the
    plain shape, read from the bytes without a parse; None for anything else (then parse it).

    Plain: ASCII, within the line and header count limits, every line ending in CRLF (no bare
    CR or LF), a request line of three words split by single spaces whose version is
    SIP/2.0, exactly one Via line (one value or several: see `plain_via`), From, To, Call-ID
    and CSeq line each, at most one Require and one Content-Length whose number of bytes is
    there, and no folded line anywhere. For such bytes ``parse_message`` succeeds,
    ``response_fields`` of its request are these, and its parse defects are none of version,
    truncation or Content-Length (RFC 3261 sections 7.3.1, 7.5, 18.3 and 20.14). A server
    shedding load answers such a request without the parse. RFC 3261 sections 7, 8.2.6.2 and
    25.1.
    """
    head_end = data.find(b"\r\n\r\n")
    if head_end < 0 or head_end > MAX_HEADER_LINE_BYTES:
        return None
    head = data[:head_end]
    if not head.isascii():
        return None
    text = head.decode("ascii")
    # Lines end in CRLF: the parse splits them where the scan does.
    breaks = text.count("\r\n")
    if (
        breaks == 0
        or breaks > MAX_HEADER_COUNT
        or text.count("\n") != breaks
        or text.count("\r") != breaks
    ):
        return None
    first = text[: text.find("\r\n")]
    parts = first.split(" ")
    if (
        len(parts) != 3
        or not all(parts)
        or parts[2] != SIP_VERSION
        or _TOKEN.fullmatch(parts[0]) is None
    ):
        return None
    if "\r\n " in text or "\r\n\t" in text:
        return None  # a folded line (see _SCANNED_LINE)
    lines = _SCANNED_LINE.findall(text)
    keys = _SCANNED_KEYS
    found = {keys.get(name) or keys[name.lower()]: value for name, value in lines}
    if len(found) != len(lines):
        return None  # one of them twice or more
    via = found.get("via")
    from_ = found.get("from")
    to = found.get("to")
    call_id = found.get("call-id")
    cseq = found.get("cseq")
    if via is None or from_ is None or to is None or call_id is None or cseq is None:
        return None
    length = found.get("content-length")
    if length is not None:
        length = length.rstrip(" \t")
        if (
            not length.isdigit()
            or len(length) > _MAX_LENGTH_DIGITS
            or int(length) > len(data) - head_end - 4
        ):
            return None
    blanks = " \t"
    fields = ResponseFields(
        (via.rstrip(blanks),),
        from_.rstrip(blanks),
        to.rstrip(blanks),
        call_id.rstrip(blanks),
        cseq.rstrip(blanks),
    )
    return PlainHead(parts[0], parts[1], fields, "require" in found)


def plain_top_via(request: Request) -> tuple[str | None, str] | None:
    """``(branch, sent_by)`` of the top Via (``request.via[0]``) when its value has the plain
    shape, read without the Via parse (``branch`` None when absent, ``""`` for a flag); None
    otherwise (no Via, several in one line, or another shape): then use ``request.via``. A
    server answering every INVITE needs only these two of the Via, several times per call.
    RFC 3261 sections 17.2.3, 20.42 and 25.1.
    """
    # Remembered with the request's parsed fields: the key, the 302 and its To tag ask again.
    hit = request._cache.get("plain_top_via")  # as in `response_fields`
    if hit is not None:
        return cast("tuple[str | None, str] | None", hit[0])
    top = _plain_top_via(request)
    request._cache["plain_top_via"] = (top, [])
    return top


def _plain_top_via(request: Request) -> tuple[str | None, str] | None:
    vias = response_fields(request).via
    if not vias:
        return None
    return plain_via(vias[0])


def plain_via(value: str) -> tuple[str | None, str] | None:
    """``(branch, sent_by)`` of a Via line's value when it is one via-parm of the plain shape
    (`plain_top_via`), None otherwise. RFC 3261 sections 20.42 and 25.1."""
    if "," in value:
        return None
    plain = _PLAIN_VIA.fullmatch(value)
    if plain is None:
        return None
    sent_by, params = plain.groups()
    if params:
        item = _BRANCH_ITEM.search(params)
        if item is not None:
            return item.group(1) or "", sent_by
    return None, sent_by


def plain_tag(value: str) -> tuple[bool, str | None]:
    """``(True, tag)`` when ``value`` (a From or To value) has the plain name-addr shape, with
    the ``tag`` parameter its parse gives (``""`` for a flag, None when absent); ``(False,
    None)`` otherwise: then parse it. A server answering every INVITE needs only this of From
    and To, and the full name-addr parse costs several times the regex. RFC 3261 sections
    19.3, 20.10 and 25.1.
    """
    plain = _PLAIN_NAME_ADDR.fullmatch(value)
    if plain is None:
        return False, None
    params = plain.group(1)
    if params:
        item = _TAG_ITEM.search(params)
        if item is not None:
            return True, item.group(1) or ""
    return True, None


def _from_tag(request: Request, fields: ResponseFields) -> str | None:
    """``request.from_.tag if request.from_ else ""``, without parsing a plain From;
    ``fields`` are `response_fields` of ``request``."""
    value = fields.from_
    if value is not None:
        plain, tag = plain_tag(value)
        if plain:
            return tag
    return request.from_.tag if request.from_ else ""


def to_is_tagged(request: Request) -> bool | None:
    """Whether the To header carries a tag (an in-dialog request, RFC 3261 section 12.2);
    None when there is no To a parse can read. Plain values are read without a parse.
    Remembered with the request's parsed fields (the core and the answer both ask)."""
    hit = request._cache.get("to_is_tagged")  # as in `response_fields`
    if hit is not None:
        return cast("bool | None", hit[0])
    tagged = _to_is_tagged(request)
    request._cache["to_is_tagged"] = (tagged, [])
    return tagged


def _to_is_tagged(request: Request) -> bool | None:
    value = response_fields(request).to
    if value is not None:
        plain, tag = plain_tag(value)
        if plain:
            return tag is not None
    to = request.to
    return None if to is None else to.tag is not None


def derive_to_tag(request: Request) -> str:
    """A stable To tag for responses to ``request`` (same request -> same tag).

    Derived from Call-ID, From tag and the top Via branch, which identify the transaction.
    RFC 3261 section 19.3.
    """
    return _derive_to_tag(request, response_fields(request))


def _derive_to_tag(request: Request, fields: ResponseFields) -> str:
    """`derive_to_tag` with `response_fields` of ``request`` at hand (a response being
    written has them: asking again is a lookup of the request's remembered fields each)."""
    from_tag = _from_tag(request, fields)
    top = plain_top_via(request)
    if top is not None:
        branch: str | None = top[0]
    else:
        branch = request.via[0].branch if request.via else ""
    return to_tag_of(fields.call_id, from_tag, branch)  # ``request.call_id``


def to_tag_of(call_id: str | None, from_tag: str | None, branch: str | None) -> str:
    """`derive_to_tag` from the request's Call-ID, From tag and top Via branch (each as its
    parse gives it, None written as such). RFC 3261 section 19.3."""
    seed = f"{call_id}\x00{from_tag}\x00{branch}".encode("utf-8", "surrogateescape")
    return hashlib.sha256(seed).hexdigest()[:_TAG_HEX_DIGITS]


def _response_headers(
    request: Request, status: int, extra_headers: Sequence[tuple[str, str]], to_tag: str | None
) -> list[tuple[str, str]]:
    fields = response_fields(request)
    to_value = fields.to
    if to_value is not None and status != 100 and to_is_tagged(request) is False:
        to_value = f"{to_value};tag={to_tag or _derive_to_tag(request, fields)}"
    headers = _copied_headers(fields, to_value)
    headers.extend(extra_headers)
    return headers


def _copied_headers(fields: ResponseFields, to_value: str | None) -> list[tuple[str, str]]:
    """The headers a response copies from ``fields``, its To value given (tag added or not).
    RFC 3261 section 8.2.6.2."""
    headers: list[tuple[str, str]] = [("Via", v) for v in fields.via]
    if fields.from_ is not None:
        headers.append(("From", fields.from_))
    if to_value is not None:
        headers.append(("To", to_value))
    if fields.call_id is not None:
        headers.append(("Call-ID", fields.call_id))
    if fields.cseq is not None:
        headers.append(("CSeq", fields.cseq))
    return headers


def response_to(
    request: Request,
    status: int,
    reason: str,
    extra_headers: Sequence[tuple[str, str]] = (),
    *,
    to_tag: str | None = None,
    body: bytes = b"",
) -> Response:
    """A response to ``request``: Via (every value, in order), From, To, Call-ID and CSeq are
    copied; a To tag is added when the request had none and the status is not 100 (``to_tag``
    or `derive_to_tag`). ``extra_headers`` follow; Content-Length is set from ``body``.

    RFC 3261 section 8.2.6.2.
    """
    headers = _response_headers(request, status, extra_headers, to_tag)
    return Response.build(status, reason, headers, body)


def response_bytes(
    request: Request,
    status: int,
    reason: str,
    extra_headers: Sequence[tuple[str, str]] = (),
    *,
    to_tag: str | None = None,
    body: bytes = b"",
) -> bytes:
    """The bytes of ``response_to(...)``, serialised without parsing them back (a server's hot
    path answers many requests and needs only the bytes). RFC 3261 section 8.2.6.2.
    """
    if not 100 <= status <= 699:
        raise ValueError(f"status code out of range: {status}")
    fields = response_fields(request)
    to_value = fields.to
    if to_value is not None and status != 100 and to_is_tagged(request) is False:
        to_value = f"{to_value};tag={to_tag or _derive_to_tag(request, fields)}"
    return fields_response_bytes(fields, to_value, status, reason, extra_headers, body=body)


def fields_response_bytes(
    fields: ResponseFields,
    to_value: str | None,
    status: int,
    reason: str,
    extra_headers: Sequence[tuple[str, str]] = (),
    *,
    body: bytes = b"",
) -> bytes:
    """The bytes of a response copying ``fields`` (`ResponseFields` of its request) with
    ``to_value`` as its To (the request's, tagged or not): `response_bytes` for a caller that
    has the fields without a parsed request (`plain_head`). The copied lines are written
    straight (their names are fixed, never a Content-Length, so only ``extra_headers`` are
    checked for one); the text is that of `serialise_message`. RFC 3261 section 8.2.6.2.
    """
    if not 100 <= status <= 699:
        raise ValueError(f"status code out of range: {status}")
    start_line = f"{SIP_VERSION} {status} {reason}"
    copied = _copied_headers(fields, to_value)
    lines = [start_line]
    lines.extend([f"{name}: {value}" for name, value in copied])
    for name, value in extra_headers:
        if name.lower() not in LENGTH_NAMES:  # set from the body, as `serialise_message` does
            lines.append(f"{name}: {value}")
    lines.append(f"Content-Length: {len(body)}")
    head = "\r\n".join(lines)
    joints = len(lines) - 1
    if head.count("\n") != joints or head.count("\r") != joints:
        # A line break inside some value: `serialise_message` says which header (or writes
        # one in the start line as given), exactly as for any other message.
        return serialise_message(start_line, [*copied, *extra_headers], body)
    return (head + "\r\n\r\n").encode("utf-8", "surrogateescape") + body
