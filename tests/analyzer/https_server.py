"""A real HTTPS server on 127.0.0.1 for tests that fetch certificates (x5u, CRLs).

``LocalPki.generate()`` makes a throw-away CA and a server certificate for ``localhost`` and
``127.0.0.1``; ``LocalHttpsServer`` serves configurable ``Route``s (status, headers, body,
delay before the response, trickled bodies, bodies without Content-Length) and records every
connection, TLS server name and request, so tests can assert what the client did (or that it
never connected at all).

Usage::

    pki = LocalPki.generate()
    with LocalHttpsServer(pki, {"/sp.pem": Route(body=chain)}) as server:
        HttpSource(ca_bundle=pki.write_ca(tmp_path), allow_private=True, ...)
        ...fetch(server.url("/sp.pem"))
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_VALIDITY = datetime.timedelta(days=2)
# A name the server certificate also covers, for tests that map it to 127.0.0.1 themselves
# (the .test TLD never resolves on the internet, RFC 6761 section 6.2).
TEST_HOST = "cr.stirscope.test"


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


@dataclass(frozen=True, slots=True)
class LocalPki:
    """A test CA and a server certificate/key for ``localhost``, ``TEST_HOST`` and 127.0.0.1."""

    ca_pem: bytes
    server_cert_pem: bytes
    server_key_pem: bytes

    @classmethod
    def generate(cls, extra_hosts: tuple[str, ...] = ()) -> LocalPki:
        """A fresh CA and server certificate; ``extra_hosts`` adds DNS names to its SAN."""
        now = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = (
            x509.CertificateBuilder()
            .subject_name(_name("stirscope test CA"))
            .issuer_name(_name("stirscope test CA"))
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + _VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
            )
            .sign(ca_key, hashes.SHA256())
        )
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name("localhost"))
            .issuer_name(ca.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + _VALIDITY)
            .add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.DNSName("localhost"),
                        x509.DNSName(TEST_HOST),
                        *(x509.DNSName(host) for host in extra_hosts),
                        x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
                    ]
                ),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        return cls(
            ca_pem=ca.public_bytes(serialization.Encoding.PEM),
            server_cert_pem=cert.public_bytes(serialization.Encoding.PEM),
            server_key_pem=key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
        )

    def write_ca(self, directory: Path) -> Path:
        """Write the CA certificate as a PEM bundle (for ``ca_bundle=``) and return its path."""
        path = directory / "test-ca.pem"
        path.write_bytes(self.ca_pem)
        return path

    def server_context(self, directory: Path) -> ssl.SSLContext:
        cert_path = directory / "server.pem"
        key_path = directory / "server.key"
        cert_path.write_bytes(self.server_cert_pem)
        key_path.write_bytes(self.server_key_pem)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_path, key_path)
        return context


@dataclass(frozen=True, slots=True)
class Route:
    """What the server answers on one path.

    ``delay``: seconds to wait before the status line; ``trickle``: seconds between body
    chunks of ``chunk`` bytes; ``content_length=False``: no Content-Length, the body ends when
    the connection closes.
    """

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(
        default_factory=lambda: {"Content-Type": "application/pem-certificate-chain"}
    )
    delay: float = 0.0
    trickle: float = 0.0
    chunk: int = 1024
    content_length: bool = True


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, str]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, owner: LocalHttpsServer) -> None:
        self.owner = owner
        super().__init__(("127.0.0.1", 0), _Handler)

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        sock, address = self.socket.accept()
        self.owner.record_connection()
        # The handshake runs in the handler thread (on first read), not in the accept loop.
        wrapped = self.owner.context.wrap_socket(
            sock, server_side=True, do_handshake_on_connect=False
        )
        return wrapped, address

    def handle_error(self, request: object, client_address: object) -> None:
        """Clients hang up mid-body on purpose (size caps, timeouts): stay quiet."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        """Silence the default stderr access log."""

    def do_GET(self) -> None:
        owner = self.server.owner
        owner.record_request(
            RecordedRequest(
                self.command, self.path, {k.lower(): v for k, v in self.headers.items()}
            )
        )
        route = owner.routes.get(self.path)
        if route is None:
            route = Route(status=404, body=b"not found", headers={"Content-Type": "text/plain"})
        if route.delay and owner.stopping.wait(route.delay):
            return
        self.send_response_only(route.status)
        if "Date" not in route.headers:
            self.send_header("Date", self.date_time_string())
        for name, value in route.headers.items():
            self.send_header(name, value)
        if route.content_length:
            self.send_header("Content-Length", str(len(route.body)))
        else:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        for start in range(0, len(route.body), route.chunk):
            self.wfile.write(route.body[start : start + route.chunk])
            self.wfile.flush()
            if route.trickle and owner.stopping.wait(route.trickle):
                return


class LocalHttpsServer:
    """A threaded HTTPS server on 127.0.0.1 (random port) serving ``routes``.

    ``connections`` counts accepted TCP connections; ``requests`` lists requests;
    ``server_names`` lists the SNI names clients sent (None when no SNI was sent).
    """

    def __init__(
        self, pki: LocalPki, routes: dict[str, Route], *, workdir: Path | None = None
    ) -> None:
        import tempfile

        self.routes = dict(routes)
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self.connections = 0
        self.requests: list[RecordedRequest] = []
        self.server_names: list[str | None] = []
        with tempfile.TemporaryDirectory() as tmp:
            self.context = pki.server_context(workdir or Path(tmp))
        self.context.sni_callback = self._on_sni
        self._server = _Server(self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def url(self, path: str, *, host: str = "127.0.0.1") -> str:
        return f"https://{host}:{self.port}{path}"

    def _on_sni(self, sslobj: ssl.SSLObject, name: str | None, context: ssl.SSLContext) -> None:
        with self._lock:
            self.server_names.append(name)

    def record_connection(self) -> None:
        with self._lock:
            self.connections += 1

    def record_request(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def __enter__(self) -> LocalHttpsServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
