"""URLs of stagetrace's Django dev page. Opt in from your URLconf::

    urlpatterns = [
        ...,
        path("__stagetrace__/", include("stagetrace.django.urls")),
    ]

``__stagetrace__/`` shows the last requests the ``memory`` sink kept, with their waterfalls —
JSON APIs and fetch/XHR calls included — and ``__stagetrace__/json/`` (or ``?format=json``)
the same as JSON. Only when ``DEBUG`` is on or for staff users; a 404 for anyone else.
"""

from __future__ import annotations

from django.urls import path

from . import _devpage

app_name = "stagetrace"
urlpatterns = [
    path("", _devpage.page, name="recent"),
    path("json/", _devpage.as_json, name="recent-json"),
]
