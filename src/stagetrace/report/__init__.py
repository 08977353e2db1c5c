"""The HTML report: one self-contained page (no network access: CSS, JS and data inline) with
the request list, a waterfall per request showing each middleware's in- and out-phase around
the inner layers, stage details and findings.

``stagetrace report FILE.jsonl -o report.html`` writes it from recorded files; `render_html`
builds it from `Timeline` objects (the Django dev page serves it from the memory sink).
"""

from __future__ import annotations

from ._analyze import ensure_analyzed
from ._html import embed_json, page_meta, render_html, timeline_data

__all__ = ["embed_json", "ensure_analyzed", "page_meta", "render_html", "timeline_data"]
