"""A read-only view of a STIR certificate: the fields a verifier and an investigator need.

``StirCertificate.from_x509`` never raises for a certificate ``cryptography`` could load:
every extension is decoded on its own and a failure becomes a profile finding (and the field
stays ``None``). If ``cryptography`` refuses the whole extension list, the extensions are
walked with ``shaken.asn1`` instead so the TNAuthList and the CA flag survive.
``parse_certificates`` turns PEM bundles or a DER certificate into views and problem strings.

RFC 8226 section 4, section 8, section 9; RFC 5280 section 4.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509 import Certificate
from cryptography.x509.oid import ExtensionOID, NameOID

from shaken.asn1 import (
    TAG_SEQUENCE,
    DerError,
    decode_oid,
    iter_children,
    read_single,
)
from shaken.certfix import normalize_ecdsa_null_params
from shaken.constraints import (
    OID_ENHANCED_JWT_CLAIM_CONSTRAINTS,
    OID_JWT_CLAIM_CONSTRAINTS,
    ClaimConstraints,
    parse_claim_constraints,
)
from shaken.errors import Reason, Severity, ShakenError
from shaken.profile import ProfileFinding, ProfileIssue, lint_certificate
from shaken.tnauthlist import OID_TNAUTHLIST, TnAuthList, parse_tnauthlist

# Curve names as reported in key_type (SEC 2 names -> NIST names, RFC 8226 section 4).
CURVE_NAMES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
# keyUsage bit names in BIT STRING order (RFC 5280 section 4.2.1.3).
KEY_USAGE_BITS = (
    "digital_signature",
    "content_commitment",
    "key_encipherment",
    "data_encipherment",
    "key_agreement",
    "key_cert_sign",
    "crl_sign",
    "encipher_only",
    "decipher_only",
)
# Short names for subject attribute counting (RFC 4514 section 3 names).
SUBJECT_SHORT_NAMES = {NameOID.COUNTRY_NAME: "C", NameOID.ORGANIZATION_NAME: "O"}
SUBJECT_SHORT_NAMES[NameOID.COMMON_NAME] = "CN"
PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----(.*?)-----END \1-----", re.DOTALL)
PEM_CERT_LABELS = frozenset({b"CERTIFICATE", b"X509 CERTIFICATE", b"TRUSTED CERTIFICATE"})
# Extension tag inside TBSCertificate ([3] EXPLICIT, RFC 5280 section 4.1).
TAG_TBS_EXTENSIONS = 0xA3
TAG_BOOLEAN = 0x01
TAG_OCTET_STRING = 0x04
TAG_BIT_STRING = 0x03
TAG_KEYID = 0x80


@dataclass(frozen=True, slots=True)
class ExtensionInfo:
    """One extension as present in the certificate: OID, display name, criticality."""

    oid: str
    name: str
    critical: bool


@dataclass(frozen=True, slots=True, eq=False)
class StirCertificate:
    """Frozen view over an ``x509.Certificate`` (equality and hash by SHA-256 fingerprint).

    ``profile_findings`` are ATIS-1000080 lint results (reported, not a verdict); ``*_error``
    fields hold why an extension present in the certificate could not be decoded.
    RFC 8226 section 9; STANDARDS.md section 7.
    """

    x509: Certificate
    der: bytes
    subject: str
    issuer: str
    organization: str | None
    common_name: str | None
    serial: str
    not_before: datetime
    not_after: datetime
    fingerprint_sha256: str
    key_type: str
    version: int
    signature_algorithm: str
    is_ca: bool | None
    tn_auth_list: TnAuthList | None
    tnauthlist_critical: bool | None
    tnauthlist_error: str | None
    crl_urls: tuple[str, ...]
    policies: tuple[str, ...]
    policies_critical: bool | None
    claim_constraints: ClaimConstraints | None
    claim_constraints_error: str | None
    has_both_claim_constraints: bool
    ski: str | None
    aki: str | None
    key_usage: frozenset[str] | None
    key_usage_critical: bool | None
    key_usage_error: str | None
    basic_constraints_critical: bool | None
    extensions: tuple[ExtensionInfo, ...]
    profile_findings: tuple[ProfileFinding, ...] = field(default=())
    # The TBSCertificate as issued, when ``x509`` is a re-encoding (shaken.certfix): the
    # issuer's signature covers these bytes, not the re-encoded ones.
    issued_tbs: bytes | None = None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StirCertificate):
            return NotImplemented
        return self.fingerprint_sha256 == other.fingerprint_sha256

    def __hash__(self) -> int:
        return hash(self.fingerprint_sha256)

    @property
    def spc(self) -> str | None:
        """The first SPC in the TNAuthList: the SHAKEN signing provider (ATIS-1000080)."""
        return None if self.tn_auth_list is None else self.tn_auth_list.spc

    @property
    def is_self_issued(self) -> bool:
        """Subject equals issuer (RFC 5280 section 6.1)."""
        return self.x509.subject == self.x509.issuer

    @property
    def subject_attribute_counts(self) -> dict[str, int]:
        counts: Counter[str] = Counter()
        for attr in self.x509.subject:
            counts[SUBJECT_SHORT_NAMES.get(attr.oid, attr.oid.dotted_string)] += 1
        return dict(counts)

    def public_key(self) -> CertificatePublicKeyTypes:
        """The subject public key (raises ``ValueError`` for an unsupported key)."""
        return self.x509.public_key()

    @classmethod
    def from_x509(cls, cert: Certificate) -> StirCertificate:
        """Build the view; never raises for a loaded certificate. RFC 5280 section 4.1."""
        return _build(cert)

    @classmethod
    def from_pem(cls, data: bytes) -> StirCertificate:
        """The first certificate of a PEM text (or a DER certificate); ``ShakenError`` if none."""
        bundle = parse_certificates(data)
        if not bundle.certs:
            raise ShakenError(Reason.CERT_PARSE_ERROR, "; ".join(bundle.problems) or "empty")
        return bundle.certs[0]

    def to_json(self) -> dict[str, object]:
        """The ``stirscope cert inspect --json`` record. RFC 8226 section 9."""
        tnal = self.tn_auth_list
        return {
            "subject": self.subject,
            "issuer": self.issuer,
            "serial": self.serial,
            "not_before": self.not_before.isoformat(),
            "not_after": self.not_after.isoformat(),
            "spc": self.spc,
            "organization": self.organization,
            "tnauthlist": None
            if tnal is None
            else {
                "spcs": list(tnal.spcs),
                "ranges": [r.to_json() for r in tnal.ranges],
                "tns": list(tnal.tns),
                "other": list(tnal.other),
                "critical": self.tnauthlist_critical,
            },
            "key_type": self.key_type,
            "is_ca": self.is_ca,
            "crl_urls": list(self.crl_urls),
            "policies": list(self.policies),
            "claim_constraints": None
            if self.claim_constraints is None
            else self.claim_constraints.to_json(),
            "ski": self.ski,
            "aki": self.aki,
            "fingerprint_sha256": self.fingerprint_sha256,
            "profile_findings": [f.to_json() for f in self.profile_findings],
        }


def describe_key(key: CertificatePublicKeyTypes) -> str:
    """``EC P-256``, ``EC P-384``, ``RSA 2048``, ``Ed25519``... (RFC 8226 section 4)."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"EC {CURVE_NAMES.get(key.curve.name, key.curve.name)}"
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA {key.key_size}"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "Ed25519"
    if isinstance(key, ed448.Ed448PublicKey):
        return "Ed448"
    return type(key).__name__


