"""Traceback writers: JSONL/JSON documents, the portal CSV and the HTML campaign report.

CSV: one row per candidate with the incident data a traceback portal asks for (calling and
called number, UTC and local time with the zone, the provider we received the call from) and
the signed-origin columns an analyst attaches (TRACEBACK.md section 1.3 "Incident Data" and
section 5.2 per-call table). HTML: a self-contained page (no script, everything escaped) with
the campaigns section (``render_campaigns_html``, reusable by other reports) and a candidates
table.

TRACEBACK.md sections 1.3, 5.2 and 6; HTML Living Standard section 13.1 (escaping text).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

from analyzer.report_html import CSS
from analyzer.traceback_campaign import Campaign

CSV_FIELDS = (
    "candidate_id", "calling_number", "calling_number_e164", "called_number",
    "called_number_e164", "call_datetime_utc", "call_datetime_local", "time_zone",
    "hop_response", "received_from", "received_from_name_source", "received_from_spc",
    "received_from_rmd_number", "received_from_unresolved", "ingress", "transport", "trunk",
    "sip_call_id", "final_status", "attest", "origid", "signer_spc", "signer_name",
    "signer_name_source", "certificate_organization", "certificate_fingerprint_sha256", "x5u",
    "verstat", "reason", "verified_at", "signer_status", "signer_confidence", "div_spcs",
    "replay", "campaign_ids", "selected_by", "comment", "review_required", "record_sha256",
)  # fmt: skip


def jsonl_line(candidate: Mapping[str, Any]) -> str:
    """One candidate as a compact JSON line (fixed key order: byte-identical output)."""
    return json.dumps(candidate, ensure_ascii=False, separators=(",", ":")) + "\n"


def json_document(
    candidates: Sequence[Mapping[str, Any]],
    campaigns: Sequence[Campaign],
    summary: Mapping[str, object],
    run: Mapping[str, object],
) -> str:
    """``--format json``: run description, summary, campaigns and every candidate."""
    document = {
        "schema": "urn:stirscope:traceback-candidate:v1",
        "run": dict(run),
        "summary": dict(summary),
        "campaigns": [c.to_json() for c in campaigns],
        "candidates": list(candidates),
    }
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def _hop(candidate: Mapping[str, Any], role: str) -> Mapping[str, Any]:
    return next((h for h in candidate["hops"] if h["role"] == role), {})


def csv_row(c: Mapping[str, Any]) -> list[str]:
    """The CSV row of a candidate, in ``CSV_FIELDS`` order (empty string for null)."""
    call, prefill, origin = c["call"], c["itg_prefill"], c.get("attested_origin") or {}
    upstream = c["hops"][1]
    peer = upstream.get("provider") or {}
    ingress = upstream.get("ingress") or {}
    signer = _hop(c, "signer")
    provider = signer.get("provider") or {}
    divs = [h["provider"].get("spc") or "?" for h in c["hops"] if h["role"] == "diverting_provider"]
    src = ingress.get("src_ip")
    if src is not None and ingress.get("src_port") is not None:
        src = f"[{src}]:{ingress['src_port']}" if ":" in src else f"{src}:{ingress['src_port']}"
    values: list[object] = [
        c["candidate_id"], prefill["calling_number"], call["calling_number"],
        prefill["called_number"], call["called_number"], prefill["call_datetime_utc"],
        prefill["call_datetime_local"], prefill["time_zone"], prefill["hop_response"],
        peer.get("name"), peer.get("name_source"), peer.get("spc"), peer.get("rmd_number"),
        prefill["received_from_unresolved"], src, ingress.get("transport"),
        ingress.get("trunk_id"), call["sip_call_id"], call.get("final_status"),
        origin.get("attest"), origin.get("origid"), provider.get("spc"), provider.get("name"),
        provider.get("name_source"), provider.get("certificate_organization"),
        origin.get("certificate_fingerprint_sha256"), origin.get("x5u"),
        c["stir_shaken"]["summary"]["verstat"], c["stir_shaken"]["summary"]["reason"],
        origin.get("verified_at"), signer.get("inferred_status"), signer.get("confidence"),
        " ".join(divs), ",".join((c.get("replay") or {}).get("kinds", [])),
        " ".join(c["campaign_ids"]), ",".join(c["selected_by"]), prefill["comment"],
        c["review_required"], c["record_sha256"],
    ]  # fmt: skip
    out = []
    for v in values:
        if v is None:
            out.append("")
        elif isinstance(v, bool):
            out.append("true" if v else "false")
        else:
            out.append(str(v))
    return out


def csv_text(candidates: Sequence[Mapping[str, Any]]) -> str:
    """Header and one row per candidate (RFC 4180 quoting, ``\\n`` line ends)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    for candidate in candidates:
        writer.writerow(csv_row(candidate))
    return buf.getvalue()


