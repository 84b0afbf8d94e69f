"""Responses built from requests (RFC 3261 section 8.2.6)."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from typing import NamedTuple

from sip.headers import Headers
from sip.message import SIP_VERSION, Request, Response, serialise_message

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


# Lookup keys (`sip.headers.header_key`) of the headers a response copies.
_COPIED_KEYS = frozenset({"via", "from", "to", "call-id", "cseq"})


def response_fields(request: Request) -> ResponseFields:
    """`ResponseFields` of ``request``, read in one pass over its headers and remembered with
    its parsed fields: a server answering every INVITE asks for these values several times
    per call (the transaction key, the checks, the To tag, the 100 and the final answer), and
    each ``Headers.get`` is a scan of its own. RFC 3261 section 8.2.6.2.
    """
    return request._memo("response_fields", lambda: (_response_fields(request.headers), []))


def _response_fields(headers: Headers) -> ResponseFields:
    via: list[str] = []
    found: dict[str, str] = {}
    for key, value in zip(headers._keys, headers._values, strict=True):
        if key in _COPIED_KEYS:
            if key == "via":
                via.append(value)
            elif key not in found:  # the first one, as ``Headers.get`` gives
                found[key] = value
    get = found.get
    return ResponseFields(tuple(via), get("from"), get("to"), get("call-id"), get("cseq"))


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
    params = plain.group(2)
    if params:
        for item in params[1:].split(";"):
            name, eq, found = item.partition("=")
            if name.lower() == "branch":
                return (found if eq else ""), plain.group(1)
    return None, plain.group(1)


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
        for item in params[1:].split(";"):
            name, eq, found = item.partition("=")
            if name.lower() == "tag":
                return True, found if eq else ""
    return True, None


def _from_tag(request: Request) -> str | None:
    """``request.from_.tag if request.from_ else ""``, without parsing a plain From."""
    value = response_fields(request).from_
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
    from_tag = _from_tag(request)
    top = plain_top_via(request)
    if top is not None:
        branch: str | None = top[0]
    else:
        branch = request.via[0].branch if request.via else ""
    call_id = response_fields(request).call_id  # ``request.call_id``
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
            to_value = f"{to_value};tag={to_tag or derive_to_tag(request)}"
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
    headers = _response_headers(request, status, extra_headers, to_tag)
    return serialise_message(f"{SIP_VERSION} {status} {reason}", headers, body)
