"""Revocation status of a certificate from a CRL, judged at a given time.

The CRL must be signed by the certificate's issuer and name it; ``at`` is the call time.
A CRL issued after ``at`` is the best evidence there is (anything revoked by ``at`` is on
it with a revocation date <= ``at``); a CRL whose nextUpdate is before ``at`` is stale and
can only prove revocation, so an unlisted certificate is then "unknown". A certificate
revoked after ``at`` was good for that call: status ``good`` with an info finding.

RFC 5280 section 5 and section 6.3; ATIS-1000080 (CRL named in CRLDP, STANDARDS.md 7.3).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from shaken.certs import StirCertificate
from shaken.errors import Finding, Reason, Severity, error, warning


class RevocationStatus(StrEnum):
    GOOD = "good"
    REVOKED = "revoked"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class RevocationCheck:
    """Status plus every finding; update times are None when the CRL could not be used.

    RFC 5280 section 6.3.3.
    """

    status: RevocationStatus
    findings: tuple[Finding, ...]
    this_update: datetime | None = None
    next_update: datetime | None = None


def _load(crl_data: bytes) -> x509.CertificateRevocationList:
    if b"-----BEGIN" in crl_data:
        return x509.load_pem_x509_crl(crl_data)
    return x509.load_der_x509_crl(crl_data)


def _unknown(detail: str) -> RevocationCheck:
    return RevocationCheck(RevocationStatus.UNKNOWN, (error(Reason.CRL_INVALID, detail),))


def check_crl(
    cert: StirCertificate, issuer: StirCertificate, crl_data: bytes, *, at: datetime
) -> RevocationCheck:
    """Look ``cert`` up in the DER or PEM CRL issued by ``issuer``, as of ``at``.

    RFC 5280 section 6.3.3 (b) issuer match, (f) signature, (a) freshness, (i) serial lookup.
    """
    if at.tzinfo is None:
        raise ValueError("check_crl needs an aware datetime for `at`")
    try:
        crl = _load(crl_data)
    except ValueError as exc:
        return _unknown(f"CRL does not parse: {exc}")
    if crl.issuer != issuer.x509.subject or cert.x509.issuer != crl.issuer:
        return _unknown(f"CRL issuer {crl.issuer.rfc4514_string()} is not {cert.issuer}")
    try:
        key = issuer.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
            return _unknown(f"CRL issuer key {issuer.key_type} not supported")
        signed = crl.is_signature_valid(key)
    except (TypeError, ValueError) as exc:
        return _unknown(f"CRL signature cannot be checked: {exc}")
    if not signed:
        return _unknown(f"CRL signature does not verify with {issuer.subject}")
    this_update = crl.last_update_utc
    next_update = crl.next_update_utc
    findings: list[Finding] = []
    stale = next_update is not None and at > next_update
    if stale:
        findings.append(
            warning(Reason.CRL_INVALID, f"stale CRL: nextUpdate {next_update} before {at}")
        )
    entry = crl.get_revoked_certificate_by_serial_number(cert.x509.serial_number)
    if entry is not None:
        revoked_at = entry.revocation_date_utc
        if revoked_at <= at:
            findings.append(
                error(Reason.CERT_REVOKED, f"serial {cert.serial} revoked at {revoked_at}")
            )
            return RevocationCheck(
                RevocationStatus.REVOKED, tuple(findings), this_update, next_update
            )
        findings.append(
            Finding(
                Reason.CERT_REVOKED,
                f"serial {cert.serial} revoked at {revoked_at}, after {at}: good for this call",
                Severity.INFO,
            )
        )
    status = RevocationStatus.UNKNOWN if stale else RevocationStatus.GOOD
    return RevocationCheck(status, tuple(findings), this_update, next_update)
