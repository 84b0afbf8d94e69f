"""Operations endpoints: liveness, readiness and Prometheus metrics (no API key needed)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from analyzer.version import __version__
from service.api.errors import ErrorCode, error_response
from service.api.metrics import ApiMetrics
from service.api.models import ErrorBody, Health, Readiness
from service.api.state import STATE_ATTRIBUTE, ServiceState

router = APIRouter(tags=["operations"])


@router.get("/healthz", response_model=Health, summary="Liveness: the process answers")
async def healthz() -> JSONResponse:
    return JSONResponse(Health().model_dump())


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="Readiness: trust store, certificate source and verifier are built",
    responses={503: {"model": ErrorBody, "description": "not ready (starting or stopping)"}},
)
async def readyz(request: Request) -> JSONResponse:
    state = getattr(request.app.state, STATE_ATTRIBUTE, None)
    if not isinstance(state, ServiceState) or not state.ready:
        return error_response(ErrorCode.NOT_READY)
    body = Readiness(status="ready", signing=state.signer is not None, version=__version__)
    return JSONResponse(body.model_dump())


@router.get(
    "/metrics",
    summary="Prometheus metrics (text exposition format)",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
)
async def metrics(request: Request) -> Response:
    registry: ApiMetrics = request.app.state.metrics
    return Response(generate_latest(registry.registry), media_type=CONTENT_TYPE_LATEST)
