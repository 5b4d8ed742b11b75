"""A :class:`~gpuhub.accounting.report.Report` as text: table, CSV, JSON, Markdown, or HTML (html.py)."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from gpuhub.accounting.html import to_html
from gpuhub.accounting.report import FORMATS, Report, notes, period
from gpuhub.text import table


def _header(report: Report) -> list[str]:
    return [*report.by, report.value_column, "jobs"]


def _cells(report: Report, row: dict[str, Any], digits: int = 2) -> list[str]:
    return [*(str(row[d]) if row[d] != "" else "-" for d in report.by), f"{row[report.value_column]:.{digits}f}",
            str(row["jobs"])]


def to_table(report: Report) -> str:
    rows = [_cells(report, r) for r in report.rows]
    rows.append(["TOTAL", *[""] * (len(report.by) - 1), f"{report.total_gpu_hours:.2f}", str(report.total_jobs)])
    lines = [table(_header(report), rows)]
    lines += [f"# {n}" for n in notes(report)]
    return "\n".join(lines)


def to_csv(report: Report) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*_header(report), "provisional_gpu_hours"])
    for r in report.rows:
        writer.writerow([*(r[d] for d in report.by), f"{r[report.value_column]:.4f}", r["jobs"],
                         f"{r['provisional_gpu_hours']:.4f}"])
    return buf.getvalue().rstrip("\n")


def to_json(report: Report) -> str:
    return json.dumps(report.to_dict(), indent=2)


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def to_markdown(report: Report) -> str:
    head = _header(report)
    numeric = {report.value_column, "jobs"}
    lines = [f"GPU hours by {', '.join(report.by)}, {period(report)}", "",
             "| " + " | ".join(head) + " |",
             "| " + " | ".join("---:" if h in numeric else "---" for h in head) + " |"]
    lines += ["| " + " | ".join(_md(c) for c in _cells(report, r)) + " |" for r in report.rows]
    total = ["**total**", *[""] * (len(report.by) - 1), f"**{report.total_gpu_hours:.2f}**", f"**{report.total_jobs}**"]
    lines.append("| " + " | ".join(total) + " |")
    lines += ["", *(f"_{n}_" for n in notes(report))] if notes(report) else []
    return "\n".join(lines)


def render(report: Report, fmt: str, charts: dict[str, Report] | None = None) -> str:
    if fmt == "table":
        return to_table(report)
    if fmt == "csv":
        return to_csv(report)
    if fmt == "json":
        return to_json(report)
    if fmt == "markdown":
        return to_markdown(report)
    if fmt == "html":
        return to_html(report, charts or {})
    raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")
