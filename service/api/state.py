"""What the lifespan builds once per process and every request reads: verifier, keys, signer."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric import ec
from fastapi import Request
from starlette.applications import Starlette

from service.api.auth import KeyRing
from service.api.errors import ApiError, ErrorCode
from service.config import ServeConfig
from service.loop_source import Verify
from shaken.verifier import Verifier

# Threads verifying at once per process: the verifications that need a certificate or CRL
# fetched (warm ones run on the event loop), which mostly wait on the fetch (bounded by the
# HTTP source's timeout), so 16 covers a burst of misses.
VERIFY_THREADS = 16
# The attribute of ``app.state`` that holds the ``ServiceState`` once the lifespan built it.
STATE_ATTRIBUTE = "stirscope"


@dataclass(frozen=True, slots=True)
class Signer:
    """The STI-AS credential: the private key (never serialised, never shown) and its x5u.

    RFC 8224 section 6.1; RFC 8225 section 4.3 (x5u).
    """

    key: ec.EllipticCurvePrivateKey = field(repr=False)
    x5u: str


@dataclass(slots=True)
class ServiceState:
    """Per-process service state; ``ready`` is cleared when shutdown begins.

    ``verify_cached`` is the verifier in cache-only mode (``service.loop_source``): it runs on
    the event loop and raises ``WouldBlock`` when a certificate or CRL must be fetched, which
    ``executor`` then does; None when the certificate source cannot tell (a shared cache).
    """

    config: ServeConfig
    verifier: Verifier
    keyring: KeyRing
    signer: Signer | None
    executor: ThreadPoolExecutor
    verify_cached: Verify | None = None
    ready: bool = True


def get_state(request: Request) -> ServiceState:
    """The state built by the lifespan (503 ``not_ready`` before it exists or after shutdown)."""
    return app_state(request.app)


def app_state(app: Starlette) -> ServiceState:
    """``get_state`` for a plain ASGI route, which has the app (``scope["app"]``), no Request.
    Read where Starlette's ``State`` keeps its attributes (a dict) when it does: ``getattr`` on
    a ``State`` reaches its ``__getattr__`` only after the ordinary lookup has failed, an
    exception raised and caught, and this runs on every request."""
    stored = vars(app.state).get("_state")
    if type(stored) is dict:
        state = stored.get(STATE_ATTRIBUTE)
    else:
        state = getattr(app.state, STATE_ATTRIBUTE, None)
    if not isinstance(state, ServiceState) or not state.ready:
        raise ApiError(ErrorCode.NOT_READY)
    return state
