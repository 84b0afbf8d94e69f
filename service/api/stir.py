"""``POST /stir/v1/verification`` and ``POST /stir/v1/signing`` (ATIS-1000082, 3GPP flavour).

The request body is read and checked here rather than by FastAPI's body binding, so that each
failure has its ATIS answer: no body (SVC4000), not JSON (415), too large (413), unparseable
(SVC4003), a missing member (SVC4001) or a bad value (SVC4004). The input flavour is told by
its members (``identityHeader[s]`` is 3GPP); the response follows it unless ``?flavour=`` asks
otherwise. Verification runs in the thread pool (a certificate fetch must never block the event
loop) and is judged as of the server clock. STANDARDS.md section 8.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from functools import partial
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from pydantic.json_schema import JsonSchemaMode

from analyzer.atis import AtisError, signing_payload, verification_request
from service.api.auth import Scope, authorize
from service.api.errors import ApiError, ErrorCode
from service.api.metrics import ApiMetrics
from service.api.models import (
    AtisSigningResponse,
    AtisVerificationBody,
    AtisVerificationRequest,
    AtisVerificationResponse,
    ErrorBody,
    Flavour,
    GppSigningResponse,
    GppVerificationBody,
    GppVerificationRequest,
    GppVerificationResponse,
    SigningBody,
    SigningRequest,
    atis_verification,
    gpp_verification,
    signing_response,
)
from service.api.state import ServiceState, get_state
from shaken.signing import identity_header_value, sign_passport
from shaken.verifier import VerificationRequest

router = APIRouter(prefix="/stir/v1", tags=["stir"])

# Documented by hand (see ``_operation_extra``) and checked in the endpoints: FastAPI's
# dependency injection costs more per request than the whole JSON mapping.
SECURITY_SCHEME = "apiKey"
SECURITY_SCHEMES = {
    SECURITY_SCHEME: {
        "type": "http",
        "scheme": "bearer",
        "description": "API key as a bearer token (required for signing; for verification "
        "unless the server runs with --open-verification)",
    }
}
FLAVOUR_PARAMETER = {
    "name": "flavour",
    "in": "query",
    "required": False,
    "description": "response shape (default: the shape of the request)",
    "schema": {"type": "string", "enum": [f.value for f in Flavour]},
}

# Members that only the 3GPP flavour has (STANDARDS.md section 8.2-8.3).
GPP_VERIFICATION_MEMBERS = frozenset({"identityHeader", "identityHeaders"})
GPP_SIGNING_MEMBERS = frozenset({"requestId", "profileId"})
# Signing of these PASSporT extensions is not offered (RFC 8443 rph, 3GPP sph).
UNSUPPORTED_SIGNING_MEMBERS = ("rph", "sph")

M = TypeVar("M", bound=BaseModel)


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _json_content(*models: type[BaseModel]) -> dict[str, object]:
    schema: dict[str, object] = {"anyOf": [_ref(m) for m in models]}
    if len(models) == 1:
        schema = dict(_ref(models[0]))
    return {"application/json": {"schema": schema}}


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    descriptions = {
        400: "malformed request (SVC4000, SVC4001, SVC4003, SVC4004)",
        401: "no or unknown API key",
        403: "API key without the scope needed",
        406: "the client does not accept application/json (SVC4002)",
        413: "request body too large",
        415: "request body is not application/json",
        503: "not ready, or signing not configured",
    }
    return {s: {"model": ErrorBody, "description": descriptions[s]} for s in statuses}


# Models referenced only through hand-written schemas: ``create_app`` adds them to components.
SCHEMA_MODELS: tuple[tuple[type[BaseModel], JsonSchemaMode], ...] = (
    (AtisVerificationBody, "validation"),
    (GppVerificationBody, "validation"),
    (SigningBody, "validation"),
    (AtisVerificationResponse, "serialization"),
    (GppVerificationResponse, "serialization"),
    (AtisSigningResponse, "serialization"),
    (GppSigningResponse, "serialization"),
)


def _flavour(request: Request) -> Flavour | None:
    value = request.query_params.get("flavour")
    if value is None:
        return None
    try:
        return Flavour(value)
    except ValueError:
        raise ApiError(
            ErrorCode.INVALID_PARAMETER, "flavour", "expected one of atis, 3gpp"
        ) from None


def _operation_extra(body: type[BaseModel] | tuple[type[BaseModel], ...]) -> dict[str, Any]:
    models = body if isinstance(body, tuple) else (body,)
    return {
        "parameters": [FLAVOUR_PARAMETER],
        "security": [{SECURITY_SCHEME: []}],
        "requestBody": {"required": True, "content": _json_content(*models)},
    }


def _accepts_json(accept: str | None) -> bool:
    """Whether an Accept header admits application/json (RFC 9110 section 12.5.1)."""
    if accept is None or not accept.strip():
        return True
    for item in accept.split(","):
        media, *params = (p.strip() for p in item.split(";"))
        quality = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if quality > 0 and media.lower() in ("*/*", "application/*", "application/json"):
            return True
    return False


async def read_json_object(request: Request, limit: int) -> dict[str, Any]:
    """The request body as a JSON object, or the ATIS error for what is wrong with it."""
    if not _accepts_json(request.headers.get("accept")):
        raise ApiError(ErrorCode.UNSUPPORTED_RESPONSE_TYPE, request.headers.get("accept", ""))
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(ErrorCode.PAYLOAD_TOO_LARGE, str(limit))
    if declared is not None and declared.isdigit():
        body = await request.body()  # the server delivers at most Content-Length bytes
    else:  # chunked: count as it arrives
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise ApiError(ErrorCode.PAYLOAD_TOO_LARGE, str(limit))
            chunks.append(chunk)
        body = b"".join(chunks)
    if not body.strip():
        raise ApiError(ErrorCode.MISSING_BODY)
    content_type = request.headers.get("content-type", "")
    media = content_type.split(";")[0].strip().lower()
    if media != "application/json" and not (
        media.startswith("application/") and media.endswith("+json")
    ):
        raise ApiError(ErrorCode.UNSUPPORTED_MEDIA_TYPE, content_type or "(none)")
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise ApiError(ErrorCode.PARSE_FAILURE, _short(str(exc))) from None
    if not isinstance(data, dict):
        raise ApiError(ErrorCode.PARSE_FAILURE, "the body is not a JSON object")
    return data


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _member(body: Mapping[str, Any], name: str) -> dict[str, Any]:
    inner = body.get(name)
    if inner is None:
        raise ApiError(ErrorCode.MISSING_PARAMETER, name)
    if not isinstance(inner, dict):
        raise ApiError(ErrorCode.INVALID_PARAMETER, name, "expected a JSON object")
    return inner


# pydantic names the union member it tried in an error location ("constrained-str",
# "list[constrained-str]", "function-after[...]"): not part of the JSON path.
_BRANCH_TAGS = frozenset({"str", "int", "bool", "float", "list", "dict", "none"})


def _is_branch(part: str | int) -> bool:
    return isinstance(part, str) and (part in _BRANCH_TAGS or any(ch in part for ch in "[-"))


def validate(model: type[M], data: Mapping[str, Any], prefix: str) -> M:
    """``model`` from ``data``; the first problem becomes SVC4001 (missing) or SVC4004."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join([prefix, *(str(p) for p in first["loc"] if not _is_branch(p))])
        if first["type"] == "missing":
            raise ApiError(ErrorCode.MISSING_PARAMETER, where) from None
        raise ApiError(ErrorCode.INVALID_PARAMETER, where, _short(first["msg"])) from None


