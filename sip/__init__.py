"""stirscope.sip: a sans-IO SIP message layer (RFC 3261 and friends); standard library only."""

from __future__ import annotations

from sip.address import NameAddr, parse_name_addr
from sip.build import derive_to_tag, response_bytes, response_to
from sip.defects import Defect, SipParseError, SipReason
from sip.fields import CSeq, Diversion, HistoryInfoEntry, IdentityHeader, Via, parse_sip_date
from sip.framer import FramingError, StreamFramer
from sip.headers import COMPACT_FORMS, Header, Headers, canonical_name, split_commas
from sip.message import Message, Request, Response
from sip.parser import parse_message
from sip.tn import (
    CanonicalTn,
    IdentityKind,
    IdentityValue,
    TnRule,
    canonicalize_tn,
    normalise_uri,
    originating_identity,
)
from sip.uri import Uri, add_uri_param, parse_uri

__all__ = [
    "COMPACT_FORMS",
    "CSeq",
    "CanonicalTn",
    "Defect",
    "Diversion",
    "FramingError",
    "Header",
    "Headers",
    "HistoryInfoEntry",
    "IdentityHeader",
    "IdentityKind",
    "IdentityValue",
    "Message",
    "NameAddr",
    "Request",
    "Response",
    "SipParseError",
    "SipReason",
    "StreamFramer",
    "TnRule",
    "Uri",
    "Via",
    "add_uri_param",
    "canonical_name",
    "canonicalize_tn",
    "derive_to_tag",
    "normalise_uri",
    "originating_identity",
    "parse_message",
    "parse_name_addr",
    "parse_sip_date",
    "parse_uri",
    "response_bytes",
    "response_to",
    "split_commas",
]
