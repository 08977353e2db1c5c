"""``OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS``: the semantic conventions' override of the HTTP
methods instrumentation knows (a full override, case-sensitive), read as stagetrace's
``http_known_methods`` option; spans through a real collector, metrics through the SDK."""

from __future__ import annotations

from typing import Any

import pytest

import stagetrace
from stagetrace.wsgi import StagetraceMiddleware
from tests.helpers import wsgi_environ

from .conftest import Collector

pytest.importorskip("opentelemetry.sdk")


def _app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def _request(method: str) -> None:
    app = StagetraceMiddleware(_app)
    body = app(wsgi_environ("/dav/", REQUEST_METHOD=method), lambda *a: None)
    b"".join(body)
    getattr(body, "close", lambda: None)()


def test_the_known_methods_variable_overrides_the_default_list_for_spans_and_metrics(
    collector: Collector, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS=GET,PROPFIND`` a WebDAV ``PROPFIND`` is a
    known method: its server span is named ``PROPFIND`` and carries it as
    ``http.request.method`` (no ``_OTHER``, no original), and so does its duration metric. The
    list replaces the default one (the conventions say: a full override), so ``POST`` is now
    ``_OTHER``."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS", "GET, PROPFIND")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.http_endpoint)
    reader = InMemoryMetricReader()
    stagetrace.configure(sinks=["otel"], meter_provider=MeterProvider(metric_readers=[reader]))
    _request("PROPFIND")
    _request("POST")
    assert stagetrace.flush()
    collector.wait_for_spans(2)
    roots = {}
    for span in collector.span_dicts():
        if span["kind"] == 2:  # SERVER
            attrs = span["attributes"]
            sent = attrs.get("http.request.method_original", attrs["http.request.method"])
            roots[sent] = span
    assert set(roots) == {"PROPFIND", "POST"}, roots
    propfind = roots["PROPFIND"]
    assert propfind["name"] == "PROPFIND"
    assert propfind["attributes"]["http.request.method"] == "PROPFIND"
    assert "http.request.method_original" not in propfind["attributes"]
    post = roots["POST"]
    assert post["name"] == "HTTP" and post["attributes"]["http.request.method"] == "_OTHER"

    data = reader.get_metrics_data()
    methods = {
        point.attributes["http.request.method"]
        for rm in data.resource_metrics
        for sm in rm.scope_metrics
        for metric in sm.metrics
        if metric.name == "http.server.request.duration"
        for point in metric.data.data_points
    }
    assert methods == {"PROPFIND", "_OTHER"}


def test_the_option_wins_over_the_variable_and_bad_values_fail_in_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``configure(http_known_methods=...)`` and ``STAGETRACE_HTTP_KNOWN_METHODS`` win over
    ``OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS``; without any, the conventions' list. A value
    that is not a list of HTTP method tokens fails at configuration in one line naming where
    it came from."""
    assert "QUERY" in stagetrace.configure().http_known_methods
    assert "PROPFIND" not in stagetrace.settings().http_known_methods
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS", "GET,PROPFIND")
    assert stagetrace.configure().http_known_methods == ("GET", "PROPFIND")
    monkeypatch.setenv("STAGETRACE_HTTP_KNOWN_METHODS", "GET,MKCOL")
    assert stagetrace.configure().http_known_methods == ("GET", "MKCOL")
    assert stagetrace.configure(http_known_methods=["get"]).http_known_methods == ("get",)
    stagetrace.reset()
    monkeypatch.delenv("STAGETRACE_HTTP_KNOWN_METHODS")
    monkeypatch.setenv("OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS", "GET,BAD METHOD")
    with pytest.raises(stagetrace.ConfigurationError) as info:
        stagetrace.configure()
    message = str(info.value)
    assert "\n" not in message
    assert "OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS" in message and "'BAD METHOD'" in message
    monkeypatch.delenv("OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS")
    with pytest.raises(stagetrace.ConfigurationError, match="http_known_methods"):
        stagetrace.configure(http_known_methods=42)
