"""What traceback needs of one analysed call, read from its call-record JSON.

Traceback works the same from a capture (records made now) and from the JSONL `stirscope
analyze` wrote earlier: both are read through ``CallFacts.from_json`` (the JSONL shape of
``analyzer.records.CallRecord``; the ``passports`` array is `stirscope verify --json`'s). A
record that does not have that shape raises ``ValueError`` (the caller names the line).

Numbers: call records hold canonical TNs (digits only, RFC 8224 section 8.3); ``e164`` turns
them into ``+`` form, assuming NANP (+1) only for 10-digit numbers starting with 2-9 (ITU-T
E.164; NANP numbering plan), and ``itg_number`` gives the 10-digit form US traceback portals
use for NANP numbers (TRACEBACK.md section 6.6).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from analyzer.traceback_directory import split_endpoint

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# E.164 numbers have at most 15 digits (ITU-T E.164 section 6); shorter than 8 is a short code.
E164_MIN_DIGITS, E164_MAX_DIGITS = 8, 15
NANP_DIGITS = 10
_URI_TN = re.compile(r"^(?:sips?:|tel:)\+?([0-9().\-]+)(?=[@;?>]|$)", re.IGNORECASE)


def e164(tn: str | None) -> str | None:
    """``+`` form of a canonical TN, or None when it is not a plausible E.164 number."""
    if not tn:
        return None
    digits = tn.lstrip("+")
    if not digits.isdigit():
        return None
    if len(digits) == NANP_DIGITS and digits[0] in "23456789":
        return "+1" + digits
    if E164_MIN_DIGITS <= len(digits) <= E164_MAX_DIGITS:
        return "+" + digits
    return None


def itg_number(number: str | None) -> str | None:
    """NANP numbers as 10 digits, others in E.164 (TRACEBACK.md section 6.6)."""
    if number and number.startswith("+1") and len(number) == NANP_DIGITS + 2:
        return number[2:]
    return number


def uri_tn(uri: str | None) -> str | None:
    """The telephone number in a ``sip:+1...@`` / ``tel:`` URI's user part (RFC 3966)."""
    if not uri:
        return None
    m = _URI_TN.match(uri.strip())
    if m is None:
        return None
    digits = re.sub(r"[().\-]", "", m.group(1))
    return digits or None


