"""A job's HTML report: a title, the window, a few key figures and tables, self-contained (no scripts,
no external files), so it can be mailed, shared or opened from the lake with a presigned URL."""

from __future__ import annotations

import html
from collections.abc import Sequence
from datetime import datetime

import pandas as pd

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #1b1f24; }
h1 { font-size: 1.4rem; } h2 { font-size: 1.1rem; margin-top: 2rem; }
table { border-collapse: collapse; font-size: 0.85rem; }
th, td { border: 1px solid #d0d7de; padding: 0.25rem 0.5rem; text-align: right; }
th { background: #f6f8fa; } td:first-child, th:first-child { text-align: left; }
.figures { display: flex; gap: 2rem; } .figure b { display: block; font-size: 1.3rem; }
.bar { display: inline-block; height: 0.7rem; background: #3b82f6; }
"""


def figure_html(figures: dict[str, str]) -> str:
    items = "".join(
        f'<div class="figure"><b>{html.escape(value)}</b>{html.escape(label)}</div>'
        for label, value in figures.items()
    )
    return f'<div class="figures">{items}</div>'


def table_html(frame: pd.DataFrame, *, max_rows: int = 50, float_format: str = "{:,.3f}") -> str:
    """A frame as an HTML table (at most `max_rows` rows, saying how many were left out)."""
    shown = frame.head(max_rows)
    body: str = shown.to_html(
        index=False, border=0, na_rep="", float_format=lambda v: float_format.format(v), escape=True
    )
    if len(frame) > max_rows:
        body += f"<p>{len(frame) - max_rows:,} more rows in the lake table.</p>"
    return body


def bars_html(labels: Sequence[str], values: Sequence[float], *, unit: str = "", width_px: int = 300) -> str:
    """A horizontal bar chart as an HTML table (no scripts)."""
    top = max((abs(v) for v in values), default=0.0) or 1.0
    rows = "".join(
        f"<tr><td>{html.escape(str(label))}</td><td>{value:,.2f}{html.escape(unit)}</td>"
        f'<td style="text-align:left"><span class="bar" style="width:{int(width_px * abs(value) / top)}px">'
        "</span></td></tr>"
        for label, value in zip(labels, values, strict=True)
    )
    return f"<table>{rows}</table>"


def page(title: str, start: datetime, end: datetime, sections: Sequence[tuple[str, str]]) -> str:
    """The whole report: `sections` are (heading, HTML body) pairs."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p>Window: {start.isoformat()} to {end.isoformat()} (UTC).</p>",
    ]
    for heading, body in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>{body}")
    parts.append("</body></html>")
    return "".join(parts)
