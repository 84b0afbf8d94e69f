"""Claim syntax checks for PASSporT payloads: the baseline and each supported ``ppt``.

Works on the decoded JSON payload (a mapping) and the JOSE ``ppt``; it judges types and shapes
only. Comparing claims with SIP (orig/dest vs From/To, iat vs Date) is the verifier's job.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from shaken.errors import Finding, Reason, error, warning

ATTEST_LEVELS = frozenset({"A", "B", "C"})  # RFC 8588 section 4
# RFC 8224 section 8.3 tn-spec = 1*tn-char; tn-char = "#" / "*" / DIGIT.
TN_RE = re.compile(r"[0-9#*]+")
# RFC 4122 section 3 string representation (any version/variant), case-insensitive.
UUID_RE = re.compile(r"[0-9a-fA-F]{8}-(?:[0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}")


def _is_tn(value: object) -> bool:
    return isinstance(value, str) and TN_RE.fullmatch(value) is not None


def _check_party(value: object, reason: Reason, what: str) -> list[Finding]:
    """Exactly one of tn/uri with a non-empty string (RFC 8225 section 5.2.1)."""
    if not isinstance(value, dict):
        return [error(reason, f"{what} is not a JSON object: {type(value).__name__}")]
    keys = set(value) - {"hi"} if what == "div" else set(value)
    if len(keys) != 1 or not keys <= {"tn", "uri"}:
        return [error(reason, f"{what} must hold exactly one of tn/uri, has {sorted(keys)}")]
    (kind,) = keys
    item = value[kind]
    if not isinstance(item, str) or not item:
        return [error(reason, f"{what}.{kind} must be a non-empty string")]
    if kind == "tn" and not _is_tn(item):
        return [warning(reason, f"{what}.tn {item!r} is not canonical (RFC 8224 section 8.3)")]
    return []


def _check_dest(value: object) -> list[Finding]:
    """dest: object of tn and/or uri arrays, each non-empty (RFC 8225 section 5.2.1)."""
    if not isinstance(value, dict):
        return [error(Reason.INVALID_DEST, f"dest is not a JSON object: {type(value).__name__}")]
    kinds = [k for k in ("tn", "uri") if k in value]
    if not kinds:
        return [error(Reason.INVALID_DEST, "dest has neither tn nor uri")]
    found: list[Finding] = []
    for kind in kinds:
        items = value[kind]
        if not isinstance(items, list) or not items:
            found.append(error(Reason.INVALID_DEST, f"dest.{kind} must be a non-empty array"))
        elif not all(isinstance(i, str) and i for i in items):
            found.append(error(Reason.INVALID_DEST, f"dest.{kind} entries must be strings"))
        elif kind == "tn" and not all(_is_tn(i) for i in items):
            found.append(warning(Reason.INVALID_DEST, "dest.tn not canonical (RFC 8224 §8.3)"))
    return found


def _check_rcd_claims(payload: Mapping[str, object], ppt: str | None) -> list[Finding]:
    """RFC 9795 sections 5-8: rcd object, crn string, rcdi only with rcd."""
    found: list[Finding] = []
    rcd, rcdi, crn = payload.get("rcd"), payload.get("rcdi"), payload.get("crn")
    if ppt == "rcd" and rcd is None and crn is None:
        found.append(error(Reason.INVALID_RCD, "ppt rcd requires an rcd or crn claim"))
    if rcd is not None:
        if not isinstance(rcd, dict):
            found.append(error(Reason.INVALID_RCD, "rcd is not a JSON object"))
        else:
            if not isinstance(rcd.get("nam"), str):
                found.append(error(Reason.INVALID_RCD, "rcd.nam must be a string"))
            if "jcd" in rcd and "jcl" in rcd:
                found.append(error(Reason.INVALID_RCD, "rcd has both jcd and jcl"))
            for key in ("apn", "icn", "jcl"):
                if key in rcd and not isinstance(rcd[key], str):
                    found.append(error(Reason.INVALID_RCD, f"rcd.{key} must be a string"))
    if crn is not None and not isinstance(crn, str):
        found.append(error(Reason.INVALID_RCD, "crn must be a string"))
    if rcdi is not None:
        if rcd is None:
            found.append(error(Reason.INVALID_RCD, "rcdi without rcd"))
        if not isinstance(rcdi, dict) or not all(isinstance(v, str) for v in rcdi.values()):
            found.append(error(Reason.INVALID_RCD, "rcdi must map JSON pointers to digests"))
    return found


def check_payload(payload: Mapping[str, object], ppt: str | None) -> list[Finding]:
    """Claim syntax for the baseline and each ppt; never raises, unknown claims are fine.

    Baseline: integer ``iat``, ``orig`` with exactly one of tn/uri, ``dest`` with non-empty
    tn/uri arrays. ``shaken``: attest A/B/C, non-empty origid (non-UUID is a warning). ``div``:
    a ``div`` identity and no ``opt``; ``div-o``: ``opt`` string. ``rph``: ``rph.auth`` array of
    strings. RCD claims wherever they appear. RFC 8225 section 5, RFC 8588 sections 4-5,
    RFC 8946 sections 3 and 5, RFC 8443 section 3, RFC 9027 section 4, RFC 9795 section 8;
    STANDARDS.md section 10 step 9.
    """
    found: list[Finding] = []
    iat = payload.get("iat")
    if "iat" not in payload:
        found.append(error(Reason.INVALID_IAT, "iat claim missing"))
    elif not isinstance(iat, int) or isinstance(iat, bool):
        found.append(error(Reason.INVALID_IAT, f"iat must be an integer, got {iat!r}"))
    elif iat < 0:
        found.append(error(Reason.INVALID_IAT, f"negative iat {iat}"))
    if "orig" not in payload:
        found.append(error(Reason.INVALID_ORIG, "orig claim missing"))
    else:
        found += _check_party(payload["orig"], Reason.INVALID_ORIG, "orig")
    if "dest" not in payload:
        found.append(error(Reason.INVALID_DEST, "dest claim missing"))
    else:
        found += _check_dest(payload["dest"])

    if ppt == "shaken":
        attest = payload.get("attest")
        if not isinstance(attest, str) or attest not in ATTEST_LEVELS:
            found.append(error(Reason.INVALID_ATTEST, f"attest must be A, B or C: {attest!r}"))
        origid = payload.get("origid")
        if not isinstance(origid, str) or not origid:
            found.append(error(Reason.INVALID_ORIGID, "origid must be a non-empty string"))
        elif UUID_RE.fullmatch(origid) is None:
            found.append(warning(Reason.INVALID_ORIGID, f"origid {origid!r} is not a UUID"))
    elif ppt in ("div", "div-o"):
        if "div" not in payload:
            found.append(error(Reason.INVALID_DIV, f"ppt {ppt} without a div claim"))
        else:
            found += _check_party(payload["div"], Reason.INVALID_DIV, "div")
        if ppt == "div" and "opt" in payload:
            found.append(error(Reason.INVALID_DIV, "a div PASSporT must not carry opt"))
        if ppt == "div-o" and not isinstance(payload.get("opt"), str):
            found.append(error(Reason.INVALID_DIV, "a div-o PASSporT needs an opt string"))
    elif ppt == "rph":
        rph = payload.get("rph")
        auth = rph.get("auth") if isinstance(rph, dict) else None
        if not isinstance(auth, list) or not auth or not all(isinstance(a, str) for a in auth):
            found.append(error(Reason.INVALID_RPH, "rph.auth must be a non-empty string array"))
        if "sph" in payload and payload["sph"] != "psap-callback":
            found.append(error(Reason.INVALID_RPH, "sph must be 'psap-callback'"))
    found += _check_rcd_claims(payload, ppt)
    return found
