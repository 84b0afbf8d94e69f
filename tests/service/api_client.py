"""Test support for the HTTP service: configurations over the fixture PKI, an in-process client
(the app's lifespan runs, requests go through httpx's ASGI transport, calls are synchronous),
and the fixture calls as ATIS/3GPP request values."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
from anyio.from_thread import BlockingPortal, start_blocking_portal
from fastapi import FastAPI

from analyzer.verifying import VerifierConfig
from service.api.app import create_app
from service.api.auth import hash_api_key
from service.config import ServeConfig
from sip import Request, parse_message
from tests.conftest import FIXTURES

# The fixture calls are signed for this instant (fixtures/README.md): 2026-01-15T12:00:00Z.
CALL_TIME = 1_768_478_400
TRUST = FIXTURES / "pki" / "trust"
CERTS = FIXTURES / "certs"
ALPHA_KEY = FIXTURES / "pki" / "keys" / "alpha.key.pem"
ALPHA_X5U = "https://certs.alpha.example/alpha.pem"
# Test API keys: name -> (key, scopes).
KEYS = {
    "carrier": ("carrier-key-0123456789abcdefghijklmnop", "verify+sign"),
    "verifier": ("verifier-key-0123456789abcdefghijklmnop", "verify"),
    "signer": ("signer-key-0123456789abcdefghijklmnop", "sign"),
}


def bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {KEYS[name][0]}"}


def write_keys(directory: Path) -> Path:
    path = directory / "api-keys"
    lines = [f"{name}:{hash_api_key(key)}:{scopes}" for name, (key, scopes) in KEYS.items()]
    path.write_text("# test keys\n" + "\n".join(lines) + "\n", encoding="utf-8")
    return path


def private_copy(source: Path, directory: Path, mode: int = 0o600) -> Path:
    """A copy of a fixture key with the given mode (git checkouts leave keys 0644)."""
    target = directory / source.name
    shutil.copyfile(source, target)
    os.chmod(target, mode)
    return target


def fixed_clock(at: float) -> Callable[[], float]:
    return lambda: at


def make_config(
    directory: Path,
    *,
    at: float = CALL_TIME + 5,
    signing: bool = True,
    open_verification: bool = False,
    **overrides: Any,
) -> ServeConfig:
    """A configuration over the fixture PKI, keys in ``directory``, clock fixed at ``at``."""
    fields: dict[str, Any] = {
        "verifier": VerifierConfig(trust=(TRUST,), certs_dirs=(CERTS,)),
        "api_keys": write_keys(directory),
        "open_verification": open_verification,
        "clock": fixed_clock(at),
        "access_log": False,
    }
    if signing:
        fields["signing_key"] = private_copy(ALPHA_KEY, directory)
        fields["signing_x5u"] = ALPHA_X5U
    fields.update(overrides)
    return ServeConfig(**fields)


class ApiClient:
    """Synchronous calls into an app running in a blocking portal's event loop."""

    def __init__(self, app: FastAPI, portal: BlockingPortal, client: httpx.AsyncClient) -> None:
        self.app = app
        self._portal = portal
        self._client = client

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        call = partial(self._client.request, method, url, **kwargs)
        return self._portal.call(call)

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", url, **kwargs)


@contextmanager
def running(
    app: FastAPI, *, lifespan: bool = True, raise_app_exceptions: bool = True
) -> Iterator[ApiClient]:
    """The app with its lifespan entered (unless ``lifespan=False``), and a client for it
    (``raise_app_exceptions=False``: a server error is answered, not re-raised in the test)."""
    with start_blocking_portal() as portal:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
        client = httpx.AsyncClient(transport=transport, base_url="http://stirscope.test")
        try:
            if lifespan:
                context = portal.wrap_async_context_manager(app.router.lifespan_context(app))
                with context:
                    yield ApiClient(app, portal, client)
            else:
                yield ApiClient(app, portal, client)
        finally:
            portal.call(client.aclose)


@contextmanager
def serve_in_process(config: ServeConfig) -> Iterator[ApiClient]:
    with running(create_app(config)) as client:
        yield client


@dataclass(frozen=True, slots=True)
class FixtureCall:
    """What a SIP proxy would send a verification server for one fixture INVITE."""

    name: str
    identities: tuple[str, ...]
    from_uri: str
    to_uri: str
    request_uri: str
    date: int | None


def fixture_call(name: str) -> FixtureCall:
    message = parse_message((FIXTURES / "calls" / name).read_bytes())
    assert isinstance(message, Request)
    assert message.from_ is not None
    assert message.to is not None
    assert message.uri is not None
    date = int(message.date.timestamp()) if message.date is not None else None
    return FixtureCall(
        name=name,
        identities=tuple(h.value for h in message.identity_headers),
        from_uri=message.from_.uri.raw,
        to_uri=message.to.uri.raw,
        request_uri=message.uri.raw,
        date=date,
    )


def atis_body(call: FixtureCall, *, tn_form: bool = False) -> dict[str, Any]:
    """ATIS shape (one identity per request: the first Identity header). With ``tn_form``,
    identities as ``tn`` (the user part of the URIs), else as ``uri``; ``to`` lists the
    current target as well so that a ``div`` PASSporT's dest matches."""
    return {
        "verificationRequest": {
            "from": _identity(call.from_uri, tn_form),
            "to": _identity(call.to_uri, tn_form),
            "time": call.date,
            "identity": call.identities[0] if call.identities else "",
        }
    }


def gpp_body(call: FixtureCall, request_id: str = "req-1") -> dict[str, Any]:
    """3GPP shape with every Identity header and ``dest`` = the Request-URI."""
    return {
        "verificationRequest": {
            "from": {"uri": call.from_uri},
            "to": {"uri": call.to_uri},
            "dest": {"uri": call.request_uri},
            "time": call.date,
            "identityHeaders": list(call.identities),
            "requestId": request_id,
        }
    }


def _identity(uri: str, tn_form: bool) -> dict[str, str]:
    if not tn_form:
        return {"uri": uri}
    user = uri.split(":", 1)[1].split("@", 1)[0].split(";", 1)[0]
    return {"tn": user}


# A real `stirscope serve` starts in well under a second here; allow for a loaded CI machine.
READY_TIMEOUT_S = 30.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for a server the test starts)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_ready(base: str, process: subprocess.Popen[bytes], log: Path | None = None) -> None:
    """Wait until the `stirscope serve` at ``base`` answers ``/readyz`` with 200;
    AssertionError when it exits first or does not within ``READY_TIMEOUT_S`` (with the end
    of its ``log`` when given)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        try:
            if httpx.get(f"{base}/readyz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    state = (
        "did not become ready" if process.poll() is None else f"exited with {process.returncode}"
    )
    tail = log.read_text(errors="replace")[-2000:] if log is not None and log.exists() else ""
    raise AssertionError(f"serve {state}\n{tail}")
