"""A self-contained HTML report: summary, inline SVG charts, evidence, anomalies and calls.

One file an investigator can attach to a case: no script, no external stylesheet, font or
image (everything inline), every value from the capture escaped (SIP headers are chosen by
whoever sent the call: a display name can hold markup). Charts: attestation mix, verdicts over
time, calls per signer, failure reasons.

ARCHITECTURE.md section 2 (writers); HTML Living Standard section 13.1 (escaping text).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from html import escape

from analyzer.records import (
    NO_ATTEST,
    TIMELINE_BUCKET_NS,
    CallRecord,
    Summary,
    iso_ns,
)

# Bars in the "verdicts over time" chart: minute buckets are merged down to at most this many.
MAX_TIME_BARS = 48
# Rows in the per-signer and per-reason charts (the rest is summed into one "other" bar).
MAX_CHART_ROWS = 15
VERDICT_COLOURS = {
    "TN-Validation-Passed": "#2e7d32",
    "TN-Validation-Failed": "#c62828",
    "No-TN-Validation": "#9e9e9e",
    "error": "#ef6c00",
}
ATTEST_COLOURS = {"A": "#2e7d32", "B": "#f9a825", "C": "#ef6c00", NO_ATTEST: "#9e9e9e"}
DEFAULT_COLOUR = "#1565c0"
CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em;color:#212121}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:.85em}td,th{border:1px solid #ddd;padding:3px 6px;
text-align:left;vertical-align:top}th{background:#f5f5f5}.num{text-align:right}
.charts{display:flex;flex-wrap:wrap;gap:2em}.chart{flex:1 1 420px}code{font-size:.9em}
.passed{color:#2e7d32}.failed{color:#c62828}.none{color:#757575}
"""


def _e(value: object) -> str:
    return escape("" if value is None else str(value), quote=True)


def _hbars(items: Sequence[tuple[str, int]], colours: dict[str, str], title: str) -> str:
    """A horizontal bar chart as inline SVG."""
    if not items:
        return f'<p class="none">{_e(title)}: nothing to show.</p>'
    row, label_w, bar_w = 22, 230, 260
    top = max(n for _, n in items) or 1
    height = row * len(items) + 10
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_w + bar_w + 70}" '
        f'height="{height}" role="img" aria-label="{_e(title)}">'
    ]
    for i, (label, n) in enumerate(items):
        y = 5 + i * row
        width = max(1, round(bar_w * n / top))
        colour = colours.get(label, DEFAULT_COLOUR)
        short = label if len(label) <= 34 else label[:33] + "\u2026"
        parts.append(
            f'<text x="{label_w - 6}" y="{y + 15}" text-anchor="end" font-size="12">'
            f"{_e(short)}</text>"
            f'<rect x="{label_w}" y="{y + 3}" width="{width}" height="{row - 6}" '
            f'fill="{colour}"><title>{_e(label)}: {n}</title></rect>'
            f'<text x="{label_w + width + 4}" y="{y + 15}" font-size="12">{n}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _top(counter: Counter[str], limit: int = MAX_CHART_ROWS) -> list[tuple[str, int]]:
    ranked = sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))
    if len(ranked) <= limit:
        return ranked
    rest = sum(n for _, n in ranked[limit - 1 :])
    return [*ranked[: limit - 1], ("(other)", rest)]


