"""The HTTP contract: pydantic models of the ATIS-1000082 and 3GPP request/response shapes.

Requests are validated strictly (no string-to-number coercion; unknown members ignored, as
vendors add their own); responses are built by the explicit mappers at the end of this module
from the core's ``VerificationResult``. Member names follow the specifications (camelCase,
``from``), not Python style. STANDARDS.md section 8 (ATIS-1000082; 3GPP TS 24.229 Annex V).
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from analyzer.atis import MAX_DESTINATIONS, MAX_IDENTITIES, MAX_NUMERIC_DATE, AtisIdentity
from shaken.errors import phrase_for
from shaken.result import PassportResult, VerificationResult

# A TN as written by a client (E.164 with separators and parameters): RFC 3966 numbers stay far
# below this; the bound only stops abuse.
MAX_TN_CHARS = 64
# RFC 3261 puts no bound on URIs; 2048 is the common practical URL limit.
MAX_URI_CHARS = 2048
# An Identity header value (RFC 8224 section 4): a SHAKEN one is ~1 kB, with rcd a few kB.
MAX_IDENTITY_CHARS = 16 * 1024
# Free-text members echoed back (requestId, profileId, displayName).
MAX_TEXT_CHARS = 256

Tn = Annotated[str, StringConstraints(min_length=1, max_length=MAX_TN_CHARS)]
UriText = Annotated[str, StringConstraints(min_length=1, max_length=MAX_URI_CHARS)]
IdentityValue = Annotated[str, StringConstraints(min_length=1, max_length=MAX_IDENTITY_CHARS)]
Text = Annotated[str, StringConstraints(max_length=MAX_TEXT_CHARS)]
NumericDate = Annotated[int, Field(ge=0, le=MAX_NUMERIC_DATE)]


class Flavour(StrEnum):
    """Which request/response shape: ATIS-1000082 or 3GPP (TS 24.229 Annex V, Ms)."""

    ATIS = "atis"
    GPP = "3gpp"


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore", populate_by_name=True)


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _exactly_one_of(*names: str) -> Callable[[dict[str, Any]], None]:
    """JSON Schema for "exactly one of these members, not null" (what the validator checks)."""

    def edit(schema: dict[str, Any]) -> None:
        for name in names:
            member = schema["properties"][name]
            member["anyOf"] = [s for s in member["anyOf"] if s != {"type": "null"}]
            member.pop("default", None)
        schema["oneOf"] = [{"required": [name]} for name in names]

    return edit


def _at_least_one_of(*names: str) -> Callable[[dict[str, Any]], None]:
    def edit(schema: dict[str, Any]) -> None:
        schema["anyOf"] = [{"required": [name]} for name in names]

    return edit


class Identity(_Strict):
    """``{"tn": ...}`` or ``{"uri": ...}``: one of the two, a string or a list of strings.

    RFC 8225 section 5.2.1; ATIS-1000082 (STANDARDS.md section 8.2-8.3).
    """

    model_config = ConfigDict(json_schema_extra=_exactly_one_of("tn", "uri"))

    tn: Tn | Annotated[list[Tn], Field(min_length=1, max_length=MAX_DESTINATIONS)] | None = None
    uri: (
        UriText | Annotated[list[UriText], Field(min_length=1, max_length=MAX_DESTINATIONS)] | None
    ) = None

    @model_validator(mode="after")
    def _one_of(self) -> Identity:
        if (self.tn is None) == (self.uri is None):
            raise ValueError("give exactly one of tn or uri")
        return self

    def to_core(self) -> AtisIdentity:
        """The plain value the analyzer maps."""
        tn, uri = self.tn, self.uri
        return AtisIdentity(
            tn=(tn,) if isinstance(tn, str) else tuple(tn) if tn else (),
            uri=(uri,) if isinstance(uri, str) else tuple(uri) if uri else (),
        )


class AtisVerificationRequest(_Strict):
    """ATIS flavour: the full Identity header value, SIP-derived identities, Date as time."""

    from_: Identity = Field(alias="from")
    to: Identity
    time: NumericDate | None = None
    identity: IdentityValue


class GppVerificationRequest(_Strict):
    """3GPP flavour: ``identityHeader`` and/or ``identityHeaders``; ``dest`` is the current
    target (Request-URI) for diversion PASSporTs; ``requestId`` is echoed back."""

    model_config = ConfigDict(
        json_schema_extra=_at_least_one_of("identityHeader", "identityHeaders")
    )

    from_: Identity = Field(alias="from")
    to: Identity
    time: NumericDate | None = None
    identityHeader: IdentityValue | None = None
    identityHeaders: (
        Annotated[list[IdentityValue], Field(min_length=1, max_length=MAX_IDENTITIES)] | None
    ) = None
    dest: Identity | None = None
    requestId: Text | None = None
    profileId: Text | None = None
    displayName: Text | None = None

    @model_validator(mode="after")
    def _has_identity(self) -> GppVerificationRequest:
        if self.identityHeader is None and not self.identityHeaders:
            raise ValueError("identityHeader or identityHeaders is required")
        return self

    @property
    def identities(self) -> list[str]:
        found = [self.identityHeader] if self.identityHeader is not None else []
        return found + list(self.identityHeaders or ())


# -- the common ATIS request without the model ----------------------------------------------------
#
# Validating ``AtisVerificationRequest`` (the model built, then mapped by ``to_core``) costs
# about as much as the rest of the request's mapping. ``plain_atis_request`` takes the shape
# nearly every client sends, with the model's own bounds, and gives what the model's mapping
# gives; anything else returns None and goes to the model, so every error is the model's:
# other types (``bool`` is not an ``int`` here either), a value out of bounds, text that is not
# ASCII (the model rejects lone surrogates, and counts length in code points: not worth a
# second path), the ``from_`` spelling of ``from`` (the model accepts it by name).
# tests/service/test_api_plain_request.py checks it against the model.


def _plain_strings(value: object, limit: int) -> tuple[str, ...] | None:
    """``value`` as ``Tn | list[Tn]`` (``UriText`` with ``MAX_URI_CHARS``) maps it, or None."""
    if type(value) is str:
        return (value,) if 0 < len(value) <= limit and value.isascii() else None
    if type(value) is not list or not 0 < len(value) <= MAX_DESTINATIONS:
        return None
    for item in value:
        if type(item) is not str or not 0 < len(item) <= limit or not item.isascii():
            return None
    return tuple(value)


def _plain_identity(value: object) -> AtisIdentity | None:
    """``Identity.model_validate(value).to_core()`` for the plain shapes, or None."""
    if type(value) is not dict:
        return None
    tn = value.get("tn")
    uri = value.get("uri")
    if (tn is None) == (uri is None):
        return None
    if uri is None:
        tns = _plain_strings(tn, MAX_TN_CHARS)
        return None if tns is None else AtisIdentity(tn=tns)
    uris = _plain_strings(uri, MAX_URI_CHARS)
    return None if uris is None else AtisIdentity(uri=uris)


def plain_atis_request(
    inner: dict[str, Any],
) -> tuple[AtisIdentity, AtisIdentity, int | None, str] | None:
    """``from``, ``to`` (as ``to_core`` maps them), ``time`` and ``identity`` of an ATIS
    ``verificationRequest`` in the plain shape, as ``AtisVerificationRequest`` validates
    them; None for any other request (see above). STANDARDS.md section 8.3."""
    identity = inner.get("identity")
    time = inner.get("time")
    if (
        type(identity) is not str
        or not 0 < len(identity) <= MAX_IDENTITY_CHARS
        or not identity.isascii()
        or (time is not None and (type(time) is not int or not 0 <= time <= MAX_NUMERIC_DATE))
        or "from_" in inner
    ):
        return None
    orig = _plain_identity(inner.get("from"))
    if orig is None:
        return None
    to = _plain_identity(inner.get("to"))
    if to is None:
        return None
    return orig, to, time, identity


class AtisVerificationBody(_Strict):
    verificationRequest: AtisVerificationRequest


class GppVerificationBody(_Strict):
    verificationRequest: GppVerificationRequest


class SigningRequest(_Strict):
    """Both flavours: ``attest``, ``orig``, ``dest``, ``iat``, ``origid``, ``ppt``; a ``div``
    PASSporT (ppt ``div``) names the previous destination in ``div``. ``iat`` defaults to the
    server clock and ``origid`` to a random UUID. RFC 8588 section 4-5, RFC 8946 section 3."""

    attest: Literal["A", "B", "C"] | None = None
    orig: Identity
    dest: Identity
    iat: NumericDate | None = None
    origid: Annotated[str, StringConstraints(min_length=1, max_length=MAX_TEXT_CHARS)] | None = None
    ppt: Literal["shaken", "div"] = "shaken"
    div: Identity | None = None
    requestId: Text | None = None
    profileId: Text | None = None


class SigningBody(_Strict):
    signingRequest: SigningRequest


# -- responses ---------------------------------------------------------------------------------


class AtisVerificationResult(_Out):
    """ATIS response: ``verstat``, and on failure ``reasoncode``/``reasontext`` (the RFC 8224
    status and phrase). ``reason``, ``attest`` and ``origid`` are stirscope extensions."""

    verstat: str
    reasoncode: int | None = None
    reasontext: str | None = None
    reason: str | None = Field(default=None, description="stirscope stable reason code")
    attest: str | None = None
    origid: str | None = None


class AtisVerificationResponse(_Out):
    verificationResponse: AtisVerificationResult


class GppVerifyResult(_Out):
    """One PASSporT's outcome (3GPP ``verifyResult``)."""

    ppt: str | None = None
    status: Literal["pass", "fail"]
    reasonCode: int | None = None
    reasonText: str | None = None
    reasonDescription: str | None = None
    reason: str | None = Field(default=None, description="stirscope stable reason code")
    passport: str
    validClaims: dict[str, Any] | None = None


