"""SHAKEN certificate profile: a lint that is reported, and the few checks that decide.

Two separate outputs, on purpose:

* ``lint_certificate`` compares a certificate with the ATIS-1000080 profile (STANDARDS.md
  section 7.2, as enforced by the SHAKEN zlint set) and returns ``ProfileFinding``s. They are
  shown to the investigator and never change a verdict: almost every real certificate has some
  (15,934 of 15,936 real leaves lack SAN, many lack the CP OID or SKI), and real verifiers
  accept them.
* ``check_leaf_for_verification`` is the verdict-affecting part of checklist step 20, with
  ``shaken.errors`` reasons. Lenient by decision, where real verifiers are lenient:
  - a missing basicConstraints or keyUsage extension is only a profile finding (the EE is not
    a CA unless it says so; keyUsage absent means "any usage", RFC 5280 section 4.2.1.3);
  - a critical TNAuthList is accepted with a warning (we recognise it, RFC 5280 section 4.2);
  - a TNAuthList decoded leniently (bare string, missing tag, truncated) is a warning;
  - a TNAuthList without an SPC is TNAUTHLIST_MISSING unless ``require_spc=False`` (plain
    STIR, where TNs/ranges are checked against ``orig`` in step 21).

STANDARDS.md section 7.2 (ATIS-1000080 section 6.4.1 via zlint) and section 10 step 20.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

from shaken.errors import Finding, Reason, Severity, error, warning

if TYPE_CHECKING:
    from shaken.certs import StirCertificate

# Policy OIDs of the US SHAKEN certificate policy v1.3 and v1.4 (STANDARDS.md section 7.2).
SHAKEN_POLICY_OIDS = frozenset({"2.16.840.1.114569.1.1.3", "2.16.840.1.114569.1.1.4"})
ANY_POLICY_OID = "2.5.29.32.0"
# Serial numbers: positive and at least 64 bits (ATIS-1000080 v005, STANDARDS.md 7.2).
MIN_SERIAL_BITS = 64
# SKI length required by ATIS-1000080 v004 (STANDARDS.md 7.2): a SHA-1 sized identifier.
SKI_LENGTH = 20
# SPC: digits and upper-case letters only (ATIS-1000080 v005, STANDARDS.md 7.2).
SPC_FORMAT = re.compile(r"[0-9A-Z]+")
# Extensions the profile allows (v005 list) plus the two claim-constraint extensions that
# RFC 8226 section 8 / RFC 9118 define for STIR end-entity certificates.
ALLOWED_EXTENSIONS = frozenset(
    {
        "2.5.29.15",  # keyUsage
        "2.5.29.19",  # basicConstraints
        "2.5.29.32",  # certificatePolicies
        "2.5.29.14",  # subjectKeyIdentifier
        "2.5.29.35",  # authorityKeyIdentifier
        "2.5.29.31",  # cRLDistributionPoints
        "1.3.6.1.5.5.7.1.26",  # TNAuthList
        "1.3.6.1.5.5.7.1.27",  # JWTClaimConstraints
        "1.3.6.1.5.5.7.1.33",  # EnhancedJWTClaimConstraints
    }
)
# Only these may be critical (ATIS-1000080 v004, STANDARDS.md 7.2).
CRITICAL_ALLOWED = frozenset({"2.5.29.15", "2.5.29.19"})
SIGNATURE_ALGORITHMS = frozenset({"ecdsa-with-SHA256", "ecdsa-with-SHA384"})


class ProfileIssue(StrEnum):
    """Stable codes for ATIS-1000080 profile deviations (STANDARDS.md section 7.2)."""

    VERSION_NOT_V3 = "version_not_v3"
    SERIAL_NOT_POSITIVE = "serial_not_positive"
    SERIAL_TOO_SHORT = "serial_too_short"
    SIGNATURE_ALGORITHM = "signature_algorithm"
    KEY_NOT_P256 = "key_not_p256"
    SUBJECT_FIELDS = "subject_fields"
    SUBJECT_CN_NO_SHAKEN = "subject_cn_no_shaken"
    SUBJECT_CN_NO_SPC = "subject_cn_no_spc"
    BASIC_CONSTRAINTS_MISSING = "basic_constraints_missing"
    BASIC_CONSTRAINTS_NOT_CRITICAL = "basic_constraints_not_critical"
    BASIC_CONSTRAINTS_CA_FLAG = "basic_constraints_ca_flag"
    KEY_USAGE_MISSING = "key_usage_missing"
    KEY_USAGE_NOT_CRITICAL = "key_usage_not_critical"
    KEY_USAGE_BITS = "key_usage_bits"
    POLICIES_MISSING = "policies_missing"
    POLICIES_CRITICAL = "policies_critical"
    POLICY_NOT_SHAKEN = "policy_not_shaken"
    CRLDP_MISSING = "crldp_missing"
    SKI_MISSING = "ski_missing"
    SKI_SIZE = "ski_size"
    AKI_MISSING = "aki_missing"
    TNAUTHLIST_MISSING = "tnauthlist_missing"
    TNAUTHLIST_CRITICAL = "tnauthlist_critical"
    TNAUTHLIST_NONCONFORMANT = "tnauthlist_nonconformant"
    TNAUTHLIST_INVALID = "tnauthlist_invalid"
    TNAUTHLIST_NOT_SINGLE_SPC = "tnauthlist_not_single_spc"
    TNAUTHLIST_IN_CA = "tnauthlist_in_ca"
    SPC_FORMAT = "spc_format"
    CLAIM_CONSTRAINTS_BOTH = "claim_constraints_both"
    CLAIM_CONSTRAINTS_INVALID = "claim_constraints_invalid"
    EXTENSION_NOT_ALLOWED = "extension_not_allowed"
    EXTENSION_CRITICAL = "extension_critical"
    EXTENSION_MALFORMED = "extension_malformed"
    ROOT_HAS_POLICIES = "root_has_policies"
    ROOT_HAS_CRLDP = "root_has_crldp"
    PARSE_WARNING = "parse_warning"


@dataclass(frozen=True, slots=True)
class ProfileFinding:
    """One profile deviation: stable ``code``, how much it weighs, and what was seen.

    STANDARDS.md section 7.2.
    """

    code: ProfileIssue
    severity: Severity
    detail: str

    def to_json(self) -> dict[str, str]:
        return {"code": self.code.value, "severity": self.severity.value, "detail": self.detail}


def _err(code: ProfileIssue, detail: str) -> ProfileFinding:
    return ProfileFinding(code, Severity.ERROR, detail)


def _warn(code: ProfileIssue, detail: str) -> ProfileFinding:
    return ProfileFinding(code, Severity.WARNING, detail)


def _lint_common(cert: StirCertificate) -> list[ProfileFinding]:
    out: list[ProfileFinding] = []
    if cert.version != 3:
        out.append(_err(ProfileIssue.VERSION_NOT_V3, f"version {cert.version}"))
    serial = cert.x509.serial_number
    if serial <= 0:
        out.append(_err(ProfileIssue.SERIAL_NOT_POSITIVE, f"serial {cert.serial}"))
    elif serial.bit_length() < MIN_SERIAL_BITS:
        out.append(_err(ProfileIssue.SERIAL_TOO_SHORT, f"{serial.bit_length()} bits"))
    if cert.signature_algorithm not in SIGNATURE_ALGORITHMS:
        out.append(_err(ProfileIssue.SIGNATURE_ALGORITHM, cert.signature_algorithm))
    if cert.key_type != "EC P-256":
        severity = (
            Severity.WARNING if cert.is_ca and cert.key_type == "EC P-384" else Severity.ERROR
        )
        out.append(ProfileFinding(ProfileIssue.KEY_NOT_P256, severity, cert.key_type))
    counts = cert.subject_attribute_counts
    for attr in ("C", "O", "CN"):
        if counts.get(attr, 0) != 1:
            out.append(
                _err(ProfileIssue.SUBJECT_FIELDS, f"{counts.get(attr, 0)} {attr} attributes")
            )
    if cert.basic_constraints_critical is None:
        out.append(_err(ProfileIssue.BASIC_CONSTRAINTS_MISSING, "no basicConstraints"))
    elif not cert.basic_constraints_critical:
        out.append(_err(ProfileIssue.BASIC_CONSTRAINTS_NOT_CRITICAL, "basicConstraints"))
    if cert.key_usage is None:
        out.append(_err(ProfileIssue.KEY_USAGE_MISSING, "no keyUsage"))
    elif not cert.key_usage_critical:
        out.append(_err(ProfileIssue.KEY_USAGE_NOT_CRITICAL, "keyUsage"))
    if cert.ski is None:
        out.append(_err(ProfileIssue.SKI_MISSING, "no subjectKeyIdentifier"))
    elif len(cert.ski) != 2 * SKI_LENGTH:
        out.append(_err(ProfileIssue.SKI_SIZE, f"{len(cert.ski) // 2} bytes"))
    if cert.aki is None and not cert.is_self_issued:
        out.append(_err(ProfileIssue.AKI_MISSING, "no authorityKeyIdentifier keyIdentifier"))
    for ext in cert.extensions:
        if ext.oid not in ALLOWED_EXTENSIONS:
            out.append(_err(ProfileIssue.EXTENSION_NOT_ALLOWED, f"{ext.name} ({ext.oid})"))
        if ext.critical and ext.oid not in CRITICAL_ALLOWED:
            code = (
                ProfileIssue.TNAUTHLIST_CRITICAL
                if ext.oid == "1.3.6.1.5.5.7.1.26"
                else ProfileIssue.EXTENSION_CRITICAL
            )
            out.append(_err(code, f"{ext.name} ({ext.oid}) is critical"))
    return out


def _lint_end_entity(cert: StirCertificate) -> list[ProfileFinding]:
    out: list[ProfileFinding] = []
    if cert.is_ca:
        out.append(_err(ProfileIssue.BASIC_CONSTRAINTS_CA_FLAG, "cA=TRUE on an end entity"))
    if cert.key_usage is not None and cert.key_usage != frozenset({"digital_signature"}):
        out.append(
            _err(ProfileIssue.KEY_USAGE_BITS, "keyUsage " + ",".join(sorted(cert.key_usage)))
        )
    _lint_policies(cert, out, allow_any=False)
    if not cert.crl_urls:
        out.append(_err(ProfileIssue.CRLDP_MISSING, "no CRL distribution point URI"))
    tnal = cert.tn_auth_list
    if tnal is None:
        if cert.tnauthlist_error is None:
            out.append(_err(ProfileIssue.TNAUTHLIST_MISSING, "no TNAuthList extension"))
    elif (len(tnal.spcs), len(tnal.ranges), len(tnal.tns), len(tnal.other)) != (1, 0, 0, 0):
        out.append(
            _err(
                ProfileIssue.TNAUTHLIST_NOT_SINGLE_SPC,
                f"{len(tnal.spcs)} SPC, {len(tnal.ranges)} ranges, {len(tnal.tns)} TNs, "
                f"{len(tnal.other)} other",
            )
        )
    cn = cert.common_name or ""
    if "SHAKEN" not in cn:
        out.append(_err(ProfileIssue.SUBJECT_CN_NO_SHAKEN, f"CN {cn!r}"))
    elif cert.spc is not None and f"SHAKEN {cert.spc}" not in cn:
        out.append(_err(ProfileIssue.SUBJECT_CN_NO_SPC, f"CN {cn!r}, SPC {cert.spc!r}"))
    return out


def _lint_policies(cert: StirCertificate, out: list[ProfileFinding], *, allow_any: bool) -> None:
    if cert.policies_critical is None:
        out.append(_err(ProfileIssue.POLICIES_MISSING, "no certificatePolicies"))
        return
    if cert.policies_critical:
        out.append(_err(ProfileIssue.POLICIES_CRITICAL, "certificatePolicies is critical"))
    accepted = SHAKEN_POLICY_OIDS | ({ANY_POLICY_OID} if allow_any else set())
    if len(cert.policies) != 1 or cert.policies[0] not in accepted:
        out.append(_err(ProfileIssue.POLICY_NOT_SHAKEN, ",".join(cert.policies) or "none"))


def _lint_ca(cert: StirCertificate) -> list[ProfileFinding]:
    out: list[ProfileFinding] = []
    if cert.key_usage is not None and "key_cert_sign" not in cert.key_usage:
        out.append(_err(ProfileIssue.KEY_USAGE_BITS, "CA keyUsage lacks keyCertSign"))
    if cert.tn_auth_list is not None or cert.tnauthlist_error is not None:
        out.append(_err(ProfileIssue.TNAUTHLIST_IN_CA, "TNAuthList in a CA certificate"))
    if cert.is_self_issued:
        if cert.policies_critical is not None:
            out.append(_err(ProfileIssue.ROOT_HAS_POLICIES, "root carries certificatePolicies"))
        if cert.crl_urls:
            out.append(_err(ProfileIssue.ROOT_HAS_CRLDP, "root carries a CRL distribution point"))
    else:
        _lint_policies(cert, out, allow_any=True)
        if not cert.crl_urls:
            out.append(_err(ProfileIssue.CRLDP_MISSING, "no CRL distribution point URI"))
    return out


def lint_certificate(cert: StirCertificate) -> list[ProfileFinding]:
    """ATIS-1000080 profile deviations of ``cert`` (EE or CA profile by its cA flag).

    Reported only; never part of a verdict. STANDARDS.md section 7.2.
    """
    out = _lint_common(cert)
    out.extend(_lint_ca(cert) if cert.is_ca else _lint_end_entity(cert))
    tnal = cert.tn_auth_list
    if tnal is not None:
        for deviation in tnal.deviations:
            out.append(_err(ProfileIssue.TNAUTHLIST_NONCONFORMANT, deviation))
        for spc in tnal.spcs:
            if not SPC_FORMAT.fullmatch(spc):
                out.append(_err(ProfileIssue.SPC_FORMAT, f"SPC {spc!r}"))
    if cert.tnauthlist_error is not None:
        out.append(_err(ProfileIssue.TNAUTHLIST_INVALID, cert.tnauthlist_error))
    if cert.has_both_claim_constraints:
        out.append(_err(ProfileIssue.CLAIM_CONSTRAINTS_BOTH, "JWT and Enhanced JWT constraints"))
    if cert.claim_constraints_error is not None:
        out.append(_err(ProfileIssue.CLAIM_CONSTRAINTS_INVALID, cert.claim_constraints_error))
    return out


# The key every SHAKEN end-entity certificate must carry: ES256 signs PASSporTs
# (RFC 8226 section 4; RFC 8588; STANDARDS.md section 10 step 20).
REQUIRED_LEAF_KEY = "EC P-256"


def check_leaf_for_verification(
    leaf: StirCertificate, *, require_spc: bool = True
) -> list[Finding]:
    """Verdict-affecting end-entity checks of checklist step 20 (errors and warnings).

    See the module docstring for what is deliberately lenient.
    STANDARDS.md section 10 step 20; RFC 8226 section 4 and section 9.
    """
    findings: list[Finding] = []
    if leaf.key_type != REQUIRED_LEAF_KEY:
        findings.append(
            error(Reason.UNSUPPORTED_KEY, f"{leaf.key_type} key; ES256 needs {REQUIRED_LEAF_KEY}")
        )
    if leaf.key_usage_error is not None:
        findings.append(warning(Reason.KEY_USAGE_INVALID, leaf.key_usage_error))
    elif leaf.key_usage is not None and "digital_signature" not in leaf.key_usage:
        findings.append(error(Reason.KEY_USAGE_INVALID, "keyUsage lacks digitalSignature"))
    if leaf.is_ca:
        findings.append(error(Reason.BASIC_CONSTRAINTS_INVALID, "end entity has cA=TRUE"))
    tnal = leaf.tn_auth_list
    if leaf.tnauthlist_error is not None:
        findings.append(error(Reason.TNAUTHLIST_INVALID, leaf.tnauthlist_error))
    elif tnal is None:
        findings.append(error(Reason.TNAUTHLIST_MISSING, "no TNAuthList extension"))
    else:
        if not tnal.spcs and (require_spc or not (tnal.ranges or tnal.tns)):
            findings.append(error(Reason.TNAUTHLIST_MISSING, "TNAuthList holds no SPC"))
        if tnal.deviations:
            findings.append(
                warning(Reason.TNAUTHLIST_INVALID, "decoded leniently: " + tnal.deviations[0])
            )
        if leaf.tnauthlist_critical:
            findings.append(warning(Reason.TNAUTHLIST_INVALID, "TNAuthList marked critical"))
    if leaf.claim_constraints_error is not None:
        findings.append(error(Reason.CERT_PARSE_ERROR, leaf.claim_constraints_error))
    if leaf.has_both_claim_constraints:
        # RFC 9118 section 6: a certificate MUST NOT carry both; closest reason meanwhile.
        findings.append(
            error(Reason.CERT_PARSE_ERROR, "both JWTClaimConstraints and Enhanced variant")
        )
    return findings