def _first_attr(name: x509.Name, oid: x509.ObjectIdentifier) -> str | None:
    attrs = name.get_attributes_for_oid(oid)
    if not attrs:
        return None
    value = attrs[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def _safe_rfc4514(name: x509.Name) -> str:
    try:
        return name.rfc4514_string()
    except ValueError as exc:  # undecodable attribute values
        return f"<unprintable name: {exc}>"


class _Draft:
    """Mutable accumulator for the extension fields while building a view."""

    def __init__(self) -> None:
        self.findings: list[ProfileFinding] = []
        self.is_ca: bool | None = None
        self.bc_critical: bool | None = None
        self.key_usage: frozenset[str] | None = None
        self.ku_critical: bool | None = None
        self.ku_error: str | None = None
        self.ski: str | None = None
        self.aki: str | None = None
        self.crl_urls: tuple[str, ...] = ()
        self.policies: tuple[str, ...] = ()
        self.policies_critical: bool | None = None
        self.tnal: TnAuthList | None = None
        self.tnal_critical: bool | None = None
        self.tnal_error: str | None = None
        self.constraints: ClaimConstraints | None = None
        self.constraints_error: str | None = None
        self.constraint_oids: set[str] = set()
        self.extensions: list[ExtensionInfo] = []

    def malformed(self, what: str, exc: Exception) -> None:
        self.findings.append(
            ProfileFinding(ProfileIssue.EXTENSION_MALFORMED, Severity.ERROR, f"{what}: {exc}")
        )

    def stir_extension(self, oid: str, critical: bool, value: bytes) -> None:
        """TNAuthList and the claim constraints: decoded by us from raw bytes."""
        if oid == OID_TNAUTHLIST:
            self.tnal_critical = critical
            try:
                self.tnal = parse_tnauthlist(value)
            except ShakenError as exc:
                self.tnal_error = exc.detail
        elif oid in (OID_JWT_CLAIM_CONSTRAINTS, OID_ENHANCED_JWT_CLAIM_CONSTRAINTS):
            self.constraint_oids.add(oid)
            try:
                self.constraints = parse_claim_constraints(
                    value, enhanced=oid == OID_ENHANCED_JWT_CLAIM_CONSTRAINTS
                )
            except ShakenError as exc:
                self.constraints_error = exc.detail


def _apply_extension(draft: _Draft, ext: x509.Extension[x509.ExtensionType]) -> None:
    value = ext.value
    if isinstance(value, x509.BasicConstraints):
        draft.is_ca, draft.bc_critical = value.ca, ext.critical
    elif isinstance(value, x509.KeyUsage):
        draft.ku_critical = ext.critical
        bits = set()
        for name in KEY_USAGE_BITS:
            try:
                if getattr(value, name):
                    bits.add(name)
            except ValueError:  # encipher_only/decipher_only without key_agreement
                continue
        draft.key_usage = frozenset(bits)
    elif isinstance(value, x509.SubjectKeyIdentifier):
        draft.ski = value.digest.hex()
    elif isinstance(value, x509.AuthorityKeyIdentifier):
        draft.aki = None if value.key_identifier is None else value.key_identifier.hex()
    elif isinstance(value, x509.CRLDistributionPoints):
        urls = []
        for point in value:
            for name in point.full_name or ():
                if isinstance(name, x509.UniformResourceIdentifier):
                    urls.append(name.value)
        draft.crl_urls = tuple(urls)
    elif isinstance(value, x509.CertificatePolicies):
        draft.policies = tuple(p.policy_identifier.dotted_string for p in value)
        draft.policies_critical = ext.critical
    elif isinstance(value, x509.UnrecognizedExtension):
        draft.stir_extension(ext.oid.dotted_string, ext.critical, value.value)


def _raw_extensions(tbs: bytes) -> list[tuple[str, bool, bytes]]:
    """(OID, critical, value) of each extension, walked from the TBSCertificate DER."""
    top = read_single(tbs, TAG_SEQUENCE)
    for child in iter_children(top.value):
        if child.tag == TAG_TBS_EXTENSIONS:
            seq = read_single(child.value, TAG_SEQUENCE)
            out = []
            for ext in iter_children(seq.value):
                parts = iter_children(ext.value)
                critical = (
                    len(parts) == 3 and parts[1].tag == TAG_BOOLEAN and parts[1].value != b"\0"
                )
                octets = parts[-1]
                if octets.tag != TAG_OCTET_STRING:
                    raise DerError("extnValue is not an OCTET STRING")
                out.append((decode_oid(parts[0].value), critical, octets.value))
            return out
    return []


def _apply_raw(draft: _Draft, oid: str, critical: bool, value: bytes) -> None:
    """Fallback decoding of the extensions a verifier needs, when cryptography refused."""
    try:
        if oid == ExtensionOID.BASIC_CONSTRAINTS.dotted_string:
            parts = iter_children(read_single(value, TAG_SEQUENCE).value)
            draft.bc_critical = critical
            draft.is_ca = bool(parts) and parts[0].tag == TAG_BOOLEAN and parts[0].value != b"\0"
        elif oid == ExtensionOID.KEY_USAGE.dotted_string:
            draft.ku_critical = critical
            bits = read_single(value, TAG_BIT_STRING).value
            if not bits or bits[0] > 7:
                raise DerError("keyUsage BIT STRING malformed")
            flags = int.from_bytes(bits[1:], "big") if len(bits) > 1 else 0
            width = 8 * (len(bits) - 1)
            draft.key_usage = frozenset(
                n
                for i, n in enumerate(KEY_USAGE_BITS)
                if i < width and flags >> (width - 1 - i) & 1
            )
        elif oid == ExtensionOID.SUBJECT_KEY_IDENTIFIER.dotted_string:
            draft.ski = read_single(value, TAG_OCTET_STRING).value.hex()
        elif oid == ExtensionOID.AUTHORITY_KEY_IDENTIFIER.dotted_string:
            for part in iter_children(read_single(value, TAG_SEQUENCE).value):
                if part.tag == TAG_KEYID:
                    draft.aki = part.value.hex()
        else:
            draft.stir_extension(oid, critical, value)
    except DerError as exc:
        draft.malformed(f"extension {oid}", exc)
        if oid == ExtensionOID.KEY_USAGE.dotted_string:
            draft.ku_error = f"keyUsage undecodable: {exc}"


def _decode_extensions(cert: x509.Certificate, draft: _Draft) -> None:
    try:
        extensions = list(cert.extensions)
    except (ValueError, x509.DuplicateExtension) as exc:
        draft.malformed("extensions (cryptography refused them)", exc)
        try:
            raw = _raw_extensions(cert.tbs_certificate_bytes)
        except (DerError, ValueError) as raw_exc:
            draft.malformed("extensions (raw walk)", raw_exc)
            return
        for oid, critical, value in raw:
            draft.extensions.append(ExtensionInfo(oid, oid, critical))
            _apply_raw(draft, oid, critical, value)
        return
    for ext in extensions:
        name = getattr(ext.oid, "_name", "Unknown OID")
        oid = ext.oid.dotted_string
        draft.extensions.append(
            ExtensionInfo(oid, name if name != "Unknown OID" else oid, ext.critical)
        )
        try:
            _apply_extension(draft, ext)
        except (ValueError, TypeError) as exc:
            draft.malformed(f"extension {oid}", exc)


def _build(
    cert: x509.Certificate, *, received: bytes | None = None, issued_tbs: bytes | None = None
) -> StirCertificate:
    """The view of ``cert``; ``received``/``issued_tbs`` when ``cert`` is a re-encoding of the
    certificate as received (shaken.certfix): evidence (der, fingerprint) stays the original."""
    draft = _Draft()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        der = cert.public_bytes(serialization.Encoding.DER)
        _decode_extensions(cert, draft)
        try:
            key_type = describe_key(cert.public_key())
        except (ValueError, TypeError) as exc:
            key_type = "unsupported"
            draft.malformed("subjectPublicKeyInfo", exc)
        try:
            sig_alg = cert.signature_algorithm_oid._name
            if sig_alg == "Unknown OID":
                sig_alg = cert.signature_algorithm_oid.dotted_string
        except ValueError:
            sig_alg = "unknown"
        not_before, not_after = cert.not_valid_before_utc, cert.not_valid_after_utc
        serial = cert.serial_number
    for caught_warning in caught:
        draft.findings.append(
            ProfileFinding(
                ProfileIssue.PARSE_WARNING, Severity.WARNING, str(caught_warning.message)
            )
        )
    digest = cert.fingerprint(hashes.SHA256()).hex()
    if received is not None:
        der = received
        digest = hashlib.sha256(received).hexdigest()
        draft.findings.append(
            ProfileFinding(
                ProfileIssue.SIGNATURE_ALGORITHM,
                Severity.WARNING,
                "ECDSA AlgorithmIdentifier with NULL parameters (RFC 5758 section 3.2: absent)",
            )
        )
    view = StirCertificate(
        x509=cert,
        der=der,
        subject=_safe_rfc4514(cert.subject),
        issuer=_safe_rfc4514(cert.issuer),
        organization=_first_attr(cert.subject, NameOID.ORGANIZATION_NAME),
        common_name=_first_attr(cert.subject, NameOID.COMMON_NAME),
        serial=format(serial, "x") if serial >= 0 else "-" + format(-serial, "x"),
        not_before=not_before,
        not_after=not_after,
        fingerprint_sha256=digest,
        key_type=key_type,
        version=cert.version.value + 1,
        signature_algorithm=sig_alg,
        is_ca=draft.is_ca,
        tn_auth_list=draft.tnal,
        tnauthlist_critical=draft.tnal_critical,
        tnauthlist_error=draft.tnal_error,
        crl_urls=draft.crl_urls,
        policies=draft.policies,
        policies_critical=draft.policies_critical,
        claim_constraints=draft.constraints,
        claim_constraints_error=draft.constraints_error,
        has_both_claim_constraints=len(draft.constraint_oids) == 2,
        ski=draft.ski,
        aki=draft.aki,
        key_usage=draft.key_usage,
        key_usage_critical=draft.ku_critical,
        key_usage_error=draft.ku_error,
        basic_constraints_critical=draft.bc_critical,
        extensions=tuple(draft.extensions),
    )
    findings = tuple(draft.findings + lint_certificate(view))
    return replace(view, profile_findings=findings, issued_tbs=issued_tbs)


@dataclass(frozen=True, slots=True)
class BundleEntry:
    """One certificate slot of a bundle: the view, or why it could not be loaded."""

    index: int
    cert: StirCertificate | None
    error: str | None


@dataclass(frozen=True, slots=True)
class CertBundle:
    """Certificates found in a PEM bundle or DER blob, in order, plus problems seen.

    ``entries`` keeps failed slots too, so callers can report them by index.
    RFC 8555 section 9.1 (application/pem-certificate-chain); RFC 7468 section 5.
    """

    certs: tuple[StirCertificate, ...]
    problems: tuple[str, ...]
    entries: tuple[BundleEntry, ...] = ()


def _load_der(der: bytes, index: int) -> BundleEntry:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # recorded again by _build
            cert = x509.load_der_x509_certificate(der)
    except ValueError as exc:
        fixed = normalize_ecdsa_null_params(der)
        if fixed is None:
            return BundleEntry(index, None, f"certificate {index}: cannot load: {exc}")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cert = x509.load_der_x509_certificate(fixed.der)
        except ValueError:
            return BundleEntry(index, None, f"certificate {index}: cannot load: {exc}")
        view = _build(cert, received=der, issued_tbs=fixed.issued_tbs)
        return BundleEntry(index, view, None)
    return BundleEntry(index, StirCertificate.from_x509(cert), None)


def parse_certificates(data: bytes) -> CertBundle:
    """Split ``data`` (PEM bundle, or one DER certificate) into views; never raises.

    Junk between PEM blocks and non-certificate blocks are reported as problems; a block
    ``cryptography`` cannot load becomes a problem naming its index. RFC 7468 section 2 and 5.
    """
    problems: list[str] = []
    entries: list[BundleEntry] = []
    if b"-----BEGIN" not in data:
        if not data.strip():
            return CertBundle((), ("no certificate found (empty input)",))
        entry = _load_der(data, 0)
        entries.append(entry)
    else:
        pos = 0
        index = 0
        for match in PEM_BLOCK.finditer(data):
            if data[pos : match.start()].strip():
                problems.append(f"junk before certificate {index} ({match.start() - pos} bytes)")
            pos = match.end()
            label = match.group(1)
            if label not in PEM_CERT_LABELS:
                problems.append(f"ignored PEM block {label.decode()!r} before certificate {index}")
                continue
            try:
                der = base64.b64decode(b"".join(match.group(2).split()), validate=True)
            except (binascii.Error, ValueError) as exc:
                entries.append(BundleEntry(index, None, f"certificate {index}: bad base64: {exc}"))
            else:
                entries.append(_load_der(der, index))
            index += 1
        if data[pos:].strip():
            problems.append(f"junk after the last certificate ({len(data) - pos} bytes)")
        if index == 0:
            problems.append("no certificate found")
    problems.extend(e.error for e in entries if e.error is not None)
    certs = tuple(e.cert for e in entries if e.cert is not None)
    return CertBundle(certs, tuple(problems), tuple(entries))
