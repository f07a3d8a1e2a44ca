"""Self-contained interactive pages: plotly figures and HTML in one file, plotly's JavaScript inlined
once, so a page opens offline and inside MLflow's artifact viewer (the Pareto page, the explain page)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def html_page(path: Path, title: str, parts: list[Any]) -> Path:
    """One self-contained page: ``parts`` in order, each a plotly figure or an HTML string; plotly's
    JavaScript is inlined once (no network: the page opens offline and in MLflow's artifact viewer).
    Written to a temporary name first, so a page is never half-written."""
    import html

    import plotly.io as pio
    from plotly.offline import get_plotlyjs

    body = "".join(p if isinstance(p, str) else pio.to_html(p, include_plotlyjs=False, full_html=False,
                                                                auto_play=False)
                   for p in parts)
    page = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<script type='text/javascript'>{get_plotlyjs()}</script>"
            "<style>body{font-family:sans-serif;max-width:1300px;margin:auto;padding:1em}"
            "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}"
            "section{margin-top:2em;border-top:2px solid #444}</style></head><body>" + body + "</body></html>")
    from cellsearch.files import write_text

    path = Path(path)
    write_text(path, page)
    return path
