"""Certificates refused only for explicit NULL parameters in an ECDSA AlgorithmIdentifier.

RFC 5758 section 3.2 says the parameters of ecdsa-with-SHA256/384/512 MUST be absent, and
``cryptography`` enforces it: it cannot load a certificate that writes ``05 00`` there. Real STI-CA
certificates do (T-Mobile's production SHAKEN root and intermediates in
realworld/certs/sti_ca), so every call signed under them would end ``chain_untrusted``.
OpenSSL accepts them. Theory of operation: re-encode the certificate without the NULL (in both
the TBSCertificate's ``signature`` field and the outer ``signatureAlgorithm``) so it can be
loaded and read, and keep the TBSCertificate bytes exactly as issued: a signature made by this
certificate's issuer covers those bytes, so the chain walk verifies it over them
(``StirCertificate.issued_tbs``). The deviation is reported as a profile finding. Fingerprints
and ``der`` stay those of the certificate as received. X.690 section 10 (DER); RFC 5280
section 4.1.
"""

from __future__ import annotations

from dataclasses import dataclass

from shaken.asn1 import DerError, Tlv, decode_oid, encode_tlv, iter_children, read_single

# ecdsa-with-SHA256, -SHA384, -SHA512 (RFC 5758 section 3.2).
ECDSA_SIGNATURE_OIDS = frozenset(
    {"1.2.840.10045.4.3.2", "1.2.840.10045.4.3.3", "1.2.840.10045.4.3.4"}
)
TAG_SEQUENCE = 0x30
TAG_OID = 0x06
TAG_NULL = 0x05
TAG_VERSION = 0xA0  # [0] EXPLICIT Version in TBSCertificate


@dataclass(frozen=True, slots=True)
class Normalized:
    """A loadable re-encoding and the TBSCertificate bytes the issuer actually signed."""

    der: bytes
    issued_tbs: bytes


def _reencode(tlv: Tlv) -> bytes:
    # Input was read as DER (minimal lengths), so re-encoding gives back the same bytes.
    return encode_tlv(tlv.tag, tlv.value)


def _without_null(algorithm: Tlv) -> bytes | None:
    """The AlgorithmIdentifier without its NULL, when it is ECDSA with NULL; else None."""
    if algorithm.tag != TAG_SEQUENCE:
        return None
    parts = iter_children(algorithm.value)
    if (
        len(parts) == 2
        and parts[0].tag == TAG_OID
        and decode_oid(parts[0].value) in ECDSA_SIGNATURE_OIDS
        and parts[1].tag == TAG_NULL
        and not parts[1].value
    ):
        return encode_tlv(TAG_SEQUENCE, _reencode(parts[0]))
    return None


def normalize_ecdsa_null_params(der: bytes) -> Normalized | None:
    """The certificate re-encoded without ECDSA NULL parameters; None when that is not its
    problem (or it is not a certificate at all). Never raises."""
    try:
        certificate = read_single(der, TAG_SEQUENCE)
        parts = iter_children(certificate.value)
        if len(parts) != 3:
            return None
        tbs, outer, signature = parts
        fields = iter_children(tbs.value)
        position = 2 if fields and fields[0].tag == TAG_VERSION else 1
        if len(fields) <= position:
            return None
        inner = _without_null(fields[position])
        outer_fixed = _without_null(outer)
        if inner is None and outer_fixed is None:
            return None
        tbs_fields = [
            inner if index == position and inner is not None else _reencode(field)
            for index, field in enumerate(fields)
        ]
        new_tbs = encode_tlv(TAG_SEQUENCE, b"".join(tbs_fields))
        body = new_tbs + (outer_fixed or _reencode(outer)) + _reencode(signature)
        return Normalized(encode_tlv(TAG_SEQUENCE, body), _reencode(tbs))
    except DerError:
        return None
