"""The FastAPI application factory: ``create_app(config)``; nothing is built at import time.

The lifespan builds, once per process, the trust store, certificate source and verifier (the
same ``build_verifier`` as the CLI, so policy and cache behave alike; over a ``LoopSafeSource``
so that warm verifications can run on the event loop), the API key ring and the
signer, and closes the verifier on shutdown (after in-flight requests finished: uvicorn waits
for them before running the lifespan's exit). One router per resource: add new ones (jobs,
calls, web UI) with ``app.include_router`` in ``create_app``. With a results store configured
(``config.db``) it also opens the store and starts the analysis job workers (``service.worker``),
and stops them on shutdown, before the store is closed.
"""

from __future__ import annotations

import gc
import json
import logging
import os
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic.json_schema import models_json_schema
from starlette.concurrency import run_in_threadpool

from analyzer.verifying import build_verifier
from analyzer.version import __version__
from service.api import jobs, jobs_data, ops, stir
from service.api.auth import KeyRing
from service.api.direct import DirectRoutes
from service.api.errors import install_error_handlers
from service.api.hotpath import HOT_ATTRIBUTE, HotVerification
from service.api.metrics import ApiMetrics, ObservabilityMiddleware, Observer
from service.api.state import STATE_ATTRIBUTE, VERIFY_THREADS, ServiceState, Signer
from service.config import (
    ServeConfig,
    config_from_settings,
    load_signing_key,
)
from service.loop_source import loop_safe, verify_functions
from service.web import routes as web

log = logging.getLogger("stirscope.api")

# The environment variable through which ``stirscope serve --workers N`` hands the merged
# settings (JSON) to each worker process (internal; not a user setting).
WORKER_SETTINGS_ENV = "STIRSCOPE_INTERNAL_SERVE_SETTINGS"

TITLE = "stirscope verification and signing service"
DESCRIPTION = (
    "STIR/SHAKEN verification (STI-VS) and signing (STI-AS) over HTTP, in the ATIS-1000082 "
    "and 3GPP request/response shapes, plus operations endpoints. Error bodies follow the OMA "
    "REST `requestError` pattern with SVC4000-SVC4004 message ids (our reading of "
    "ATIS-1000082) and a stable `code`."
)


def build_state(config: ServeConfig) -> ServiceState:
    """Verifier, key ring and signer for one process (raises on unusable configuration)."""
    keyring = KeyRing.load(config.api_keys, config.api_key_hashes)
    signer = None
    if config.signing_key is not None and config.signing_x5u is not None:
        signer = Signer(load_signing_key(config.signing_key), config.signing_x5u)
    verifier = loop_safe(build_verifier(config.verifier, clock=config.clock), clock=config.clock)
    _, verify_cached = verify_functions(verifier)
    executor = ThreadPoolExecutor(VERIFY_THREADS, thread_name_prefix="stirscope-verify")
    return ServiceState(
        config=config,
        verifier=verifier,
        keyring=keyring,
        signer=signer,
        executor=executor,
        verify_cached=verify_cached,
    )


def create_app(config: ServeConfig) -> FastAPI:
    """The service app for ``config``; its lifespan builds the verifier (nothing here does I/O)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = build_state(config)
        metrics.watch(state.verifier)
        try:
            # Store migrations and the job workers' recovery sweep are blocking I/O.
            jobs_context = await run_in_threadpool(jobs_data.open_jobs, config)
        except BaseException:
            state.executor.shutdown(wait=True)
            state.verifier.close()
            raise
        if jobs_context is not None:
            setattr(app.state, jobs_data.JOBS_ATTRIBUTE, jobs_context)
            pool, store = jobs_context.pool, jobs_context.store
            metrics.watch_jobs(
                (lambda: {str(k): v for k, v in pool.outcomes.items()}) if pool else None,
                lambda: {str(k): v for k, v in store.count_jobs().items()},
            )
        setattr(app.state, STATE_ATTRIBUTE, state)
        # What start-up built (the app, its schemas, the verifier, the trust store) lives as
        # long as the process: out of the collector's reach, so that the full collections a
        # busy server's allocations trigger do not walk it on every pass (as `listen` does).
        gc.collect()
        gc.freeze()
        log.info(
            "service ready",
            extra={
                "api_keys": len(state.keyring),
                "open_verification": config.open_verification,
                "signing": state.signer is not None,
                "trust": [str(p) for p in config.verifier.trust],
            },
        )
        try:
            yield
        finally:
            gc.unfreeze()
            state.ready = False
            metrics.watch(None)
            metrics.watch_jobs(None, None)
            if jobs_context is not None:
                # Running jobs go back to the queue; then the store is closed.
                await run_in_threadpool(jobs_data.close_jobs, jobs_context)
                delattr(app.state, jobs_data.JOBS_ATTRIBUTE)
            state.executor.shutdown(wait=True)
            state.verifier.close()
            log.info("service stopped")

    metrics = ApiMetrics()
    app = FastAPI(
        title=TITLE,
        description=DESCRIPTION,
        version=__version__,
        lifespan=lifespan,
        # The document is served at /openapi.json; no Swagger/ReDoc pages (they load their
        # JavaScript from a CDN, which a carrier's network should not be asked to reach).
        docs_url=None,
        redoc_url=None,
    )
    app.state.metrics = metrics
    observer = Observer(metrics, access=config.access_log)
    install_error_handlers(app)
    app.include_router(ops.router)
    app.include_router(stir.router)
    app.include_router(jobs.router)
    app.include_router(web.router)
    # Outermost last: the observability middleware sees every request, the direct routes too.
    app.add_middleware(DirectRoutes, routes=stir.direct_routes())
    # The verification route answered inside the HTTP protocol (service.api.protocol).
    (verification_route,) = stir.direct_routes()
    setattr(
        app.state,
        HOT_ATTRIBUTE,
        HotVerification(app, verification_route, observer, max_body_bytes=config.max_body_bytes),
    )
    app.add_middleware(ObservabilityMiddleware, observer=observer)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = openapi_schema(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def openapi_schema(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document plus the schemas the STIR routes reference by hand."""
    document = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
    )
    _, extra = models_json_schema(
        list(stir.SCHEMA_MODELS), ref_template="#/components/schemas/{model}"
    )
    components = document.setdefault("components", {})
    components["securitySchemes"] = stir.SECURITY_SCHEMES
    schemas = components.setdefault("schemas", {})
    for name, schema in extra.get("$defs", {}).items():
        schemas.setdefault(name, schema)
    # Request validation errors are answered 400 with an ErrorBody (service.api.errors), never
    # FastAPI's 422: drop what FastAPI documents for it.
    for path in document["paths"].values():
        for operation in path.values():
            operation.get("responses", {}).pop("422", None)
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    document["components"]["schemas"] = dict(sorted(schemas.items()))
    return document


def openapi_document() -> dict[str, Any]:
    """The OpenAPI document of the service (independent of any deployment's settings)."""
    from analyzer.verifying import VerifierConfig

    app = create_app(ServeConfig(verifier=VerifierConfig(trust=())))
    return app.openapi()


def openapi_json() -> str:
    """The committed ``openapi.json`` text (sorted keys, two-space indent, final newline)."""
    return json.dumps(openapi_document(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def create_app_from_environment() -> FastAPI:
    """uvicorn factory for worker processes: settings from ``WORKER_SETTINGS_ENV``."""
    settings = json.loads(os.environ[WORKER_SETTINGS_ENV])
    return create_app(config_from_settings(settings))