def _e(value: object) -> str:
    return escape("" if value is None else str(value), quote=True)


def _counts(mapping: Mapping[str, object]) -> str:
    return ", ".join(f"{k} {v}" for k, v in mapping.items()) or "-"


def render_campaigns_html(campaigns: Sequence[Campaign]) -> str:
    """The campaigns section: one row per campaign with its summary (TRACEBACK.md 5.2)."""
    if not campaigns:
        return '<h2>Campaigns</h2><p class="none">No campaign (no group of calls).</p>'
    head = (
        "campaign", "kind", "calls", "first seen (UTC)", "last seen (UTC)", "calling numbers",
        "signers", "attestation", "verdicts", "upstream peers", "possible replays",
    )  # fmt: skip
    rows = ["<tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>"]
    for campaign in campaigns:
        j = campaign.to_json()
        cells = (
            j["campaign_id"], j["kind"], j["count"], j["first_seen"], j["last_seen"],
            j["distinct_calling_numbers"], _counts(j["signers"]),  # type: ignore[arg-type]
            _counts(j["attestation"]), _counts(j["verstat"]),  # type: ignore[arg-type]
            _counts(j["upstream_peers"]), j["possible_replays"],  # type: ignore[arg-type]
        )  # fmt: skip
        rows.append("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in cells) + "</tr>")
    return "<h2>Campaigns</h2><table>" + "".join(rows) + "</table>"


def _candidates_table(candidates: Sequence[Mapping[str, Any]]) -> str:
    head = (
        "call time (UTC)", "calling", "called", "received from", "signer", "attest",
        "signer status", "confidence", "verstat / reason", "replay", "selected by",
    )  # fmt: skip
    rows = ["<tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>"]
    for c in candidates:
        row = dict(zip(CSV_FIELDS, csv_row(c), strict=True))
        verdict = row["verstat"] + (f" / {row['reason']}" if row["reason"] else "")
        signer = row["signer_spc"] + (f" ({row['signer_name']})" if row["signer_name"] else "")
        cells = (
            row["call_datetime_utc"], row["calling_number_e164"], row["called_number_e164"],
            row["received_from"] or "(unresolved)", signer or "-", row["attest"] or "-",
            row["signer_status"] or "unsigned", row["signer_confidence"] or "-", verdict or "-",
            row["replay"] or "-", row["selected_by"],
        )  # fmt: skip
        rows.append("<tr>" + "".join(f"<td>{_e(x)}</td>" for x in cells) + "</tr>")
    return "<table>" + "".join(rows) + "</table>"


def render_traceback_html(
    candidates: Sequence[Mapping[str, Any]],
    campaigns: Sequence[Campaign],
    summary: Mapping[str, object],
    run: Mapping[str, object],
    title: str = "stirscope traceback candidates",
) -> str:
    """The whole report: overview, campaigns, candidates and the run description."""
    overview = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in summary.items())
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        "<p>Pre-filled for review: every candidate needs a person to confirm it before "
        "anything is submitted; traceback outcomes are left for people to fill.</p>",
        f"<h2>Overview</h2><table>{overview}</table>",
        render_campaigns_html(campaigns),
        "<h2>Candidates</h2>",
        _candidates_table(candidates),
        "<h2>Run</h2><pre>" + _e(json.dumps(run, indent=2, ensure_ascii=False)) + "</pre>",
        "</body></html>\n",
    ]
    return "\n".join(parts)
