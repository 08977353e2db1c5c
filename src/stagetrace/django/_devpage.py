"""The dev page: the last requests the ``memory`` sink kept, with their waterfalls (the HTML
report's page), and the same as JSON. Include ``stagetrace.django.urls`` to serve it.

Only with ``settings.DEBUG`` on or for a staff user; anyone else gets a 404, as if the page did
not exist. The page's own requests are not recorded (`stagetrace.discard`): they would push the
requests worth seeing out of the memory sink, and fill the console and JSON lines files.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse

from .. import SCHEMA, Timeline, discard, recent
from .. import settings as stagetrace_settings
from ..report import ensure_analyzed, page_meta, render_html
from ..sinks import MemorySink

#: Requests shown when ``?n=`` does not say.
DEFAULT_COUNT = 100
MAX_COUNT = 10_000

HINT = (
    "No memory sink is configured, so there is nothing to show yet. Keep the last requests in "
    "memory by adding it to your settings, beside any other sink:\n\n"
    '    STAGETRACE = {"sinks": ["console", "memory"], "memory_size": 100}\n\n'
    "or set the environment variable STAGETRACE_SINKS=memory (STAGETRACE_MEMORY_SIZE for how "
    "many requests it keeps), then reload this page."
)


def _allowed(request: HttpRequest) -> bool:
    if settings.DEBUG:
        return True
    user = getattr(request, "user", None)
    return bool(getattr(user, "is_active", False) and getattr(user, "is_staff", False))


def _enabled() -> bool:
    return any(isinstance(s, MemorySink) for s in stagetrace_settings().sinks)


def _count(request: HttpRequest) -> int:
    raw = request.GET.get("n")
    if raw is None:
        return DEFAULT_COUNT
    try:
        n = int(raw)
    except ValueError:
        return DEFAULT_COUNT
    return max(1, min(MAX_COUNT, n))


def _recent(request: HttpRequest) -> tuple[list[Timeline], int]:
    kept = recent()
    shown = kept[-_count(request) :]
    return [ensure_analyzed(t) for t in shown], len(kept)


def _begin(request: HttpRequest) -> None:
    if not _allowed(request):
        raise Http404("Page not found")
    discard()


def page(request: HttpRequest) -> HttpResponse:
    """The last requests with their waterfalls (``?n=`` how many, ``?format=json`` for JSON)."""
    _begin(request)
    if request.GET.get("format") == "json":
        return _json(request)
    enabled = _enabled()
    timelines, kept = _recent(request) if enabled else ([], 0)
    notice = None
    if not enabled:
        notice = HINT
    elif not timelines:
        notice = "The memory sink has kept no request yet: make some, then reload this page."
    html = render_html(
        timelines,
        title="stagetrace: recent requests",
        meta=page_meta(len(timelines), kept, ["the memory sink"]),
        notice=notice,
        total=kept,
        reload_button=True,
        sort="newest",
    )
    response = HttpResponse(html, content_type="text/html; charset=utf-8")
    _no_store(response)
    return response


def as_json(request: HttpRequest) -> HttpResponse:
    """The same requests as JSON: ``{"schema": <the timelines' schema>, "enabled": ..., "kept":
    ..., "timelines": [timeline@3, ...]}``."""
    _begin(request)
    return _json(request)


def _json(request: HttpRequest) -> HttpResponse:
    enabled = _enabled()
    timelines, kept = _recent(request) if enabled else ([], 0)
    body: dict[str, Any] = {
        "schema": SCHEMA,
        "enabled": enabled,
        "kept": kept,
        "timelines": [t.to_dict() for t in timelines],
    }
    if not enabled:
        body["hint"] = HINT
    response = JsonResponse(body)
    _no_store(response)
    return response


def _no_store(response: HttpResponse) -> None:
    response["Cache-Control"] = "no-store"
    response["X-Robots-Tag"] = "noindex"
