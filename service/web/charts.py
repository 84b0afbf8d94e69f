"""Inline SVG for the web UI: horizontal bar charts and the call ladder (no JavaScript).

Each figure is an ``<svg role="img">`` with a ``<title>`` naming it, and the page shows the same
numbers in a table beside it, so nothing is conveyed by the drawing alone (WCAG 2.2 success
criteria 1.1.1 non-text content and 1.4.1 use of colour).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape

from markupsafe import Markup

# Bars drawn per chart (the rest are summed as "other"); the tables list every value.
MAX_BARS = 10
BAR_HEIGHT = 20
BAR_GAP = 6
LABEL_WIDTH = 210
BAR_WIDTH = 300
COUNT_WIDTH = 60
# Verdict colours, as the HTML report (analyzer.report_html); others use NEUTRAL.
VERDICT_COLOURS = {
    "TN-Validation-Passed": "#1a7f37",
    "TN-Validation-Failed": "#cf222e",
    "No-TN-Validation": "#8c959f",
    "error": "#9a6700",
}
ATTEST_COLOURS = {"A": "#1a7f37", "B": "#0969da", "C": "#9a6700", "none": "#8c959f"}
NEUTRAL = "#0969da"
# Ladder geometry: column spacing, row height, margins.
LANE_WIDTH = 230
LANE_MARGIN = 120
ROW_HEIGHT = 34
TOP = 48


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def _short(text: str, limit: int = 30) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def bar_chart(
    title: str, counts: Mapping[str, int], colours: Mapping[str, str] | None = None
) -> Markup:
    """A horizontal bar chart of ``counts`` (largest first), ``title`` as its accessible name."""
    items = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    if len(items) > MAX_BARS:
        rest = sum(n for _, n in items[MAX_BARS - 1 :])
        items = [*items[: MAX_BARS - 1], ("other", rest)]
    peak = max((n for _, n in items), default=0) or 1
    width = LABEL_WIDTH + BAR_WIDTH + COUNT_WIDTH
    height = max(1, len(items)) * (BAR_HEIGHT + BAR_GAP) + BAR_GAP
    parts = [
        f'<svg class="chart" role="img" viewBox="0 0 {width} {height}" '
        f'width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{_e(title)}</title>",
    ]
    if not items:
        parts.append(f'<text x="0" y="{BAR_HEIGHT}">no calls</text>')
    for n, (label, count) in enumerate(items):
        y = BAR_GAP + n * (BAR_HEIGHT + BAR_GAP)
        length = max(2, round(BAR_WIDTH * count / peak))
        colour = (colours or {}).get(label, NEUTRAL)
        middle = y + BAR_HEIGHT * 0.7
        parts.append(
            f'<text x="{LABEL_WIDTH - 8}" y="{middle:.0f}" text-anchor="end">'
            f"{_e(_short(label))}</text>"
            f'<rect x="{LABEL_WIDTH}" y="{y}" width="{length}" height="{BAR_HEIGHT}" '
            f'fill="{_e(colour)}"><title>{_e(label)}: {count}</title></rect>'
            f'<text x="{LABEL_WIDTH + length + 6}" y="{middle:.0f}">{count}</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def ladder_svg(endpoints: Sequence[str], steps: Sequence[Mapping[str, object]]) -> Markup:
    """The call ladder: one lifeline per endpoint, one arrow per request or response, top to
    bottom in order (RFC 3261 section 4 draws calls this way)."""
    lanes = {name: LANE_MARGIN + n * LANE_WIDTH for n, name in enumerate(endpoints)}
    width = LANE_MARGIN * 2 + max(0, len(endpoints) - 1) * LANE_WIDTH
    height = TOP + len(steps) * ROW_HEIGHT + 20
    parts = [
        f'<svg class="ladder" role="img" viewBox="0 0 {width} {height}" width="{width}" '
        f'height="{height}" xmlns="http://www.w3.org/2000/svg">',
        "<title>SIP ladder of the call</title>",
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8" '
        'markerHeight="8" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" '
        'fill="#24292f"/></marker></defs>',
    ]
    for name, x in lanes.items():
        parts.append(
            f'<text x="{x}" y="20" text-anchor="middle" class="lane">{_e(name)}</text>'
            f'<line x1="{x}" y1="30" x2="{x}" y2="{height - 10}" stroke="#8c959f" '
            'stroke-dasharray="4 3"/>'
        )
    for n, step in enumerate(steps):
        x1, x2 = lanes.get(str(step["source"])), lanes.get(str(step["target"]))
        if x1 is None or x2 is None:
            continue
        y = TOP + n * ROW_HEIGHT + 10
        label = str(step["label"])
        request = not label[:1].isdigit()
        colour = "#24292f" if request else "#0969da"
        parts.append(
            f'<line x1="{x1}" y1="{y}" x2="{x2}" y2="{y}" stroke="{colour}" '
            'stroke-width="1.5" marker-end="url(#arrow)"/>'
            f'<text x="{(x1 + x2) / 2:.0f}" y="{y - 5}" text-anchor="middle">{_e(label)}</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))