class GppVerifyResultItem(_Out):
    verifyResult: GppVerifyResult


class GppVerificationResult(_Out):
    verstatValue: str
    verifyResults: list[GppVerifyResultItem]
    divResult: list[GppVerifyResultItem] | None = None
    requestId: str | None = None


class GppVerificationResponse(_Out):
    verificationResponse: GppVerificationResult


class AtisSigningResult(_Out):
    identity: str


class AtisSigningResponse(_Out):
    signingResponse: AtisSigningResult


class GppSigningResult(_Out):
    identityHeader: str
    requestId: str | None = None


class GppSigningResponse(_Out):
    signingResponse: GppSigningResult


class ExceptionDetail(_Out):
    """OMA ``serviceException`` / ``policyException`` plus our stable ``code``."""

    messageId: str
    text: str
    variables: list[str] = []
    code: str


class RequestError(_Out):
    serviceException: ExceptionDetail | None = None
    policyException: ExceptionDetail | None = None


class ErrorBody(_Out):
    requestError: RequestError


class Health(_Out):
    status: Literal["ok"] = "ok"


class Readiness(_Out):
    status: Literal["ready", "not_ready"]
    signing: bool
    version: str


# -- mappers from core types ---------------------------------------------------------------------
#
# The verification mappers run once per request on the event loop, so they build the response
# dicts directly rather than through the response models (construction plus ``model_dump`` costs
# several times the dict): the models stay the documented contract, members in the same order,
# absent rather than null (``exclude_none``), and tests/service/test_api_models.py checks that
# every mapped response validates against its model and dumps to the same dict.


