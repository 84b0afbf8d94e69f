"""Responses built from requests (RFC 3261 section 8.2.6)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import NamedTuple

from sip.headers import Headers
from sip.message import _LENGTH_NAMES, SIP_VERSION, Request, Response, serialise_message

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
    return request._memo("response_fields", lambda: (_response_fields(request.headers), []))


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


def plain_top_via(request: Request) -> tuple[str | None, str] | None:
    """``(branch, sent_by)`` of the top Via (``request.via[0]``) when its value has the plain
    shape, read without the Via parse (``branch`` None when absent, ``""`` for a flag); None
    otherwise (no Via, several in one line, or another shape): then use ``request.via``. A
    server answering every INVITE needs only these two of the Via, several times per call.
    RFC 3261 sections 17.2.3, 20.42 and 25.1.
    """
    # Remembered with the request's parsed fields: the key, the 302 and its To tag ask again.
    return request._memo("plain_top_via", lambda: (_plain_top_via(request), []))


def _plain_top_via(request: Request) -> tuple[str | None, str] | None:
    vias = response_fields(request).via
    if not vias:
        return None
    value = vias[0]
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
    return request._memo("to_is_tagged", lambda: (_to_is_tagged(request), []))


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
    call_id = fields.call_id  # ``request.call_id``
    seed = f"{call_id}\x00{from_tag}\x00{branch}".encode("utf-8", "surrogateescape")
    return hashlib.sha256(seed).hexdigest()[:_TAG_HEX_DIGITS]


def _response_headers(
    request: Request, status: int, extra_headers: Sequence[tuple[str, str]], to_tag: str | None
) -> list[tuple[str, str]]:
    fields = response_fields(request)
    headers: list[tuple[str, str]] = [("Via", v) for v in fields.via]
    if fields.from_ is not None:
        headers.append(("From", fields.from_))
    to_value = fields.to
    if to_value is not None:
        if status != 100 and to_is_tagged(request) is False:
            to_value = f"{to_value};tag={to_tag or _derive_to_tag(request, fields)}"
        headers.append(("To", to_value))
    if fields.call_id is not None:
        headers.append(("Call-ID", fields.call_id))
    if fields.cseq is not None:
        headers.append(("CSeq", fields.cseq))
    headers.extend(extra_headers)
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
    start_line = f"{SIP_VERSION} {status} {reason}"
    lines = _response_lines(request, start_line, status, extra_headers, to_tag)
    lines.append(f"Content-Length: {len(body)}")
    head = "\r\n".join(lines)
    joints = len(lines) - 1
    if head.count("\n") != joints or head.count("\r") != joints:
        # A line break inside some value: `serialise_message` says which header (or writes
        # one in the start line as given), exactly as for any other message.
        headers = _response_headers(request, status, extra_headers, to_tag)
        return serialise_message(start_line, headers, body)
    return (head + "\r\n\r\n").encode("utf-8", "surrogateescape") + body


def _response_lines(
    request: Request,
    start_line: str,
    status: int,
    extra_headers: Sequence[tuple[str, str]],
    to_tag: str | None,
) -> list[str]:
    """The start line and header lines of `serialise_message` over `_response_headers`,
    without Content-Length: the same text, the copied fields written straight as lines (their
    names are fixed, never a Content-Length, so only ``extra_headers`` are checked for one).
    RFC 3261 section 8.2.6.2."""
    lines = [start_line]
    lines.extend(
        [f"{name}: {value}" for name, value in _response_headers(request, status, (), to_tag)]
    )
    for name, value in extra_headers:
        if name.lower() not in _LENGTH_NAMES:  # set from the body, as `serialise_message` does
            lines.append(f"{name}: {value}")
    return lines
