"""Telephone-number canonicalisation and the originating identity (RFC 8224 section 8).

This is the project's one implementation: ``shaken`` receives the canonical strings.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import unquote

from sip.limits import MAX_SPECIAL_NUMBER_DIGITS, MIN_POLICY_TN_DIGITS
from sip.uri import Uri, parse_uri

# Visual separators removed by RFC 8224 section 8.3 (and RFC 3966 section 5.1.1).
_VISUAL_SEPARATORS = frozenset("-.() ")
_TN_CHARS = frozenset("0123456789#*")
_STRIP_VISUAL_SEPARATORS = str.maketrans("", "", "".join(_VISUAL_SEPARATORS))
# North American Numbering Plan: 10-digit national numbers whose area code starts 2-9
# (ATIS-0300051 / NANPA numbering format NXX-NXX-XXXX).
_NANP_NATIONAL_DIGITS = 10


class TnRule(StrEnum):
    """Which canonicalisation step changed the input (recorded for evidence).

    RFC 8224 section 8.3 and section 8.5.
    """

    PERCENT_DECODED = "percent_decoded"
    STRIPPED_PARAMETERS = "stripped_parameters"
    STRIPPED_PLUS = "stripped_plus"
    STRIPPED_VISUAL_SEPARATORS = "stripped_visual_separators"
    ADDED_COUNTRY_CODE = "added_country_code"
    NATIONAL_SPECIAL_NUMBER = "national_special_number"
    TN_BY_LOCAL_POLICY = "tn_by_local_policy"
    URI_NORMALISED = "uri_normalised"


class IdentityKind(StrEnum):
    """A telephone number or a URI (RFC 8225 section 5.2.1 ``tn`` / ``uri``)."""

    TN = "tn"
    URI = "uri"


@dataclass(frozen=True, slots=True)
class CanonicalTn:
    """A canonical ``tn-spec`` (digits, ``#``, ``*``; no ``+``) and the rules applied.

    RFC 8224 section 8.3.
    """

    tn: str
    rules: tuple[TnRule, ...] = ()


@dataclass(frozen=True, slots=True)
class IdentityValue:
    """The originating (or destination) identity as a PASSporT carries it.

    RFC 8224 section 8.1, section 8.3 and section 8.5.
    """

    kind: IdentityKind
    value: str
    rules: tuple[TnRule, ...] = ()


def canonicalize_tn(value: str, *, default_country_code: str | None = "1") -> CanonicalTn | None:
    """Canonical form of a telephone number, or None if ``value`` is not one.

    Parameters (``;verstat=``, ``;phone-context=``, ``;npdi``...) are stripped first; then the
    leading ``+`` and visual separators; only digits, ``#`` and ``*`` may remain (anything else
    means it is not a telephone number). A number without ``+`` of exactly 10 digits gets
    ``default_country_code`` when that is ``"1"`` (NANP); short numbers (at most
    ``MAX_SPECIAL_NUMBER_DIGITS`` digits, e.g. ``911``, ``*67``) are national special numbers
    and stay as dialled.

    RFC 8224 section 8.3.
    """
    rules: list[TnRule] = []
    text = value.strip()
    if "%" in text:
        decoded = unquote(text, errors="replace")
        if decoded != text:
            rules.append(TnRule.PERCENT_DECODED)
            text = decoded
    if ";" in text:
        text = text.partition(";")[0]
        rules.append(TnRule.STRIPPED_PARAMETERS)
    international = text.startswith("+")
    if international:
        text = text[1:]
        rules.append(TnRule.STRIPPED_PLUS)
    # Set operations over the string's characters: one C loop each, where a generator over
    # the characters costs a Python step per digit (this runs for every identity of every
    # request the verification service is given).
    if not _VISUAL_SEPARATORS.isdisjoint(text):
        text = text.translate(_STRIP_VISUAL_SEPARATORS)
        rules.append(TnRule.STRIPPED_VISUAL_SEPARATORS)
    if not text or not _TN_CHARS.issuperset(text):
        return None
    if not international:
        if len(text) <= MAX_SPECIAL_NUMBER_DIGITS:
            rules.append(TnRule.NATIONAL_SPECIAL_NUMBER)
        elif (
            default_country_code == "1"
            and len(text) == _NANP_NATIONAL_DIGITS
            and text.isdigit()
            and text[0] in "23456789"
        ):
            text = "1" + text
            rules.append(TnRule.ADDED_COUNTRY_CODE)
    return CanonicalTn(text, tuple(rules))


def _looks_like_tn(user: str) -> bool:
    """Local policy (RFC 8224 section 8.1): a leading ``+`` with digits, or only dialable
    characters with at least ``MIN_POLICY_TN_DIGITS`` digits."""
    number = unquote(user.partition(";")[0])
    body = number[1:] if number.startswith("+") else number
    if not body or not all(ch in _TN_CHARS or ch in _VISUAL_SEPARATORS for ch in body):
        return False
    digits = sum(ch.isdigit() for ch in body)
    return digits >= 1 if number.startswith("+") else digits >= MIN_POLICY_TN_DIGITS


def normalise_uri(uri: Uri) -> str:
    """``scheme:user@host`` lower-cased, %-escapes of unreserved characters decoded, and
    parameters, headers, password and port dropped. RFC 8224 section 8.5."""
    if not uri.is_sip:
        return uri.raw
    host = (uri.host or "").lower()
    if uri.user is None:
        return f"{uri.scheme}:{host}"
    return f"{uri.scheme}:{_decode_unreserved(uri.user).lower()}@{host}"


def _decode_unreserved(text: str) -> str:
    if "%" not in text:
        return text
    out: list[str] = []
    i = 0
    while i < len(text):
        if text[i] == "%" and i + 2 < len(text):
            try:
                ch = chr(int(text[i + 1 : i + 3], 16))
            except ValueError:
                ch = ""
            if ch and ((ch.isalnum() and ch.isascii()) or ch in "-_.!~*'()"):
                out.append(ch)
                i += 3
                continue
        out.append(text[i])
        i += 1
    return "".join(out)


def originating_identity(
    uri: Uri | str, *, default_country_code: str | None = "1"
) -> IdentityValue:
    """What a PASSporT's ``orig`` (or a ``dest`` entry) should hold for this URI.

    ``tel:`` or ``sip:``/``sips:`` with ``user=phone`` -> TN; otherwise a user part that looks
    like a TN (leading ``+``, or only dialable characters with at least seven digits) is taken
    as a TN by local policy (rule ``tn_by_local_policy``); anything else, or a would-be TN that
    does not canonicalise, is the URI normalised per section 8.5.

    RFC 8224 section 8.1, section 8.3 and section 8.5.
    """
    if isinstance(uri, str):
        uri = parse_uri(uri)
    candidate: str | None = None
    policy: tuple[TnRule, ...] = ()
    if uri.is_tel:
        candidate = uri.user or ""
        if uri.params:
            policy = (TnRule.STRIPPED_PARAMETERS,)
    elif uri.is_sip and uri.user is not None:
        if uri.is_user_phone:
            candidate = uri.user
        elif _looks_like_tn(uri.user):
            candidate = uri.user
            policy = (TnRule.TN_BY_LOCAL_POLICY,)
    if candidate is not None:
        canonical = canonicalize_tn(candidate, default_country_code=default_country_code)
        if canonical is not None:
            return IdentityValue(IdentityKind.TN, canonical.tn, policy + canonical.rules)
    return IdentityValue(IdentityKind.URI, normalise_uri(uri), (TnRule.URI_NORMALISED,))
