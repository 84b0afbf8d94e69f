"""Capture anomalies: the "weird" side channel of the capture layers (never a crash).

Every layer below SIP (capture file, link layer, defragmentation, TCP reassembly, HEP) reports
what it could not read as an ``Anomaly`` carrying the frame number and capture time, so the
evidence can point at the exact packet, in the spirit of Zeek's ``weird.log``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class AnomalyKind(StrEnum):
    """Stable snake_case anomaly codes (used in JSON output and tests); never rename one."""

    # Capture file (pcapfile.py).
    TRUNCATED_RECORD = "truncated_record"
    TRUNCATED_CAPTURE = "truncated_capture"
    CORRUPT_BLOCK = "corrupt_block"
    UNKNOWN_LINK_TYPE = "unknown_link_type"
    # Link, network and transport layers (linklayer.py).
    MALFORMED_PACKET = "malformed_packet"
    TRUNCATED_PACKET = "truncated_packet"
    BAD_CHECKSUM = "bad_checksum"
    TLS_FLOW = "tls_flow"
    # IP fragment reassembly (defrag.py).
    FRAGMENT_TIMEOUT = "fragment_timeout"
    FRAGMENT_OVERLAP = "fragment_overlap"
    FRAGMENT_LIMIT = "fragment_limit"
    # TCP reassembly (tcpstream.py).
    TCP_GAP = "tcp_gap"
    TCP_RETRANSMISSION_CONFLICT = "tcp_retransmission_conflict"
    # HEP encapsulation (hep.py).
    HEP_MALFORMED = "hep_malformed"
    HEP_UNSUPPORTED = "hep_unsupported"
    # SIP layer and above (capture.py, calls.py, assess.py).
    SIP_UNPARSEABLE = "sip_unparseable"
    SIP_FRAMING = "sip_framing"
    SIP_MISSING_CALL_ID = "sip_missing_call_id"
    MALFORMED_IDENTITY = "malformed_identity"
    CALL_EVICTED = "call_evicted"


@dataclass(frozen=True, slots=True)
class Anomaly:
    """One thing the capture layers could not read cleanly.

    ``frame`` is the 1-based frame number in the capture (as Wireshark counts) and ``ts_ns``
    the capture time in integer nanoseconds since the epoch; both are ``None`` when the
    anomaly is not tied to one packet (for example a corrupt file header). ``source_file`` is
    the index of the input when several captures are merged.

    Zeek ``weird.log`` (the model for a non-fatal anomaly side channel).
    """

    kind: AnomalyKind
    frame: int | None
    ts_ns: int | None
    detail: str
    source_file: int = 0
