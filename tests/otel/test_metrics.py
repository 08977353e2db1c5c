"""OpenTelemetry metrics from timelines (`stagetrace.otel._metrics`): the two histograms, their
attributes and values against the timelines, recorded on the pipeline's worker thread, from a
real Django app, with the SDK's InMemoryMetricReader."""

from __future__ import annotations

import os
import threading
from typing import Any

import pytest

pytest.importorskip("opentelemetry.sdk")
pytest.importorskip("django")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.djapp.settings")

import django

django.setup()

from django.http import JsonResponse  # noqa: E402
from django.test import Client, override_settings  # noqa: E402
from django.urls import path  # noqa: E402
from opentelemetry.sdk.metrics import MeterProvider  # noqa: E402
from opentelemetry.sdk.metrics.export import InMemoryMetricReader  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402

import stagetrace  # noqa: E402
from stagetrace._options import ConfigurationError  # noqa: E402
from stagetrace.otel._metrics import MetricsSink, StageMetrics, meter_provider_or_none  # noqa: E402

RECORDED_ON: list[str] = []


def item_view(request: Any, pk: int) -> JsonResponse:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.execute("SELECT 2")
    status = 500 if pk == 0 else 200
    return JsonResponse({"pk": pk}, status=status)


urlpatterns = [path("items/<int:pk>/", item_view)]


def _points(reader: InMemoryMetricReader, name: str) -> list[Any]:
    data = reader.get_metrics_data()
    out = []
    for rm in data.resource_metrics if data else ():
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                if metric.name == name:
                    assert metric.unit == "s"
                    out.extend(metric.data.data_points)
    return out


def _provider() -> tuple[MeterProvider, InMemoryMetricReader]:
    reader = InMemoryMetricReader()
    return MeterProvider(metric_readers=[reader]), reader


def _requests(n_ok: int, n_error: int) -> list[stagetrace.Timeline]:
    with override_settings(ROOT_URLCONF=__name__), stagetrace.capture() as got:
        client = Client(raise_request_exception=False)
        for i in range(n_ok):
            client.get(f"/items/{i + 1}/")
        for _ in range(n_error):
            client.get("/items/0/")
    stagetrace.flush()
    return list(got)


def test_the_otel_metrics_sink_records_both_histograms_from_a_django_app():
    """sinks=["otel-metrics"] with a meter_provider: one http.server.request.duration point
    per (route, method, status) with the requests' count and summed duration; one
    stagetrace.stage.duration measurement per kind per request, db.query's sum being the
    requests' db.query self time."""
    provider, reader = _provider()
    stagetrace.configure(sinks=["otel-metrics"], meter_provider=provider)
    timelines = _requests(3, 1)
    points = _points(reader, "http.server.request.duration")
    by_status = {p.attributes["http.response.status_code"]: p for p in points}
    assert set(by_status) == {200, 500}
    ok = by_status[200]
    assert dict(ok.attributes) == {
        "http.request.method": "GET",
        "url.scheme": "http",
        "network.protocol.version": "1.1",
        "http.route": "items/<int:pk>/",
        "http.response.status_code": 200,
    }
    assert ok.count == 3
    assert by_status[500].attributes["error.type"] == "500"
    expected = sum(tl.duration_ns for tl in timelines if tl.status == 200) / 1e9
    assert ok.sum == pytest.approx(expected, rel=1e-6)
    stage_points = {
        p.attributes["stagetrace.stage.kind"]: p
        for p in _points(reader, "stagetrace.stage.duration")
    }
    assert {"db.query", "view", "middleware"} <= set(stage_points)
    assert "gateway" not in stage_points
    db = stage_points["db.query"]
    assert db.count == 4 and db.attributes["http.route"] == "items/<int:pk>/"
    want = sum(tl.by_kind["db.query"].self_ns for tl in timelines) / 1e9
    assert db.sum == pytest.approx(want, rel=1e-6)


