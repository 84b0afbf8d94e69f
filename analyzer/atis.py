"""ATIS-1000082 / 3GPP verification and signing requests, mapped to the core's values.

A central verification or signing server receives the SIP-derived identities as JSON
(``{"tn": ...}`` or ``{"uri": ...}``), the Date header as a NumericDate and the Identity header
values. This module turns those plain values into a ``VerificationRequest`` (TNs canonicalised
once, by ``sip.canonicalize_tn``, exactly as for SIP input) and into PASSporT claims for the
signer. It knows nothing of HTTP or JSON parsing: the service's models hand it plain values.
A value that cannot be mapped raises ``AtisError`` naming the request parameter, which the
service answers as an invalid parameter (STANDARDS.md section 8.4).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from analyzer.extract import party_from_uri
from shaken.errors import Finding, Reason, warning
from shaken.party import Party, PartyKind
from shaken.signing import div_payload, shaken_payload
from shaken.verifier import VerificationRequest
from sip import canonicalize_tn
from sip.fields import split_identity_line
from sip.limits import MAX_SPECIAL_NUMBER_DIGITS
from sip.uri import parse_uri_checked

# Identity header values in one verification request. SIP puts no bound on Identity headers;
# a SHAKEN call carries one, a diverted call one more per diversion (RFC 8946 section 4), and
# verifiers bound the chain they follow: 16 leaves room for any real diversion chain while
# bounding the work one request can ask for.
MAX_IDENTITIES = 16
# Destination identities in one request: RFC 8225 section 5.2.1 allows several ``dest`` TNs
# (group calls); 32 is far beyond any observed use and bounds the comparison work.
MAX_DESTINATIONS = 32
# The largest NumericDate accepted (RFC 7519 section 2): year 9999, the last year datetime
# represents, so that any accepted value converts without overflow.
MAX_NUMERIC_DATE = 253_402_300_799


class AtisError(ValueError):
    """A request value that cannot be mapped; ``parameter`` is its JSON path.

    STANDARDS.md section 8.4 (invalid parameter value).
    """

    def __init__(self, parameter: str, detail: str) -> None:
        super().__init__(f"{parameter}: {detail}")
        self.parameter = parameter
        self.detail = detail


@dataclass(frozen=True, slots=True)
class AtisIdentity:
    """One ``{"tn": ...}`` or ``{"uri": ...}`` object, each member as a tuple of strings.

    ATIS-1000082 (STANDARDS.md section 8.3); RFC 8225 section 5.2.1 for the tn/uri forms.
    """

    tn: tuple[str, ...] = ()
    uri: tuple[str, ...] = ()


def party_from_tn(value: str, parameter: str) -> Party:
    """A TN as the SIP side would canonicalise it (RFC 8224 section 8.3)."""
    canonical = canonicalize_tn(value)
    if canonical is None:
        raise _not_a_tn(value, parameter)
    return Party(PartyKind.TN, canonical.tn)


def _not_a_tn(value: str, parameter: str) -> AtisError:
    return AtisError(parameter, f"{value!r} is not a telephone number")


def party_from_uri_text(value: str, parameter: str) -> Party:
    """A URI identity: a TN when it carries one (tel:, user=phone), else the normalised URI.

    RFC 8224 section 8.1 and section 8.5.
    """
    uri, defects = parse_uri_checked(value.strip())
    if defects or not uri.scheme:
        raise AtisError(parameter, f"{value!r} is not a URI")
    return party_from_uri(uri)


# Digits of a national number of the NANP (ITU-T E.164 country code 1), which
# ``canonicalize_tn`` prefixes with that country code when its first digit can start one.
_NANP_DIGITS = 10
_NANP_FIRST_DIGITS = frozenset("23456789")
# Whether such a number is longer than a special number (which ``canonicalize_tn`` leaves as
# dialled, whatever its first digit).
_NANP_NOT_SPECIAL = _NANP_DIGITS > MAX_SPECIAL_NUMBER_DIGITS


def _plain_tn(value: str) -> str | None:
    """``canonicalize_tn(value).tn`` for the shapes nearly every request uses, ``+`` and ASCII
    digits or ASCII digits alone, without its general walk (its rules, its result object);
    None for anything else, which ``canonicalize_tn`` judges. RFC 8224 section 8.3."""
    digits = value[1:] if value[:1] == "+" else value
    if not (digits.isascii() and digits.isdigit()):
        return None
    if (
        digits is value
        and len(digits) == _NANP_DIGITS
        and digits[0] in _NANP_FIRST_DIGITS
        and _NANP_NOT_SPECIAL
    ):
        return "1" + digits
    return digits


def parties_of(identity: AtisIdentity, parameter: str) -> tuple[Party, ...]:
    """Every identity an ``AtisIdentity`` names, in order (TNs first)."""
    # Once per identity of every verification request: the parameter names of the errors are
    # only built when there is an error.
    found: list[Party] = []
    for value in identity.tn:
        tn = _plain_tn(value)
        if tn is None:
            canonical = canonicalize_tn(value)
            if canonical is None:
                raise _not_a_tn(value, f"{parameter}.tn")
            tn = canonical.tn
        found.append(Party(PartyKind.TN, tn))
    if identity.uri:
        found.extend(party_from_uri_text(u, f"{parameter}.uri") for u in identity.uri)
    if not found:
        raise AtisError(parameter, "needs a tn or a uri")
    return tuple(found)


def numeric_date(value: int, parameter: str) -> datetime:
    """A NumericDate (seconds since the epoch, RFC 7519 section 2) as an aware datetime."""
    if value < 0 or value > MAX_NUMERIC_DATE:
        raise AtisError(parameter, f"{value} is not a NumericDate in range")
    return datetime.fromtimestamp(value, UTC)


def verification_request(
    *,
    identities: Sequence[str],
    orig: AtisIdentity,
    to: AtisIdentity | None,
    time: int | None,
    dest: AtisIdentity | None = None,
    parameter: str = "verificationRequest",
) -> VerificationRequest:
    """The verifier's input from an ATIS (``identity``) or 3GPP (``identityHeader[s]``) request.

    ``orig`` is the SIP-derived originating identity (the ``from`` member: P-Asserted-Identity
    or From, as the caller derived it), ``to`` the To identities, ``dest`` (3GPP) the current
    target (the Request-URI, against which a ``div`` PASSporT's dest is checked, RFC 8946
    section 4.2) and ``time`` the SIP Date header as a NumericDate
    (absent: no Date header, which policy then judges).

    ATIS-1000082 (STANDARDS.md section 8.3); RFC 8224 section 6.2.
    """
    if not identities:
        raise AtisError(f"{parameter}.identity", "at least one Identity header value is needed")
    if len(identities) > MAX_IDENTITIES:
        raise AtisError(f"{parameter}.identity", f"more than {MAX_IDENTITIES} Identity values")
    values: list[str] = []
    findings: list[Finding] = []
    for index, raw in enumerate(identities):
        if "," not in raw and raw.strip():  # the common case: one value, nothing to split
            values.append(raw.strip())
            continue
        split, _ = split_identity_line(raw, index, 0)
        if len(split) > 1:
            findings.append(
                warning(Reason.COMMA_JOINED_IDENTITY, f"identity {index} held {len(split)} values")
            )
        values.extend(h.value for h in split)
    originators = parties_of(orig, f"{parameter}.from")
    if len(originators) != 1:
        raise AtisError(f"{parameter}.from", "exactly one originating identity is expected")
    targets = parties_of(to, f"{parameter}.to") if to is not None else ()
    target = None
    if dest is not None:
        current = parties_of(dest, f"{parameter}.dest")
        if len(current) != 1:
            raise AtisError(f"{parameter}.dest", "exactly one current target is expected")
        target = current[0]
    if len(targets) > MAX_DESTINATIONS:
        raise AtisError(f"{parameter}.to", f"more than {MAX_DESTINATIONS} destinations")
    date = numeric_date(time, f"{parameter}.time") if time is not None else None
    return VerificationRequest(
        identities=tuple(values),
        from_party=originators[0],
        dest=targets,
        request_uri=target,
        date=date,
        date_present=time is not None,
        findings=tuple(findings),
    )


def signing_tn(value: str, parameter: str) -> str:
    """A TN for a PASSporT claim, canonical as a verifier will derive it from SIP.

    RFC 8224 section 8.3 (the signer canonicalises as the verifier does).
    """
    return party_from_tn(value, parameter).value


def _signing_tns(identity: AtisIdentity, parameter: str) -> list[str]:
    if identity.uri:
        raise AtisError(f"{parameter}.uri", "only telephone numbers can be signed here")
    if not identity.tn:
        raise AtisError(parameter, "needs a tn")
    if len(identity.tn) > MAX_DESTINATIONS:
        raise AtisError(f"{parameter}.tn", f"more than {MAX_DESTINATIONS} numbers")
    return [signing_tn(t, f"{parameter}.tn") for t in identity.tn]


def signing_payload(
    *,
    ppt: str,
    attest: str | None,
    orig: AtisIdentity,
    dest: AtisIdentity,
    iat: int,
    origid: str | None,
    div: AtisIdentity | None = None,
    parameter: str = "signingRequest",
) -> dict[str, object]:
    """PASSporT claims for an ATIS/3GPP signing request (``ppt`` shaken or div).

    Raises ``AtisError`` for values the signer must not sign (the core's ``ValueError`` is
    mapped to the parameter it concerns). RFC 8588 sections 4-5, RFC 8946 section 3.
    """
    orig_tns = _signing_tns(orig, f"{parameter}.orig")
    if len(orig_tns) != 1:
        raise AtisError(f"{parameter}.orig.tn", "exactly one originating number is expected")
    dest_tns = _signing_tns(dest, f"{parameter}.dest")
    numeric_date(iat, f"{parameter}.iat")
    if ppt == "shaken":
        if attest is None:
            raise AtisError(f"{parameter}.attest", "required for ppt shaken")
        if origid is None:
            raise AtisError(f"{parameter}.origid", "required for ppt shaken")
        if div is not None:
            raise AtisError(f"{parameter}.div", "only valid with ppt div")
        try:
            return shaken_payload(
                attest=attest, orig_tn=orig_tns[0], dest_tns=dest_tns, iat=iat, origid=origid
            )
        except ValueError as exc:
            raise AtisError(_culprit(str(exc), parameter), str(exc)) from None
    if ppt == "div":
        if div is None:
            raise AtisError(f"{parameter}.div", "required for ppt div (the previous destination)")
        div_tns = _signing_tns(div, f"{parameter}.div")
        if len(div_tns) != 1:
            raise AtisError(f"{parameter}.div.tn", "exactly one diverting number is expected")
        return div_payload(orig_tn=orig_tns[0], dest_tns=dest_tns, div_tn=div_tns[0], iat=iat)
    raise AtisError(f"{parameter}.ppt", f"{ppt!r} cannot be signed here (shaken or div)")


def _culprit(message: str, parameter: str) -> str:
    """The parameter a ``shaken.signing`` validation message is about."""
    for name in ("attest", "origid", "iat", "dest", "orig"):
        if message.startswith(name):
            return f"{parameter}.{name}"
    return parameter


__all__ = [
    "MAX_DESTINATIONS",
    "MAX_IDENTITIES",
    "MAX_NUMERIC_DATE",
    "AtisError",
    "AtisIdentity",
    "numeric_date",
    "parties_of",
    "party_from_tn",
    "party_from_uri_text",
    "signing_payload",
    "signing_tn",
    "verification_request",
]