def iso_ms(ts_ns: int) -> str:
    """ISO 8601 UTC to the millisecond (``2026-01-15T12:00:00.123Z``)."""
    moment = _EPOCH + timedelta(microseconds=ts_ns // 1000)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def local_ms(ts_ns: int, zone: ZoneInfo) -> str:
    """ISO 8601 local time with its UTC offset, to the millisecond."""
    moment = (_EPOCH + timedelta(microseconds=ts_ns // 1000)).astimezone(zone)
    return moment.isoformat(timespec="milliseconds")


def _str(obj: Mapping[str, object], key: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"{key} is not a string")
    return value


def _int(obj: Mapping[str, object], key: str) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{key} is not an integer")
    return value


def _bool(obj: Mapping[str, object], key: str) -> bool | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise ValueError(f"{key} is not a boolean")
    return value


def _obj(obj: Mapping[str, object], key: str) -> Mapping[str, object] | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ValueError(f"{key} is not an object")
    return value


def _list(obj: Mapping[str, object], key: str) -> list[object]:
    value = obj.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise ValueError(f"{key} is not an array")
    return value


@dataclass(frozen=True, slots=True)
class SignerFacts:
    """The signing certificate as the verifier recorded it (RFC 8226; TNAuthList SPC)."""

    spc: str | None
    organization: str | None
    subject: str | None
    issuer: str | None
    serial: str | None
    not_before: str | None
    not_after: str | None
    fingerprint_sha256: str | None
    chain_trusted: bool
    revocation: str | None

    @classmethod
    def from_json(cls, obj: Mapping[str, object]) -> SignerFacts:
        return cls(
            spc=_str(obj, "spc"),
            organization=_str(obj, "organization"),
            subject=_str(obj, "subject"),
            issuer=_str(obj, "issuer"),
            serial=_str(obj, "serial"),
            not_before=_str(obj, "not_before"),
            not_after=_str(obj, "not_after"),
            fingerprint_sha256=_str(obj, "fingerprint_sha256"),
            chain_trusted=bool(_bool(obj, "chain_trusted")),
            revocation=_str(obj, "revocation"),
        )


@dataclass(frozen=True, slots=True)
class PassportFacts:
    """One Identity header's outcome (the ``passports[]`` element of `verify --json`)."""

    index: int
    ppt: str | None
    ignored: bool
    valid: bool
    reason: str | None
    attest: str | None
    origid: str | None
    orig: str | None
    dest: tuple[str, ...]
    div: str | None
    iat: int | None
    x5u: str | None
    signature_valid: bool | None
    signer: SignerFacts | None
    signature_sha256: str | None = None

    @classmethod
    def from_json(cls, obj: Mapping[str, object], digest: str | None) -> PassportFacts:
        signer = _obj(obj, "signer")
        return cls(
            index=_int(obj, "index") or 0,
            ppt=_str(obj, "ppt"),
            ignored=bool(_bool(obj, "ignored")),
            valid=bool(_bool(obj, "valid")),
            reason=_str(obj, "reason"),
            attest=_str(obj, "attest"),
            origid=_str(obj, "origid"),
            orig=_str(obj, "orig"),
            dest=tuple(str(d) for d in _list(obj, "dest")),
            div=_str(obj, "div"),
            iat=_int(obj, "iat"),
            x5u=_str(obj, "x5u"),
            signature_valid=_bool(obj, "signature_valid"),
            signer=SignerFacts.from_json(signer) if signer is not None else None,
            signature_sha256=digest,
        )

    @property
    def is_shaken(self) -> bool:
        """A SHAKEN PASSporT (RFC 8588), or a baseline one (no ppt, RFC 8225)."""
        return self.ppt in ("shaken", None) and not self.ignored

    @property
    def is_div(self) -> bool:
        return self.ppt == "div" and not self.ignored


@dataclass(frozen=True, slots=True)
class CallFacts:
    """One analysed call, as traceback reads it from its call record (JSONL shape)."""

    call_id: str
    start_ns: int
    src: str | None
    dst: str | None
    transport: str | None
    frames: tuple[int, ...]
    legs: int
    request_uri: str | None
    from_raw: str | None
    from_tn: str | None
    to_raw: str | None
    to_tn: str | None
    pai_raw: str | None
    pai_tn: str | None
    final_status: int | None
    state: str | None
    verstat: str | None
    reason: str | None
    at: str | None
    observed_verstat: str | None
    passports: tuple[PassportFacts, ...]
    has_signatures: bool
    recorded_replay: Mapping[str, object] | None
    error: str | None

    @classmethod
    def from_json(cls, obj: Mapping[str, object]) -> CallFacts:
        """Read a call record; ``ValueError`` when a field has the wrong type."""
        call_id = _str(obj, "call_id")
        start_ns = _int(obj, "start_ns")
        if call_id is None or start_ns is None:
            raise ValueError("a call record needs call_id and start_ns")
        legs = [leg for leg in _list(obj, "legs") if isinstance(leg, dict)]
        # The first leg the INVITE was seen on is where it entered our network.
        src = _str(legs[0], "src") if legs else _str(obj, "src")
        dst = _str(legs[0], "dst") if legs else _str(obj, "dst")
        parties = {k: _obj(obj, k) or {} for k in ("from", "to", "pai")}
        signatures = obj.get("signatures")
        digests = [d if isinstance(d, str) else None for d in _list(obj, "signatures")]
        passports = tuple(
            PassportFacts.from_json(p, digests[i] if i < len(digests) else None)
            for i, p in enumerate(_list(obj, "passports"))
            if isinstance(p, dict)
        )
        return cls(
            call_id=call_id,
            start_ns=start_ns,
            src=src,
            dst=dst,
            transport=_str(obj, "transport"),
            frames=tuple(f for f in _list(obj, "frames") if isinstance(f, int)),
            legs=max(1, len(legs)),
            request_uri=_str(obj, "request_uri"),
            from_raw=_str(parties["from"], "raw"),
            from_tn=_str(parties["from"], "tn"),
            to_raw=_str(parties["to"], "raw"),
            to_tn=_str(parties["to"], "tn"),
            pai_raw=_str(parties["pai"], "raw"),
            pai_tn=_str(parties["pai"], "tn"),
            final_status=_int(obj, "final_status"),
            state=_str(obj, "state"),
            verstat=_str(obj, "verstat"),
            reason=_str(obj, "reason"),
            at=_str(obj, "at"),
            observed_verstat=_str(obj, "observed_verstat"),
            passports=passports,
            has_signatures=isinstance(signatures, list),
            recorded_replay=_obj(obj, "replay"),
            error=_str(obj, "error"),
        )

    @property
    def ingress(self) -> tuple[str | None, int | None]:
        return split_endpoint(self.src)

    @property
    def shaken(self) -> PassportFacts | None:
        """The SHAKEN PASSporT that speaks for the call: the first valid, else the first."""
        candidates = [p for p in self.passports if p.is_shaken]
        for p in candidates:
            if p.valid:
                return p
        return candidates[0] if candidates else None

    @property
    def divs(self) -> tuple[PassportFacts, ...]:
        return tuple(p for p in self.passports if p.is_div)

    @property
    def is_signed(self) -> bool:
        """Identity headers were present (whatever their fate)."""
        return bool(self.passports)

    @property
    def calling_tn(self) -> str | None:
        """P-Asserted-Identity first, else From (TRACEBACK.md section 6.4 ``calling_number``)."""
        return self.pai_tn or self.from_tn

    @property
    def failed(self) -> bool:
        """Verification failed, or could not run at all."""
        return self.verstat == "TN-Validation-Failed" or (
            self.verstat is None and self.error is not None
        )
