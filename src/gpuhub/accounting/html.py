"""The HTML report: one self-contained file (inline CSS and SVG charts, nothing fetched), so it can
be mailed or dropped on any web space as is."""

from __future__ import annotations

from html import escape
from typing import Any

from gpuhub.accounting.records import now_iso
from gpuhub.accounting.report import ATTRIBUTION, Report, notes, period

PALETTE = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f",
           "#bab0ac"]
OTHER = "other"

_CSS = """
body { font: 14px/1.4 system-ui, sans-serif; color: #222; margin: 2em auto; max-width: 1000px; padding: 0 1em; }
h1 { font-size: 1.5em; margin-bottom: .2em; } h2 { font-size: 1.15em; margin-top: 2em; }
.meta { color: #555; } .warn { color: #8a5a00; }
table { border-collapse: collapse; margin-top: .5em; }
th, td { padding: .25em .8em; border-bottom: 1px solid #ddd; text-align: left; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.total td { font-weight: bold; border-top: 2px solid #999; }
svg text { font: 11px system-ui, sans-serif; fill: #333; }
"""


def to_html(report: Report, charts: dict[str, Report]) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>GPU hours {escape(period(report))}</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>GPU hours</h1>",
        f'<p class="meta">{escape(period(report))} &middot; sites: {escape(", ".join(report.sites) or "all")} '
        f"&middot; generated {escape(now_iso())} UTC</p>",
        f'<p class="meta">{escape(ATTRIBUTION)}.</p>',
        f"<p><strong>{report.total_gpu_hours:,.2f}</strong> {_unit(report)} in <strong>{report.total_jobs:,}"
        "</strong> jobs.</p>",
    ]
    parts += [f'<p class="meta">{escape(n)}.</p>' for n in notes(report)]
    parts += [f'<p class="warn">{escape(w)}</p>' for w in report.warnings]
    if "month_project" in charts:
        parts += [f"<h2>{_unit(report).capitalize()} per month, by project</h2>",
                  stacked_months(charts["month_project"])]
    if "user" in charts:
        parts += ["<h2>Top users</h2>", bars(charts["user"], "user", limit=10)]
    if "site" in charts:
        parts += ["<h2>Per site</h2>", bars(charts["site"], "site", limit=20)]
    parts += [f"<h2>By {escape(', '.join(report.by))}</h2>", _table(report), "</body></html>"]
    return "\n".join(parts) + "\n"


def _unit(report: Report) -> str:
    return "normalized GPU hours" if report.normalized else "GPU hours"


def _table(report: Report) -> str:
    value = report.value_column
    head = "".join(f"<th>{escape(d)}</th>" for d in report.by)
    rows = [f"<table><thead><tr>{head}<th class=num>{escape(value)}</th><th class=num>jobs</th></tr></thead><tbody>"]
    for r in report.rows:
        cells = "".join(f"<td>{escape(str(r[d]) or '-')}</td>" for d in report.by)
        rows.append(f"<tr>{cells}<td class=num>{r[value]:,.2f}</td><td class=num>{r['jobs']:,}</td></tr>")
    blank = "<td></td>" * (len(report.by) - 1)
    rows.append(f"<tr class=total><td>total</td>{blank}<td class=num>{report.total_gpu_hours:,.2f}</td>"
                f"<td class=num>{report.total_jobs:,}</td></tr>")
    rows.append("</tbody></table>")
    return "\n".join(rows)


def _nice(value: float) -> float:
    """A round axis maximum at or above ``value``."""
    if value <= 0:
        return 1.0
    magnitude = 10 ** (len(str(int(value))) - 1)
    for step in (1, 2, 2.5, 5, 10):
        if step * magnitude >= value:
            return step * magnitude
    return 10 * magnitude