def _timeline(summary: Summary) -> str:
    """Stacked bars of verdicts per time bucket (minute buckets merged to <= MAX_TIME_BARS)."""
    if not summary.timeline:
        return '<p class="none">Verdicts over time: no calls.</p>'
    first, last = min(summary.timeline), max(summary.timeline)
    span = last - first + 1
    merge = -(-span // MAX_TIME_BARS)
    bars: dict[int, Counter[str]] = {}
    for bucket, counts in summary.timeline.items():
        bars.setdefault((bucket - first) // merge, Counter()).update(counts)
    n_bars = (span + merge - 1) // merge
    width, height, left, bottom = 520, 180, 40, 40
    bar_w = max(2, (width - left) // max(n_bars, 1) - 2)
    top = max(sum(c.values()) for c in bars.values()) or 1
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width + 10}" height="{height + bottom}"'
        ' role="img" aria-label="verdicts over time">',
        f'<text x="0" y="12" font-size="11">{top}</text>',
        f'<line x1="{left - 2}" y1="{height}" x2="{width}" y2="{height}" stroke="#999"/>',
    ]
    for index in range(n_bars):
        counts = bars.get(index, Counter())
        x = left + index * (bar_w + 2)
        y = height
        for verdict in VERDICT_COLOURS:
            n = counts.get(verdict, 0)
            if not n:
                continue
            h = max(1, round((height - 20) * n / top))
            y -= h
            start = iso_ns((first + index * merge) * TIMELINE_BUCKET_NS)[:16]
            parts.append(
                f'<rect x="{x}" y="{y}" width="{bar_w}" height="{h}" '
                f'fill="{VERDICT_COLOURS[verdict]}"><title>{_e(start)}Z {_e(verdict)}: {n}'
                "</title></rect>"
            )
    first_label = iso_ns(first * TIMELINE_BUCKET_NS)[:16].replace("T", " ")
    last_label = iso_ns((first + n_bars * merge) * TIMELINE_BUCKET_NS)[:16].replace("T", " ")
    parts.append(
        f'<text x="{left}" y="{height + 16}" font-size="11">{_e(first_label)}</text>'
        f'<text x="{width}" y="{height + 16}" font-size="11" text-anchor="end">'
        f"{_e(last_label)} UTC</text>"
    )
    legend_x, legend_y = left, height + 26
    for verdict, colour in VERDICT_COLOURS.items():
        item_w = 14 + 7 * len(verdict) + 12
        if legend_x + item_w > width and legend_x > left:  # wrap instead of overflowing
            legend_x, legend_y = left, legend_y + 16
        parts.append(
            f'<rect x="{legend_x}" y="{legend_y}" width="10" height="10" fill="{colour}"/>'
            f'<text x="{legend_x + 14}" y="{legend_y + 9}" font-size="11">{_e(verdict)}</text>'
        )
        legend_x += item_w
    parts.append("</svg>")
    # The legend may have wrapped: grow the drawing to hold it.
    parts[0] = parts[0].replace(f'height="{height + bottom}"', f'height="{legend_y + 16}"', 1)
    return "".join(parts)


def _kv_table(rows: Sequence[tuple[str, object]]) -> str:
    body = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _verdict_class(verstat: str | None) -> str:
    if verstat == "TN-Validation-Passed":
        return "passed"
    if verstat == "TN-Validation-Failed":
        return "failed"
    return "none"


def _calls_table(records: Sequence[CallRecord]) -> str:
    head = (
        "start (UTC)", "Call-ID", "from", "to", "transport", "attest", "verstat", "code",
        "reason", "signer", "final", "frames",
    )  # fmt: skip
    rows = ["<tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>"]
    for r in records:
        signer = r.signer_spc or ""
        if r.signer_org:
            signer = f"{signer} ({r.signer_org})" if signer else r.signer_org
        transport = f"{r.encapsulation}/{r.transport}" if r.encapsulation else r.transport
        frames = " ".join(map(str, r.frames[:8])) + (" \u2026" if len(r.frames) > 8 else "")
        cells = (
            r.start.replace("T", " ").rstrip("Z"), r.call_id, r.from_.tn or r.from_.raw,
            r.to.tn or r.to.raw, transport, r.attest or "-", r.verstat or "error",
            r.status_code or "", r.reason or r.error or "", signer, r.final_status or "",
            frames,
        )  # fmt: skip
        tds = "".join(f"<td>{_e(c)}</td>" for c in cells)
        rows.append(f'<tr class="{_verdict_class(r.verstat)}">{tds}</tr>')
    return "<table>" + "".join(rows) + "</table>"


def _anomalies_table(anomalies: Sequence[dict[str, object]]) -> str:
    if not anomalies:
        return '<p class="none">No anomalies.</p>'
    rows = ["<tr><th>kind</th><th>frame</th><th>detail</th></tr>"]
    for a in anomalies:
        frame = a.get("frame")
        if a.get("source_file"):
            frame = f"{a['source_file']}:{frame}"
        rows.append(
            f"<tr><td>{_e(a.get('kind'))}</td><td class='num'>{_e(frame)}</td>"
            f"<td>{_e(a.get('detail'))}</td></tr>"
        )
    return "<table>" + "".join(rows) + "</table>"


def render_html(
    *,
    summary: Summary,
    manifest: dict[str, object],
    records: Sequence[CallRecord],
    anomalies: Sequence[dict[str, object]],
    omitted_records: int = 0,
    omitted_anomalies: int = 0,
    title: str = "stirscope capture analysis",
) -> str:
    """The whole report as one HTML document (UTF-8, no external resources)."""
    counts = manifest.get("counts")
    stats = counts if isinstance(counts, dict) else {}
    overview = [
        ("calls", summary.calls),
        ("first call", iso_ns(summary.first_ns) if summary.first_ns is not None else "-"),
        ("last call", iso_ns(summary.last_ns) if summary.last_ns is not None else "-"),
        *((k, v) for k, v in sorted(summary.verstat.items())),
        ("SIP messages", stats.get("sip_messages", "")),
        ("INVITE messages", stats.get("invite_messages", "")),
        ("anomalies", sum(summary.anomalies.values())),
    ]
    inputs = manifest.get("inputs")
    evidence: list[tuple[str, object]] = []
    for item in inputs if isinstance(inputs, list) else []:
        if isinstance(item, dict):
            evidence.append(
                (f"input {item.get('name')}", f"{item.get('size')} bytes, SHA-256 "
                 f"{item.get('sha256')}")
            )  # fmt: skip
    tool = manifest.get("tool")
    trust = manifest.get("trust_store")
    if isinstance(tool, dict):
        evidence.append(("tool", f"{tool.get('name')} {tool.get('version')}"))
    if isinstance(trust, dict):
        evidence.append(("trust store SHA-256", trust.get("fingerprint_sha256")))
        evidence.append(("trust anchors", "; ".join(map(str, trust.get("subjects") or []))))
    evidence.append(("verification time", json.dumps(manifest.get("verification_time"))))
    reasons = _top(summary.reasons)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        "<h2>Overview</h2>",
        _kv_table(overview),
        '<h2>Charts</h2><div class="charts">',
        f'<div class="chart"><h3>Attestation mix</h3>'
        f"{_hbars(_top(summary.attest), ATTEST_COLOURS, 'attestation mix')}</div>",
        f'<div class="chart"><h3>Verdicts over time</h3>{_timeline(summary)}</div>',
        f'<div class="chart"><h3>Calls per signer</h3>'
        f"{_hbars(_top(summary.signers), {}, 'calls per signer')}</div>",
        f'<div class="chart"><h3>Failure reasons</h3>'
        f"{_hbars(reasons, {}, 'failure reasons')}</div>",
        "</div>",
        "<h2>Evidence</h2>",
        _kv_table(evidence),
        "<h2>Anomalies</h2>",
        _kv_table(sorted(summary.anomalies.items())) if summary.anomalies else "",
        _anomalies_table(anomalies),
    ]
    if omitted_anomalies:
        parts.append(f"<p>{omitted_anomalies} more anomalies are counted above, not listed.</p>")
    parts += ["<h2>Calls</h2>", _calls_table(records)]
    if omitted_records:
        parts.append(
            f"<p>{omitted_records} more calls are in the summary but not listed here; use "
            "<code>--format jsonl</code> for every call.</p>"
        )
    parts.append(
        "<h2>Manifest</h2><pre>"
        + _e(json.dumps(manifest, indent=2, ensure_ascii=False, sort_keys=False))
        + "</pre></body></html>\n"
    )
    return "\n".join(parts)
