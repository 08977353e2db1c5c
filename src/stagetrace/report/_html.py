"""Build the self-contained HTML page: the timelines as JSON in the page, the report's CSS and
JS inline, and a Content-Security-Policy that forbids every network fetch."""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
from collections.abc import Iterable, Sequence
from datetime import datetime, timezone
from functools import cache
from importlib import resources
from typing import Any

from .._model import KINDS, Finding, Timeline
from ..sinks._console import BIDI_CONTROLS
from ..sinks._jsonl import finite_json, replace_surrogates

__all__ = ["embed_json", "render_html", "timeline_data"]

_KIND_INDEX = {k: i for i, k in enumerate(KINDS)}

#: Characters that must not appear raw inside a <script> element's text (``</script>``,
#: ``<!--``) or that older JavaScript parsers treat as line ends.
_UNSAFE = {ord("<"): "\\u003c", ord(">"): "\\u003e", ord("&"): "\\u0026"}


def embed_json(data: Any) -> str:
    """JSON safe to place inside ``<script type="application/json">``: ``<``, ``>`` and ``&``
    escaped as ``\\u003c``..., everything outside ASCII (U+2028, U+2029, lone surrogates
    included) as ``\\uXXXX`` escapes. `JSON.parse` reads it back unchanged, except NaN and
    infinite numbers, which JSON lacks: they become the strings ``"NaN"``, ``"Infinity"`` and
    ``"-Infinity"`` (files written before the jsonl sink wrote them so hold bare tokens)."""
    try:
        text = json.dumps(data, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    except ValueError:
        text = json.dumps(finite_json(data), ensure_ascii=True, separators=(",", ":"))
    return text.translate(_UNSAFE)


#: Unicode bidi controls as the escapes `embed_json` writes, or an escaped backslash (kept, so
#: that a ``\\u202e`` typed as text is not taken for one).
_BIDI_ESCAPE = re.compile(r"\\(?:\\|u(?:202[a-e]|206[6-9]|200[ef]|061c))")
_BIDI = dict.fromkeys(map(ord, BIDI_CONTROLS), "\ufffd")


def _no_bidi(embedded: str) -> str:
    """`embedded` JSON with each bidi control as U+FFFD. Escaping does not help against them:
    shown as text, an override in a path (``/invoice-\\u202efdp.exe``) reverses the rest of
    it (``/invoice-exe.pdf``)."""
    return _BIDI_ESCAPE.sub(lambda m: m[0] if m[0] == "\\\\" else "\\ufffd", embedded)


def _text(text: str) -> str:
    """Text for the page's HTML, escaped; a lone surrogate (a file name or ``--title`` in
    another encoding) as U+FFFD, since the page is written as UTF-8 and could not be; a bidi
    control too."""
    return html.escape(replace_surrogates(text).translate(_BIDI))


@cache
def _asset(name: str) -> str:
    return (
        resources.files(__package__).joinpath("assets").joinpath(name).read_text(encoding="utf-8")
    )


def _csp_hash(text: str) -> str:
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    return "'sha256-" + base64.b64encode(digest).decode("ascii") + "'"


def _finding(f: Finding) -> dict[str, Any]:
    fp = f.attrs.get("fingerprint")
    return {
        "kind": f.kind,
        "message": f.message,
        "stages": list(f.stages),
        "fingerprint": fp if isinstance(fp, str) else None,
        "attrs": dict(f.attrs),
    }


def _time(unix_nano: int) -> str:
    try:
        moment = datetime.fromtimestamp(unix_nano / 1e9, tz=timezone.utc)
    except (OverflowError, OSError, ValueError):
        return ""
    return moment.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def timeline_data(tl: Timeline) -> dict[str, Any]:
    """One timeline in the page's compact form: stages as arrays
    ``[id, parent, kind index, name, start, duration, self, attrs, error, phases, short]``."""
    stages = [
        [
            s.id,
            s.parent,
            _KIND_INDEX.get(s.kind, _KIND_INDEX["custom"]),
            s.name,
            s.start_ns,
            s.duration_ns,
            s.self_ns,
            dict(s.attrs) if s.attrs else None,
            [s.error.type, s.error.message] if s.error is not None else None,
            [s.phases.get("in", 0), s.phases.get("out", 0)] if s.phases is not None else None,
            s.short_circuit,
        ]
        for s in tl.stages
    ]
    sent = None
    root = tl.root
    if root is not None:
        value = root.attrs.get("http.response.sent_ns")
        if type(value) is int:
            sent = value
    return {
        "trace_id": tl.trace_id,
        "request_id": tl.request_id,
        "service": tl.service,
        "framework": tl.framework,
        "protocol": tl.protocol,
        "method": tl.method,
        "path": tl.path,
        "route": tl.route,
        "name": tl.name,
        "status": tl.status,
        "start_ms": tl.start_unix_nano // 1_000_000,
        "time": _time(tl.start_unix_nano),
        "duration_ns": tl.duration_ns,
        "sent_ns": sent,
        "dropped_stages": tl.dropped_stages,
        "findings": [_finding(f) for f in tl.findings],
        "stages": stages,
    }


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="stagetrace {version}">
<title>{title}</title>
<style>{css}</style>
</head>
<body>
<header class="top"><h1>{title}</h1><span class="meta">{meta}</span>{reload}</header>
{notice}<main{main_class}>
<section id="list-pane">
<div class="filters">
<input type="search" id="f-text" aria-label="Filter"
 placeholder="Filter: path, route, status, id, error…">
<select id="f-route" aria-label="Route"><option value="">all routes</option></select>
<select id="f-status" aria-label="Status"><option value="">any status</option>
<option value="2xx">2xx</option><option value="3xx">3xx</option><option value="4xx">4xx</option>
<option value="5xx">5xx</option>
<option value="error" title="a 5xx, or an exception that ended the request (not a 4xx)">
errors</option>
</select>
<label><input type="checkbox" id="f-findings"> with findings</label>
<select id="f-sort" aria-label="Sort"><option value="slowest">slowest first</option>
<option value="fastest">fastest first</option><option value="newest">newest first</option>
<option value="oldest">oldest first</option></select>
</div>
<div id="count"></div>
<details class="overview" id="overview"><summary>Findings</summary></details>
<div id="list-wrap">
<table class="list"><thead><tr><th id="th-time">time (UTC)</th><th>request</th>
<th class="num">status</th><th class="num">ms</th><th class="num stages">stages</th></tr></thead>
<tbody id="list-body"></tbody></table>
<button class="more" id="more" hidden>Show more</button>
</div>
</section>
<section id="detail-pane"><div class="empty">No request selected.</div></section>
</main>
<script type="application/json" id="stagetrace-data">{data}</script>
<script>{js}</script>
</body>
</html>
"""


def render_html(
    timelines: Iterable[Timeline],
    *,
    title: str = "stagetrace report",
    meta: str = "",
    notice: str | None = None,
    total: int | None = None,
    reload_button: bool = False,
    sort: str = "slowest",
) -> str:
    """One HTML page showing `timelines`: a request list (filter, sort), a waterfall per
    request, stage details and findings. It loads nothing from anywhere: CSS, JS and data are
    inline, and its Content-Security-Policy forbids any other source. `notice` is shown above
    the list (plain text); `total` is how many timelines were read, when only some are given;
    `sort` the list's initial order: ``slowest``, ``fastest``, ``newest`` or ``oldest``."""
    if sort not in ("slowest", "fastest", "newest", "oldest"):
        raise ValueError(f"unknown sort order {sort!r}")
    data_list = [timeline_data(tl) for tl in timelines]
    data = {
        "kinds": list(KINDS),
        "total": total if total is not None else len(data_list),
        "sort": sort,
        "timelines": data_list,
    }
    from .. import __version__

    css, js = _asset("report.css"), _asset("report.js")
    csp = (
        f"default-src 'none'; script-src {_csp_hash(js)}; style-src {_csp_hash(css)}; "
        "img-src data:; base-uri 'none'; form-action 'none'"
    )
    return _PAGE.format(
        csp=csp,
        version=html.escape(__version__),
        title=_text(title),
        meta=_text(meta),
        reload='<button id="reload" type="button">Reload</button>' if reload_button else "",
        notice=f'<div class="notice" id="notice">{_text(notice)}</div>\n' if notice else "",
        main_class=' class="with-notice"' if notice else "",
        css=css,
        data=_no_bidi(embed_json(data)),
        js=js,
    )


def page_meta(count: int, total: int, sources: Sequence[str]) -> str:
    """The header line: how many requests, from where."""
    what = f"{count} request{'s' if count != 1 else ''}"
    if total > count:
        what += f" (the newest {count} of {total})"
    if sources:
        what += " from " + ", ".join(sources[:3]) + (" …" if len(sources) > 3 else "")
    return what