def stacked_months(report: Report, width: int = 960, height: int = 320, series: int = 8) -> str:
    """Stacked bars: one bar per month, one colour per project (the largest ``series``, then other)."""
    value = report.value_column
    totals: dict[str, float] = {}
    for r in report.rows:
        totals[r["project"]] = totals.get(r["project"], 0.0) + r[value]
    top = [p for p, _ in sorted(totals.items(), key=lambda kv: -kv[1])[:series]]
    months = sorted({r["month"] for r in report.rows})
    stacks: dict[str, dict[str, float]] = {m: {} for m in months}
    for r in report.rows:
        name = r["project"] if r["project"] in top else OTHER
        stacks[r["month"]][name] = stacks[r["month"]].get(name, 0.0) + r[value]
    names = top + ([OTHER] if any(OTHER in s for s in stacks.values()) else [])
    if not months:
        return "<p>No usage in this period.</p>"
    left, bottom, top_pad = 60, 40, 10
    plot_w, plot_h = width - left - 170, height - bottom - top_pad
    vmax = _nice(max(sum(s.values()) for s in stacks.values()))
    bar = plot_w / len(months)
    out = [_svg_open(width, height, "GPU hours per month, stacked by project")]
    out += _y_axis(left, top_pad, plot_w, plot_h, vmax)
    for i, month in enumerate(months):
        x = left + i * bar + bar * 0.15
        y = top_pad + plot_h
        for k, name in enumerate(names):
            v = stacks[month].get(name, 0.0)
            if v <= 0:
                continue
            h = v / vmax * plot_h
            y -= h
            out.append(f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar * 0.7:.1f}" height="{h:.1f}" '
                       f'fill="{PALETTE[k % len(PALETTE)]}"><title>{escape(month)} {escape(name)}: '
                       f"{v:,.1f}</title></rect>")
        if len(months) <= 24 or i % max(1, len(months) // 12) == 0:
            out.append(f'<text x="{left + i * bar + bar / 2:.1f}" y="{top_pad + plot_h + 16}" '
                       f'text-anchor="middle">{escape(month)}</text>')
    for k, name in enumerate(names):
        y = top_pad + 14 + k * 18
        out.append(f'<rect x="{width - 160}" y="{y - 10}" width="12" height="12" fill="{PALETTE[k % len(PALETTE)]}"/>'
                   f'<text x="{width - 142}" y="{y}">{escape(name or "-")}</text>')
    out.append("</svg>")
    return "\n".join(out)


def bars(report: Report, dim: str, limit: int = 10, width: int = 960) -> str:
    """Horizontal bars, largest first."""
    value = report.value_column
    rows: list[dict[str, Any]] = sorted(report.rows, key=lambda r: -r[value])[:limit]
    if not rows:
        return "<p>No usage in this period.</p>"
    label_w, row_h = 180, 22
    height = row_h * len(rows) + 30
    plot_w = width - label_w - 110
    vmax = _nice(rows[0][value])
    out = [_svg_open(width, height, f"GPU hours by {dim}")]
    for i, r in enumerate(rows):
        y = 10 + i * row_h
        w = r[value] / vmax * plot_w
        out.append(f'<text x="{label_w - 8}" y="{y + 14}" text-anchor="end">{escape(str(r[dim]) or "-")}</text>'
                   f'<rect x="{label_w}" y="{y + 3}" width="{w:.1f}" height="{row_h - 6}" fill="{PALETTE[0]}">'
                   f"<title>{escape(str(r[dim]))}: {r[value]:,.1f}</title></rect>"
                   f'<text x="{label_w + w + 6:.1f}" y="{y + 14}">{r[value]:,.1f}</text>')
    out.append("</svg>")
    return "\n".join(out)


def _svg_open(width: int, height: int, label: str) -> str:
    # No xmlns: inline SVG in HTML needs none, and the file then holds no address at all.
    return (f'<svg role="img" aria-label="{escape(label)}" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}">')


def _y_axis(left: int, top: int, plot_w: float, plot_h: float, vmax: float) -> list[str]:
    out = []
    for k in range(5):
        v = vmax * k / 4
        y = top + plot_h - plot_h * k / 4
        out.append(f'<line x1="{left}" x2="{left + plot_w:.1f}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e5e5e5"/>'
                   f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{v:,.0f}</text>')
    return out