def _verification_input(inner: Mapping[str, Any]) -> tuple[VerificationRequest, Flavour, Any]:
    prefix = "verificationRequest"
    try:
        if GPP_VERIFICATION_MEMBERS & inner.keys():
            if "identity" in inner:
                raise ApiError(
                    ErrorCode.INVALID_PARAMETER,
                    f"{prefix}.identity",
                    "give identity (ATIS) or identityHeader[s] (3GPP), not both",
                )
            gpp = validate(GppVerificationRequest, inner, prefix)
            core = verification_request(
                identities=gpp.identities,
                orig=gpp.from_.to_core(),
                to=gpp.to.to_core(),
                dest=gpp.dest.to_core() if gpp.dest is not None else None,
                time=gpp.time,
            )
            return core, Flavour.GPP, gpp.requestId
        atis = validate(AtisVerificationRequest, inner, prefix)
        core = verification_request(
            identities=[atis.identity],
            orig=atis.from_.to_core(),
            to=atis.to.to_core(),
            time=atis.time,
        )
        return core, Flavour.ATIS, None
    except AtisError as exc:
        raise ApiError(ErrorCode.INVALID_PARAMETER, exc.parameter, _short(exc.detail)) from None


@router.post(
    "/verification",
    summary="Verify SIP Identity headers (STI-VS)",
    description="ATIS-1000082 verification (``identity``) or the 3GPP shape "
    "(``identityHeader``/``identityHeaders``). A failed verification is a 200 with "
    "verstat TN-Validation-Failed and the RFC 8224 reason code; 4xx means the request "
    "itself was malformed. Freshness is judged against the server clock.",
    response_class=JSONResponse,
    openapi_extra=_operation_extra((AtisVerificationBody, GppVerificationBody)),
    responses={
        200: {
            "description": "verification result",
            "content": _json_content(AtisVerificationResponse, GppVerificationResponse),
        },
        **_errors(400, 401, 403, 406, 413, 415, 503),
    },
)
async def verification(request: Request) -> JSONResponse:
    state: ServiceState = get_state(request)
    if not state.config.open_verification:
        authorize(state.keyring, request.headers.get("authorization"), Scope.VERIFY)
    flavour = _flavour(request)
    metrics: ApiMetrics = request.app.state.metrics
    body = await read_json_object(request, state.config.max_body_bytes)
    core, shape, request_id = _verification_input(_member(body, "verificationRequest"))
    at = datetime.fromtimestamp(state.config.clock(), UTC)
    started = time.perf_counter()
    loop = asyncio.get_running_loop()
    result = await loop.run_in_executor(state.executor, partial(state.verifier.verify, core, at=at))
    metrics.verification_latency.observe(time.perf_counter() - started)
    reason = result.reason.value if result.reason else "none"
    metrics.verifications.labels(result.verstat.value, reason).inc()
    if (flavour or shape) is Flavour.GPP:
        return JSONResponse(gpp_verification(result, request_id))
    return JSONResponse(atis_verification(result))