def test_a_request_that_raised_has_its_exception_as_error_type():
    """A request that ended with an exception (the WSGI app raised through the gateway: no
    status) gets ``error.type`` on ``http.server.request.duration`` — the exception's type,
    as on its server span — as the conventions require of a request that ended in error; and
    ``url.scheme``, which they require on every point."""
    from stagetrace.wsgi import StagetraceMiddleware
    from tests.helpers import wsgi_environ

    def app(environ: Any, start_response: Any) -> Any:
        raise LookupError("unlucky")

    provider, reader = _provider()
    stagetrace.configure(sinks=["otel-metrics"], meter_provider=provider)
    with stagetrace.capture() as got, pytest.raises(LookupError):
        StagetraceMiddleware(app)(wsgi_environ("/boom"), lambda *a: None)
    stagetrace.flush()
    assert got[0].root.error is not None
    (point,) = _points(reader, "http.server.request.duration")
    assert point.attributes["url.scheme"] == "http"
    assert point.attributes["error.type"] == got[0].root.error.type


def test_metrics_are_recorded_on_the_worker_not_the_request_thread(monkeypatch):
    """StageMetrics.record runs on the pipeline's worker thread."""
    provider, _ = _provider()
    real = StageMetrics.record

    def record(self: StageMetrics, tl: Any) -> None:
        RECORDED_ON.append(threading.current_thread().name)
        real(self, tl)

    monkeypatch.setattr(StageMetrics, "record", record)
    RECORDED_ON.clear()
    stagetrace.configure(sinks=["otel-metrics"], meter_provider=provider)
    _requests(2, 0)
    assert len(RECORDED_ON) == 2
    assert threading.main_thread().name not in RECORDED_ON


def test_without_a_meter_provider_the_sink_fails_at_configuration(monkeypatch):
    """sinks=["otel-metrics"] with no MeterProvider (option, or global SDK one set before)
    would record nothing: configuration fails, in one line that says what to do, as the
    ``otel`` sink does without anywhere to send spans — also with an OTLP endpoint set, which
    stagetrace does not export metrics to itself (docs/opentelemetry.md says why)."""
    assert meter_provider_or_none() is None
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
    monkeypatch.setenv("STAGETRACE_SINKS", "otel-metrics")
    with pytest.raises(ConfigurationError) as info:
        stagetrace.configure()
    message = str(info.value)
    assert "\n" not in message and "'otel-metrics'" in message
    assert "meter_provider" in message and "OTEL_EXPORTER_OTLP_ENDPOINT alone" in message
    with pytest.raises(ConfigurationError, match="'otel-metrics'"):  # beside the otel sink too
        stagetrace.configure(sinks=["otel", "otel-metrics"], tracer_provider=TracerProvider())
    provider, reader = _provider()
    stagetrace.configure(meter_provider=provider)  # what the message says: it works
    _requests(1, 0)
    assert len(_points(reader, "http.server.request.duration")) == 1


def test_record_many_from_any_sink():
    """StageMetrics can be driven by another sink (the otel span sink calls record_many)."""
    provider, reader = _provider()
    metrics = StageMetrics(provider)
    stagetrace.configure(sinks=[])
    timelines = _requests(2, 0)
    metrics.record_many(timelines)
    (point,) = _points(reader, "http.server.request.duration")
    assert point.count == 2


def test_meter_provider_must_be_a_provider(monkeypatch):
    """A meter_provider that is not one is refused at configuration, in one line; it cannot
    come from the environment."""
    with pytest.raises(ConfigurationError, match="MeterProvider"):
        stagetrace.configure(meter_provider="nope")
    monkeypatch.setenv("STAGETRACE_METER_PROVIDER", "x")
    stagetrace.reset()
    with pytest.raises(ConfigurationError, match="not the environment"):
        stagetrace.settings()
    assert MetricsSink().emit_many([]) is None
