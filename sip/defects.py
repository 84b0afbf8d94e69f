"""Stable reason codes for SIP parsing problems: recorded defects and fatal parse errors."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class SipReason(StrEnum):
    """Why a SIP message is odd or unparseable (stable snake_case values for JSON and tests).

    The same enum codes both the `Defect`s recorded on a leniently parsed message and the
    `SipParseError.reason` of a message that could not be parsed at all.

    RFC 3261 section 7, RFC 4475 section 3.
    """

    # Fatal: no message can be built.
    EMPTY = "empty"
    MESSAGE_TOO_LARGE = "message_too_large"
    TOO_MANY_HEADERS = "too_many_headers"
    HEADER_LINE_TOO_LONG = "header_line_too_long"
    START_LINE_TOO_LONG = "start_line_too_long"
    INVALID_START_LINE = "invalid_start_line"
    INVALID_STATUS_LINE = "invalid_status_line"
    # Framing and line structure.
    LEADING_CRLF = "leading_crlf"
    LF_LINE_ENDINGS = "lf_line_endings"
    MISSING_HEADER_TERMINATOR = "missing_header_terminator"
    NON_UTF8 = "non_utf8"
    HEADER_FOLDING = "header_folding"
    WHITESPACE_BEFORE_COLON = "whitespace_before_colon"
    NO_SPACE_AFTER_COLON = "no_space_after_colon"
    MALFORMED_HEADER_LINE = "malformed_header_line"
    INVALID_HEADER_NAME = "invalid_header_name"
    START_LINE_WHITESPACE = "start_line_whitespace"
    UNSUPPORTED_VERSION = "unsupported_version"
    # Body framing.
    MISSING_CONTENT_LENGTH = "missing_content_length"
    INVALID_CONTENT_LENGTH = "invalid_content_length"
    CONFLICTING_CONTENT_LENGTH = "conflicting_content_length"
    CONTENT_LENGTH_EXCEEDS_DATA = "content_length_exceeds_data"
    TRAILING_DATA = "trailing_data"
    # Header semantics.
    MISSING_REQUIRED_HEADER = "missing_required_header"
    DUPLICATE_SINGLE_HEADER = "duplicate_single_header"
    MALFORMED_REQUEST_URI = "malformed_request_uri"
    URI_HEADERS_NOT_ALLOWED = "uri_headers_not_allowed"
    MALFORMED_URI = "malformed_uri"
    MALFORMED_NAME_ADDR = "malformed_name_addr"
    EMPTY_PARAMETER = "empty_parameter"
    MALFORMED_VIA = "malformed_via"
    INVALID_CSEQ = "invalid_cseq"
    CSEQ_METHOD_MISMATCH = "cseq_method_mismatch"
    INVALID_MAX_FORWARDS = "invalid_max_forwards"
    INVALID_DATE = "invalid_date"
    EMPTY_IDENTITY = "empty_identity"
    IDENTITY_COMMA_JOINED = "identity_comma_joined"


# Codes that describe something RFC 3261 allows (folding, LWS around HCOLON, ...) or that a
# receiver handles by rule (extra datagram bytes are discarded, RFC 3261 section 18.3). They are
# kept as evidence but never make `strict=True` fail.
NOTE_CODES = frozenset(
    {
        SipReason.LEADING_CRLF,
        SipReason.HEADER_FOLDING,
        SipReason.WHITESPACE_BEFORE_COLON,
        SipReason.NO_SPACE_AFTER_COLON,
        SipReason.TRAILING_DATA,
        SipReason.MISSING_CONTENT_LENGTH,
    }
)


@dataclass(frozen=True, slots=True)
class Defect:
    """One deviation found while parsing; ``offset`` is a byte offset into the raw message.

    ``violation`` is False for notes: constructs RFC 3261 permits but that are worth recording
    (line folding, whitespace before the colon). ``strict=True`` rejects violations only.

    RFC 3261 section 7.3.1, RFC 4475 section 3.
    """

    code: SipReason
    detail: str = ""
    offset: int | None = None
    violation: bool = True

    @classmethod
    def of(cls, code: SipReason, detail: str = "", offset: int | None = None) -> Defect:
        """A defect whose severity follows the code (notes are not violations)."""
        return cls(code, detail, offset, code not in NOTE_CODES)

    def to_json(self) -> dict[str, object]:
        return {
            "code": self.code.value,
            "detail": self.detail,
            "offset": self.offset,
            "violation": self.violation,
        }


class SipParseError(ValueError):
    """The bytes are not a SIP message (or, with ``strict=True``, not a well-formed one).

    RFC 3261 section 7.
    """

    def __init__(self, reason: SipReason, detail: str = "", offset: int | None = None) -> None:
        self.reason = reason
        self.detail = detail = _as_text(detail)
        self.offset = offset
        where = f" at byte {offset}" if offset is not None else ""
        super().__init__(f"{reason.value}{where}: {detail}" if detail else f"{reason.value}{where}")


def _as_text(detail: str) -> str:
    """``detail`` with the bytes that were not UTF-8 (kept as lone surrogates by the parser's
    ``surrogateescape`` decoding) shown as ``\\xNN``: an error text is printed and put in JSON,
    where a lone surrogate cannot be encoded (a traceback, or bytes that are not UTF-8)."""
    if detail.isascii():
        return detail
    try:
        raw = detail.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate no decoding of bytes makes
        return detail.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")