@router.post(
    "/signing",
    summary="Sign a SHAKEN or div PASSporT (STI-AS)",
    description="Returns the Identity header value. Needs an API key with the sign scope and "
    "a server started with --signing-key and --signing-x5u. The response shape is 3GPP "
    "(``identityHeader``) when the request carries requestId or profileId, or when "
    "``?flavour=3gpp`` asks for it.",
    response_class=JSONResponse,
    openapi_extra=_operation_extra(SigningBody),
    responses={
        200: {
            "description": "the signed Identity header value",
            "content": _json_content(AtisSigningResponse, GppSigningResponse),
        },
        **_errors(400, 401, 403, 406, 413, 415, 503),
    },
)
async def signing(request: Request) -> JSONResponse:
    state: ServiceState = get_state(request)
    authorize(state.keyring, request.headers.get("authorization"), Scope.SIGN)
    flavour = _flavour(request)
    metrics: ApiMetrics = request.app.state.metrics
    signer = state.signer
    if signer is None:
        raise ApiError(ErrorCode.SIGNING_UNAVAILABLE)
    body = await read_json_object(request, state.config.max_body_bytes)
    inner = _member(body, "signingRequest")
    for name in UNSUPPORTED_SIGNING_MEMBERS:
        if name in inner:
            raise ApiError(
                ErrorCode.INVALID_PARAMETER, f"signingRequest.{name}", "not signed by this server"
            )
    model = validate(SigningRequest, inner, "signingRequest")
    iat = model.iat if model.iat is not None else int(state.config.clock())
    origid = model.origid
    if origid is None and model.ppt == "shaken":
        origid = str(uuid.uuid4())  # RFC 8588 section 5: a UUID chosen by the signer
    try:
        payload = signing_payload(
            ppt=model.ppt,
            attest=model.attest,
            orig=model.orig.to_core(),
            dest=model.dest.to_core(),
            iat=iat,
            origid=origid,
            div=model.div.to_core() if model.div is not None else None,
        )
        token = sign_passport(signer.key, x5u=signer.x5u, payload=payload, ppt=model.ppt)
        value = identity_header_value(token, x5u=signer.x5u, ppt=model.ppt)
    except AtisError as exc:
        metrics.signings.labels("rejected").inc()
        raise ApiError(ErrorCode.INVALID_PARAMETER, exc.parameter, _short(exc.detail)) from None
    except ValueError as exc:
        metrics.signings.labels("rejected").inc()
        raise ApiError(ErrorCode.INVALID_PARAMETER, "signingRequest", _short(str(exc))) from None
    metrics.signings.labels("signed").inc()
    shape = Flavour.GPP if GPP_SIGNING_MEMBERS & inner.keys() else Flavour.ATIS
    return JSONResponse(signing_response(value, flavour or shape, model.requestId))
