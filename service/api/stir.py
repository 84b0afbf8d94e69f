"""``POST /stir/v1/verification`` and ``POST /stir/v1/signing`` (ATIS-1000082, 3GPP flavour).

The request body is read and checked here rather than by FastAPI's body binding, so that each
failure has its ATIS answer: no body (SVC4000), not JSON (415), too large (413), unparseable
(SVC4003), a missing member (SVC4001) or a bad value (SVC4004). The input flavour is told by
its members (``identityHeader[s]`` is 3GPP); the response follows it unless ``?flavour=`` asks
otherwise. Verification is judged as of the server clock. It runs on the event loop when every
certificate and CRL it needs is cached (CPU only: ``service.loop_source``), else in the thread
pool (a certificate fetch must never block the event loop). STANDARDS.md section 8.

Verification is the hot endpoint: FastAPI documents it from its declaration, but the route
answers it as a plain ASGI app (``serve_verification``): no Request object, dependency
injection, response model or exception-handler round trip on the way, which together cost
several times the JSON mapping. Signing is rare and stays an ordinary FastAPI endpoint; both
share the body, flavour and error handling below.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from functools import partial
from json.scanner import make_scanner
from typing import Any, NamedTuple, TypeVar
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from pydantic.json_schema import JsonSchemaMode
from starlette import types as asgi
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect

from analyzer.atis import AtisError, signing_payload, verification_request
from service.api.auth import Scope, authorize
from service.api.errors import ApiError, ErrorCode, error_response
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
    plain_atis_request,
    signing_response,
)
from service.api.state import ServiceState, app_state, get_state
from service.loop_source import Verify, WouldBlock
from shaken.result import VerificationResult
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


def _flavour(query_string: bytes) -> Flavour | None:
    """The ``flavour`` query parameter (the last one, as Starlette's ``query_params`` reads it)."""
    if not query_string:
        return None
    value = None
    for name, given in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
        if name == "flavour":
            value = given
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


async def read_body(receive: asgi.Receive, limit: int) -> bytes:
    """The whole request body, counted as it arrives (a chunked body declares no length): more
    than ``limit`` bytes is 413. ``ClientDisconnect`` when the client leaves first."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise ApiError(ErrorCode.PAYLOAD_TOO_LARGE, str(limit))
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


# Accept values that ``_accepts_json`` admits at once (one media range, no parameters): most
# clients send one of these, and its parse is most of the cost of the check.
_JSON_ACCEPTS = frozenset({"application/json", "*/*", "application/*"})


def check_json_request(headers: Mapping[str, str], limit: int) -> None:
    """What the headers alone tell is wrong with a JSON request: a response type the client
    does not accept (406) or a declared body over ``limit`` bytes (413)."""
    accept = headers.get("accept")
    if accept not in _JSON_ACCEPTS and not _accepts_json(accept):
        raise ApiError(ErrorCode.UNSUPPORTED_RESPONSE_TYPE, accept or "")
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(ErrorCode.PAYLOAD_TOO_LARGE, str(limit))


async def read_json_object(
    headers: Mapping[str, str], receive: asgi.Receive, limit: int
) -> dict[str, Any]:
    """The request body as a JSON object, or the ATIS error for what is wrong with it."""
    check_json_request(headers, limit)
    return json_object(await read_body(receive, limit), headers.get("content-type", ""))


def json_object(body: bytes, content_type: str) -> dict[str, Any]:
    """A request body (declared as ``content_type``) as a JSON object, or the ATIS error."""
    if not body.strip():
        raise ApiError(ErrorCode.MISSING_BODY)
    media = content_type.split(";")[0].strip().lower()
    if media != "application/json" and not (
        media.startswith("application/") and media.endswith("+json")
    ):
        raise ApiError(ErrorCode.UNSUPPORTED_MEDIA_TYPE, content_type or "(none)")
    try:
        data = _loads(body)
    except (ValueError, RecursionError) as exc:
        raise ApiError(ErrorCode.PARSE_FAILURE, _short(str(exc))) from None
    if not isinstance(data, dict):
        raise ApiError(ErrorCode.PARSE_FAILURE, "the body is not a JSON object")
    return data


# ``json.loads`` of bytes is four Python calls around the C scanner (detect the encoding,
# decode, skip white space, scan); ``_loads`` calls a scanner made as the default decoder's.
_SCAN = make_scanner(json.decoder.JSONDecoder())  # type: ignore[arg-type]  # stub: a scanner
# The white space ``json.loads`` allows around the value (RFC 8259 section 2).
_JSON_SPACE = " \t\n\r"


def _loads(body: bytes) -> Any:
    """``json.loads(body)``. A body that opens with ``{`` (no BOM, two non-NUL first bytes:
    ``json.detect_encoding`` says UTF-8) whose text is one JSON value and white space is
    scanned here; anything else, or any error, goes to ``json.loads`` (its value, its error)."""
    if body[:1] == b"{" and body[1:2] not in (b"", b"\x00"):
        try:
            text = body.decode("utf-8", "surrogatepass")
            value, end = _SCAN(text, 0)
        except (ValueError, StopIteration, RecursionError):
            pass
        else:
            if end == len(text) or not text[end:].strip(_JSON_SPACE):
                return value
    return json.loads(body)


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


def verification_input(
    body: Mapping[str, Any],
) -> tuple[VerificationRequest, Flavour, str | None]:
    """The verifier's request from a verification body, its flavour and (3GPP) requestId; the
    ATIS error for a missing or invalid member. STANDARDS.md section 8.2-8.3."""
    prefix = "verificationRequest"
    inner = _member(body, prefix)
    try:
        if not GPP_VERIFICATION_MEMBERS.isdisjoint(inner):
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
        plain = plain_atis_request(inner)
        if plain is None:  # the model validates it (and words any error)
            atis = validate(AtisVerificationRequest, inner, prefix)
            plain = (atis.from_.to_core(), atis.to.to_core(), atis.time, atis.identity)
        orig, to, time, identity = plain
        core = verification_request(identities=[identity], orig=orig, to=to, time=time)
        return core, Flavour.ATIS, None
    except AtisError as exc:
        raise ApiError(ErrorCode.INVALID_PARAMETER, exc.parameter, _short(exc.detail)) from None


# Response bodies as Starlette's JSONResponse renders them (compact, UTF-8, no NaN); the encoder
# is built once (``json.dumps`` with options builds one per call).
_JSON = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
# How ``_JSON`` writes a string (its C encoder calls the same function, keys included).
_JSON_STRING: Callable[[str], str] = json.encoder.encode_basestring


def _flat_json(body: Mapping[str, object]) -> str | None:
    """``_JSON.encode(body)`` for ``{name: {member: value...}}`` whose values are all ``str`` or
    ``int`` (the ATIS response), written without the encoder's generic walk (a third of the
    body's cost); None for anything else."""
    ((name, members),) = body.items()
    if type(members) is not dict:
        return None
    parts = []
    for key, value in members.items():
        kind = type(value)
        if kind is str:
            parts.append(f"{_JSON_STRING(key)}:{_JSON_STRING(value)}")
        elif kind is int:  # not bool, which the encoder writes as true/false
            parts.append(f"{_JSON_STRING(key)}:{int.__repr__(value)}")
        else:
            return None
    return f"{{{_JSON_STRING(name)}:{{{','.join(parts)}}}}}"


def verification_json(
    result: VerificationResult, flavour: Flavour, request_id: str | None
) -> bytes:
    """The response body for ``result`` in ``flavour`` (STANDARDS.md section 8.3)."""
    if flavour is Flavour.GPP:
        return _JSON.encode(gpp_verification(result, request_id)).encode("utf-8")
    body = atis_verification(result)
    text = _flat_json(body)
    return (_JSON.encode(body) if text is None else text).encode("utf-8")


# The request headers the verification route reads (lower case, as ASGI servers give them).
READ_HEADERS = frozenset({b"accept", b"authorization", b"content-length", b"content-type"})


def request_headers(scope: asgi.Scope, names: frozenset[bytes] = READ_HEADERS) -> dict[str, str]:
    """The headers in ``names`` (by default those the route reads), the first of each (as
    ``Headers.get`` reads them), decoded as Latin-1; the others are not decoded at all."""
    found: dict[str, str] = {}
    for name, value in scope["headers"]:
        if name in names:
            found.setdefault(name.decode("latin-1"), value.decode("latin-1"))
    return found


async def serve_verification(scope: asgi.Scope, receive: asgi.Receive, send: asgi.Send) -> None:
    """``POST /stir/v1/verification`` as a plain ASGI app. ``ApiError`` is answered here with
    the body the exception handlers give it; anything else propagates to them (500)."""
    try:
        content = await _verification(scope["app"], request_headers(scope), scope, receive)
    except ApiError as exc:
        await error_response(exc.code, *exc.variables, headers=exc.headers)(scope, receive, send)
        return
    except ClientDisconnect:
        return  # nobody left to answer
    headers = [
        (b"content-length", str(len(content)).encode("latin-1")),
        (b"content-type", b"application/json"),
    ]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": content})


# Set in a request's scope by the direct path (``service.api.hotpath``) when it found that the
# verification needs a certificate or CRL fetched: the ASGI path then goes to the pool at once.
COLD_SCOPE_KEY = "stirscope.cold"


def _preamble(state: ServiceState, headers: Mapping[str, str], scope: asgi.Scope) -> Flavour | None:
    """The checks before the body, in the order their errors take precedence: the API key,
    the ``flavour`` query, the media types and the declared length. The asked flavour."""
    config = state.config
    if not config.open_verification:
        authorize(state.keyring, headers.get("authorization"), Scope.VERIFY)
    query = scope.get("query_string", b"")
    flavour = _flavour(query) if query else None
    check_json_request(headers, config.max_body_bytes)
    return flavour


def verification_answer(
    metrics: ApiMetrics,
    result: VerificationResult,
    seconds: float,
    flavour: Flavour,
    request_id: str | None,
) -> bytes:
    """The 200 body for ``result``, counted in ``metrics`` (``seconds``: the verifier's time)."""
    reason = result.reason
    # ``_value_`` is what ``Enum.value`` returns, without the two calls of that property.
    metrics.count_verification(
        result.verstat._value_, reason._value_ if reason else "none", seconds
    )
    return verification_json(result, flavour, request_id)


async def _verification(
    app: Starlette, headers: Mapping[str, str], scope: asgi.Scope, receive: asgi.Receive
) -> bytes:
    state = app_state(app)
    flavour = _preamble(state, headers, scope)
    limit = state.config.max_body_bytes
    body = json_object(await read_body(receive, limit), headers.get("content-type", ""))
    core, shape, request_id = verification_input(body)
    at = verification_time(state)
    started = time.perf_counter()
    if state.verify_cached is None or scope.get(COLD_SCOPE_KEY):
        result = await _verify_in_pool(state, core, at)
    else:
        try:
            result = state.verify_cached(core, at)
        except WouldBlock:  # a certificate or CRL to fetch first
            result = await _verify_in_pool(state, core, at)
    seconds = time.perf_counter() - started
    return verification_answer(app.state.metrics, result, seconds, flavour or shape, request_id)


class PreparedVerification(NamedTuple):
    """A verification request past the route's checks: what the verifier and the answer need."""

    state: ServiceState
    verify: Verify  # ``state.verify_cached``
    request: VerificationRequest
    flavour: Flavour
    request_id: str | None


def prepare_verification(
    app: Starlette, headers: Mapping[str, str], scope: asgi.Scope, body: bytes
) -> PreparedVerification | None:
    """The verification route's checks, in the same order as the ASGI path (``ApiError`` for
    the first that fails), and the verifier's input, for a request whose body has been read;
    None when the server verifies in the pool only (the ASGI path then does it all). The
    verification itself is ``verify(request, at)`` (``WouldBlock`` when a
    certificate or CRL must be fetched first, which must not happen on the event loop), its
    answer ``verification_answer``: ``service.api.hotpath`` runs each step for every request
    of an event-loop turn in turn."""
    state = app_state(app)
    verify = state.verify_cached
    if verify is None:
        return None  # before any work: the ASGI path would do it all again
    flavour = _preamble(state, headers, scope)
    limit = state.config.max_body_bytes
    if len(body) > limit:
        raise ApiError(ErrorCode.PAYLOAD_TOO_LARGE, str(limit))
    core, shape, request_id = verification_input(json_object(body, headers.get("content-type", "")))
    return PreparedVerification(state, verify, core, flavour or shape, request_id)


def verification_time(state: ServiceState) -> datetime:
    """The server's clock now, as the verifier judges freshness against it."""
    return datetime.fromtimestamp(state.config.clock(), UTC)


async def _verify_in_pool(
    state: ServiceState, core: VerificationRequest, at: datetime
) -> VerificationResult:
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(state.executor, partial(state.verifier.verify, core, at=at))


class _VerificationRoute(APIRoute):
    """The verification route: FastAPI documents it (and answers a wrong method with 405), but
    ``serve_verification`` answers it."""

    async def handle(self, scope: asgi.Scope, receive: asgi.Receive, send: asgi.Send) -> None:
        if scope["method"] not in (self.methods or ()):
            await super().handle(scope, receive, send)
            return
        await serve_verification(scope, receive, send)


def direct_routes() -> list[APIRoute]:
    """The routes ``service.api.direct.DirectRoutes`` may serve without the router's search."""
    return [route for route in router.routes if isinstance(route, _VerificationRoute)]


async def verification(request: Request) -> Response:
    """The route's endpoint for FastAPI (its OpenAPI operation; the body and the flavour query
    are declared in ``openapi_extra``). ``_VerificationRoute.handle`` answers POSTs without
    FastAPI's request machinery (``serve_verification``); through that machinery this gives
    the same answer, which the tests check."""
    content = await _verification(request.app, request.headers, request.scope, request.receive)
    return Response(content, media_type="application/json")


router.add_api_route(
    "/verification",
    verification,
    methods=["POST"],
    route_class_override=_VerificationRoute,
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
    flavour = _flavour(request.scope.get("query_string", b""))
    metrics: ApiMetrics = request.app.state.metrics
    signer = state.signer
    if signer is None:
        raise ApiError(ErrorCode.SIGNING_UNAVAILABLE)
    body = await read_json_object(request.headers, request.receive, state.config.max_body_bytes)
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
