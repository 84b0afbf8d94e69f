"""HTTP error bodies: every error is JSON with a stable ``code``, never a stack trace.

Body shape (our reading of ATIS-1000082: OMA REST ``requestError``, which STANDARDS.md section
8.4 marks unconfirmed): ``{"requestError": {"serviceException": {"messageId": "SVC4001",
"text": "...", "variables": [...], "code": "missing_parameter"}}}``. ``messageId`` SVC4000 to
SVC4004 are the ATIS ones; errors outside that list use the OMA generic ids (SVC0001 service
error, POL0001 policy error: authentication and authorisation). ``code`` is ours and stable.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.api.models import ErrorBody, ExceptionDetail, RequestError

log = logging.getLogger("stirscope.api")


class ErrorCode(StrEnum):
    """Stable error codes (never rename one: clients match on them)."""

    MISSING_BODY = "missing_body"
    MISSING_PARAMETER = "missing_parameter"
    UNSUPPORTED_RESPONSE_TYPE = "unsupported_response_type"
    PARSE_FAILURE = "parse_failure"
    INVALID_PARAMETER = "invalid_parameter"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    SIGNING_UNAVAILABLE = "signing_unavailable"
    NOT_READY = "not_ready"
    INTERNAL_ERROR = "internal_error"
    NOT_A_CAPTURE = "not_a_capture"
    JOB_NOT_DONE = "job_not_done"
    JOBS_UNAVAILABLE = "jobs_unavailable"


class ExceptionKind(StrEnum):
    SERVICE = "serviceException"
    POLICY = "policyException"


@dataclass(frozen=True, slots=True)
class ErrorSpec:
    """HTTP status, OMA message id, exception kind and text template of one error code."""

    status: int
    message_id: str
    kind: ExceptionKind
    text: str


# ATIS-1000082 section 8.2.4.6 status codes and SVC400x ids as read in STANDARDS.md 8.4.
ERRORS: dict[ErrorCode, ErrorSpec] = {
    ErrorCode.MISSING_BODY: ErrorSpec(
        400, "SVC4000", ExceptionKind.SERVICE, "Missing request body"
    ),
    ErrorCode.MISSING_PARAMETER: ErrorSpec(
        400, "SVC4001", ExceptionKind.SERVICE, "Missing mandatory parameter: %1"
    ),
    ErrorCode.UNSUPPORTED_RESPONSE_TYPE: ErrorSpec(
        406, "SVC4002", ExceptionKind.SERVICE, "Requested response body type %1 is not supported"
    ),
    ErrorCode.PARSE_FAILURE: ErrorSpec(
        400, "SVC4003", ExceptionKind.SERVICE, "Failed to parse message body: %1"
    ),
    ErrorCode.INVALID_PARAMETER: ErrorSpec(
        400, "SVC4004", ExceptionKind.SERVICE, "Invalid parameter value: %1 (%2)"
    ),
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: ErrorSpec(
        415, "SVC4003", ExceptionKind.SERVICE, "Unsupported request body type %1"
    ),
    ErrorCode.PAYLOAD_TOO_LARGE: ErrorSpec(
        413, "SVC0001", ExceptionKind.SERVICE, "Request body larger than %1 bytes"
    ),
    ErrorCode.UNAUTHORIZED: ErrorSpec(
        401, "POL0001", ExceptionKind.POLICY, "A valid API key is required (%1)"
    ),
    ErrorCode.FORBIDDEN: ErrorSpec(403, "POL0001", ExceptionKind.POLICY, "API key %1 may not %2"),
    ErrorCode.NOT_FOUND: ErrorSpec(404, "SVC0001", ExceptionKind.SERVICE, "No resource at %1"),
    ErrorCode.METHOD_NOT_ALLOWED: ErrorSpec(
        405, "SVC0001", ExceptionKind.SERVICE, "Method %1 not allowed here"
    ),
    ErrorCode.SIGNING_UNAVAILABLE: ErrorSpec(
        503, "SVC0001", ExceptionKind.SERVICE, "Signing is not configured on this server"
    ),
    ErrorCode.NOT_READY: ErrorSpec(503, "SVC0001", ExceptionKind.SERVICE, "Service not ready"),
    ErrorCode.INTERNAL_ERROR: ErrorSpec(
        500, "SVC0001", ExceptionKind.SERVICE, "Internal error (reference %1)"
    ),
    # Analysis jobs (not ATIS: OMA generic service error ids).
    ErrorCode.NOT_A_CAPTURE: ErrorSpec(
        415, "SVC0001", ExceptionKind.SERVICE, "%1 is not a pcap or pcapng capture (%2)"
    ),
    ErrorCode.JOB_NOT_DONE: ErrorSpec(
        409, "SVC0001", ExceptionKind.SERVICE, "Job %1 is %2, not done"
    ),
    ErrorCode.JOBS_UNAVAILABLE: ErrorSpec(
        503, "SVC0001", ExceptionKind.SERVICE, "Analysis jobs are not enabled on this server"
    ),
}


class ApiError(Exception):
    """An error answered as JSON: ``code`` picks the status, id and text; ``variables`` fill
    the text's ``%1``, ``%2`` (OMA REST NetAPI common, section 5.2)."""

    def __init__(
        self,
        code: ErrorCode,
        *variables: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{code.value}: {', '.join(variables)}")
        self.code = code
        self.variables = variables
        self.headers = headers or {}

    @property
    def status(self) -> int:
        return ERRORS[self.code].status


def error_body(code: ErrorCode, variables: Sequence[str]) -> dict[str, object]:
    """The JSON body for an error (the ``ErrorBody`` model, as a dict)."""
    spec = ERRORS[code]
    text = spec.text
    for position, value in enumerate(variables, 1):
        text = text.replace(f"%{position}", value)
    detail = ExceptionDetail(
        messageId=spec.message_id, text=text, variables=list(variables), code=code.value
    )
    if spec.kind is ExceptionKind.POLICY:
        wrapper = RequestError(policyException=detail)
    else:
        wrapper = RequestError(serviceException=detail)
    return ErrorBody(requestError=wrapper).model_dump(exclude_none=True)


def error_response(
    code: ErrorCode, *variables: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(
        error_body(code, variables), status_code=ERRORS[code].status, headers=headers
    )


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.code, *exc.variables, headers=exc.headers)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    headers = dict(exc.headers) if exc.headers else None
    if exc.status_code == 404:
        return error_response(ErrorCode.NOT_FOUND, request.url.path, headers=headers)
    if exc.status_code == 405:
        return error_response(ErrorCode.METHOD_NOT_ALLOWED, request.method, headers=headers)
    if exc.status_code == 413:
        return error_response(ErrorCode.PAYLOAD_TOO_LARGE, "the limit", headers=headers)
    if exc.status_code == 415:
        return error_response(ErrorCode.UNSUPPORTED_MEDIA_TYPE, "given", headers=headers)
    if exc.status_code == 401:
        return error_response(ErrorCode.UNAUTHORIZED, "bearer token", headers=headers)
    if exc.status_code == 403:
        return error_response(ErrorCode.FORBIDDEN, "given", "do this", headers=headers)
    # Any other framework 4xx is a malformed request as far as the client is concerned.
    return error_response(ErrorCode.PARSE_FAILURE, str(exc.detail), headers=headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    first = errors[0] if errors else {}
    where = ".".join(str(p) for p in first.get("loc", ()))
    if first.get("type") == "missing":
        return error_response(ErrorCode.MISSING_PARAMETER, where)
    return error_response(ErrorCode.INVALID_PARAMETER, where, str(first.get("msg", "invalid")))


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    reference = str(getattr(request.state, "request_id", "")) or "unknown"
    log.error(
        "unhandled error",
        exc_info=(type(exc), exc, exc.__traceback__),
        extra={"path": request.url.path, "reference": reference},
    )
    return error_response(ErrorCode.INTERNAL_ERROR, reference)


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that turn every failure into an ``ErrorBody``."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(Exception, _unexpected)