def atis_verification(result: VerificationResult) -> dict[str, object]:
    """``verificationResponse`` (ATIS) for a core result. STANDARDS.md section 8.3."""
    # ``_value_`` is what ``Enum.value`` returns, without the two calls of that property.
    body: dict[str, object] = {"verstat": result.verstat._value_}
    if not result.passed:
        if result.status_code is not None:
            body["reasoncode"] = result.status_code
        phrase = result.reason_phrase
        if phrase is not None:
            body["reasontext"] = phrase
    reason = result.reason
    if reason is not None:
        body["reason"] = reason._value_
    best = result.best
    if best is not None and not best.ignored:
        if best.attest is not None:
            body["attest"] = best.attest
        if best.origid is not None:
            body["origid"] = best.origid
    return {"verificationResponse": body}


def _gpp_item(p: PassportResult) -> dict[str, object]:
    primary = p.primary
    valid = not p.ignored and primary is None
    item: dict[str, object] = {}
    if p.ppt is not None:
        item["ppt"] = p.ppt
    item["status"] = "pass" if valid else "fail"
    if primary is not None:
        code = primary.status_code
        if code is not None:
            item["reasonCode"] = code
        text = phrase_for(code)
        if text is not None:
            item["reasonText"] = text
        item["reasonDescription"] = primary.detail
        item["reason"] = primary.reason.value
    item["passport"] = p.identity.partition(";")[0].strip()
    if valid and p.claims is not None:
        item["validClaims"] = p.claims
    return {"verifyResult": item}


def gpp_verification(result: VerificationResult, request_id: str | None) -> dict[str, object]:
    """``verificationResponse`` (3GPP) for a core result: ``div`` PASSporTs in ``divResult``,
    ignored (unsupported ppt) ones left out. STANDARDS.md section 8.3."""
    used = [p for p in result.passports if not p.ignored]
    body: dict[str, object] = {
        "verstatValue": result.verstat.value,
        "verifyResults": [_gpp_item(p) for p in used if p.ppt not in ("div", "div-o")],
    }
    div = [_gpp_item(p) for p in used if p.ppt in ("div", "div-o")]
    if div:
        body["divResult"] = div
    if request_id is not None:
        body["requestId"] = request_id
    return {"verificationResponse": body}


def signing_response(identity: str, flavour: Flavour, request_id: str | None) -> dict[str, object]:
    """``signingResponse`` in the flavour asked. STANDARDS.md section 8.2."""
    if flavour is Flavour.GPP:
        return GppSigningResponse(
            signingResponse=GppSigningResult(identityHeader=identity, requestId=request_id)
        ).model_dump(exclude_none=True)
    return AtisSigningResponse(signingResponse=AtisSigningResult(identity=identity)).model_dump()
