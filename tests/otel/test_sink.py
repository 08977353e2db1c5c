"""The ``otel`` sink in process: configuration, the collector going away and coming back, the
bounded export queue, flush deadlines, and the TracerProvider path."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

import pytest

import stagetrace
from stagetrace import ConfigurationError
from stagetrace._state import STATE

from .conftest import Collector, free_port


def run_jobs(n: int, stages: int = 3) -> list[float]:
    """Record `n` job timelines of `stages` custom stages; their durations (s), sorted."""
    took = []
    for i in range(n):
        t = time.perf_counter()
        with stagetrace.timeline(f"job-{i % 3}"):
            for j in range(stages):
                with stagetrace.stage(f"step {j}"):
                    pass
        took.append(time.perf_counter() - t)
    return sorted(took)


def test_otel_sink_must_say_where_to_send(monkeypatch: pytest.MonkeyPatch) -> None:
    """Naming the otel sink with no endpoint and no provider fails at configuration, in one
    line that says what to set; an endpoint alone does not turn the sink on."""
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_ENDPOINT", raising=False)
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    with pytest.raises(ConfigurationError) as info:
        stagetrace.configure(sinks=["otel"])
    message = str(info.value)
    assert "\n" not in message and "OTEL_EXPORTER_OTLP_ENDPOINT" in message
    assert "tracer_provider" in message
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    assert stagetrace.settings().sinks == ()


def test_bad_endpoint_and_grpc_errors_are_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad endpoint option or protocol variable is refused at configuration, naming it."""
    with pytest.raises(ConfigurationError, match="otlp_endpoint"):
        stagetrace.configure(sinks=["otel"], otlp_endpoint="localhost:4318")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")
    with pytest.raises(ConfigurationError, match="OTEL_EXPORTER_OTLP_PROTOCOL"):
        stagetrace.configure(sinks=["otel"], otlp_endpoint="http://127.0.0.1:9")


def test_importing_stagetrace_does_not_import_the_otel_package() -> None:
    """The otel sink is built lazily: importing stagetrace (and configuring other sinks) loads
    neither stagetrace.otel nor the OpenTelemetry SDK."""
    code = (
        "import sys, stagetrace\n"
        "stagetrace.configure(sinks=['memory'])\n"
        "bad = [m for m in sys.modules if m.startswith(('stagetrace.otel', 'opentelemetry'))]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_environment_two_line_setup(collector: Collector, monkeypatch: pytest.MonkeyPatch) -> None:
    """STAGETRACE_SINKS=otel plus OTEL_EXPORTER_OTLP_ENDPOINT is the whole setup: spans arrive,
    one per stage, under the job's root span."""
    monkeypatch.setenv("STAGETRACE_SINKS", "otel")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.http_endpoint)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "jobs")
    run_jobs(2)
    assert stagetrace.flush(5)
    spans = collector.wait_for_spans(8)
    assert {r["service.name"] for r, _ in spans} == {"jobs"}
    roots = [s for _, s in spans if not s.parent_span_id]
    assert sorted(s.name for s in roots) == ["job-0", "job-1"]
    assert all(s.kind == 5 for s in roots)  # CONSUMER: a job
    assert stagetrace.stats()["otel_spans_exported"] == 8


@pytest.mark.parametrize("value", ["true", "TRUE", " True "])
def test_otel_sdk_disabled_turns_the_export_off(
    collector: Collector,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    value: str,
) -> None:
    """``OTEL_SDK_DISABLED=true`` (case-insensitive) is OpenTelemetry's switch for "no
    telemetry": the ``otel`` sink then sends nothing to the endpoint set beside it, says so
    once at configuration, and the trace context that names its stage spans (the current
    span, outbound ``traceparent``) stays off; the other sinks go on, and configuration does
    not fail (not for ``otel-metrics`` either, which has no MeterProvider then). Any other value
    leaves the export on."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.http_endpoint)
    monkeypatch.setenv("OTEL_SDK_DISABLED", value)
    caplog.set_level("INFO", logger="stagetrace")
    settings = stagetrace.configure(sinks=["otel", "otel-metrics", "memory"])
    assert not settings.otel_context and not settings.propagate_traceparent
    assert "OTEL_SDK_DISABLED" in caplog.text
    run_jobs(2)
    assert stagetrace.flush(5)
    assert len(stagetrace.recent()) == 2
    time.sleep(0.3)
    assert collector.spans() == []
    monkeypatch.setenv("OTEL_SDK_DISABLED", "false")
    stagetrace.configure(sinks=["otel", "memory"])
    run_jobs(1)
    assert stagetrace.flush(5)
    assert len(collector.wait_for_spans(4)) == 4


def _limited_job() -> None:
    """A job with a long attribute, a list of long strings, and an exception with a long
    message (an ``exception`` event)."""
    long_step = stagetrace.stage("step", note="x" * 50, tags=["y" * 30, "z"], short="ok")
    with pytest.raises(ValueError), stagetrace.timeline("limits"), long_step:
        raise ValueError("m" * 60)


def test_attribute_value_length_limits_apply_as_the_sdk_applies_them(
    collector: Collector, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT`` (else ``OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT``)
    cuts span attribute strings, those in lists too, and ``OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT``
    event attribute strings, as the OpenTelemetry SDK's span limits do: the same values reach
    the collector over stagetrace's own OTLP path as through an SDK TracerProvider (which
    stagetrace hands ReadableSpans, bypassing the SDK span's limits). The resource is not
    limited."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    monkeypatch.setenv("OTEL_ATTRIBUTE_VALUE_LENGTH_LIMIT", "20")
    monkeypatch.setenv("OTEL_SPAN_ATTRIBUTE_VALUE_LENGTH_LIMIT", "10")
    monkeypatch.setenv("OTEL_SERVICE_NAME", "a-service-name-longer-than-the-limits")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.http_endpoint)
    stagetrace.configure(sinks=["otel"])
    _limited_job()
    assert stagetrace.flush(5)
    (resource, _), _ = collector.wait_for_spans(2)
    step = {d["name"]: d for d in collector.span_dicts()}["step"]
    assert resource["service.name"] == "a-service-name-longer-than-the-limits"

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    stagetrace.configure(sinks=["otel"], tracer_provider=provider)
    _limited_job()
    assert stagetrace.flush(5)
    sdk_step = {s.name: s for s in exporter.get_finished_spans()}["step"]

    for attrs in (step["attributes"], dict(sdk_step.attributes)):
        assert attrs["stagetrace.note"] == "x" * 10
        assert list(attrs["stagetrace.tags"]) == ["y" * 10, "z"]
        assert attrs["stagetrace.short"] == "ok"
    (event,) = step["events"]
    (sdk_event,) = sdk_step.events
    for attrs in (event["attributes"], dict(sdk_event.attributes)):
        assert attrs["exception.message"] == "m" * 20


def test_a_tracer_providers_span_limits_apply_to_the_spans_handed_to_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The spans handed to a TracerProvider keep at most its ``SpanLimits``' attributes
    (``OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT``, 128 by default), the rest counted in
    ``dropped_attributes`` for its exporter, as its own spans would."""
    from opentelemetry.sdk.trace import SpanLimits, TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider(span_limits=SpanLimits(max_span_attributes=5))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    stagetrace.configure(sinks=["otel"], tracer_provider=provider)
    with stagetrace.timeline("many"), stagetrace.stage("step", **{f"a{i}": i for i in range(9)}):
        pass
    assert stagetrace.flush(5)
    step = {s.name: s for s in exporter.get_finished_spans()}["step"]
    assert len(step.attributes) == 5 and step.dropped_attributes == 5  # 9 + stagetrace.kind


def test_attribute_and_event_count_limits_apply_on_the_otlp_path(
    collector: Collector, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``OTEL_SPAN_ATTRIBUTE_COUNT_LIMIT`` (else ``OTEL_ATTRIBUTE_COUNT_LIMIT``, default 128)
    and ``OTEL_SPAN_EVENT_COUNT_LIMIT`` (default 128) bound what a span sent over
    stagetrace's OTLP path carries, as the specification's SDK limits say: the attributes
    beyond the limit are discarded and counted in ``dropped_attributes_count``, the events in
    ``dropped_events_count`` — a stage given many attributes, a request with many findings,
    reach the collector within the limits the application set, and the backend is told."""
    from stagetrace import Finding

    def findings(tl: stagetrace.Timeline) -> list[Finding]:
        return [Finding(kind="demo", message=f"finding {i}", stages=(0,)) for i in range(7)]

    monkeypatch.setenv("OTEL_ATTRIBUTE_COUNT_LIMIT", "6")
    monkeypatch.setenv("OTEL_SPAN_EVENT_COUNT_LIMIT", "4")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.http_endpoint)
    stagetrace.configure(sinks=["otel"], analyzers=[findings])
    many = {f"a{i}": i for i in range(20)}
    with stagetrace.timeline("limits"):
        with stagetrace.stage("wide", **many):
            pass
        with stagetrace.stage("narrow", x=1):
            pass
    assert stagetrace.flush(5)
    spans = {span.name: span for _, span in collector.wait_for_spans(3)}
    wide, narrow, root = spans["wide"], spans["narrow"], spans["limits"]
    assert len(wide.attributes) == 6 and wide.dropped_attributes_count == 21 - 6
    assert len(narrow.attributes) == 2 and narrow.dropped_attributes_count == 0
    assert len(root.events) == 4 and root.dropped_events_count == 3


def test_otel_sdk_disabled_does_not_fail_an_explicit_otel_context(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An application configured with ``otel_context=True`` beside the ``otel`` sink starts in
    an environment that sets ``OTEL_SDK_DISABLED=true`` (a CI job, a local run): the sink is
    left out, and so is the context that would name its spans — not a ConfigurationError
    saying the otel sink is missing, which would stop the application from starting."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    settings = stagetrace.configure(sinks=["otel", "memory"], otel_context=True)
    assert not settings.otel_context
    # the outbound traceparent, which would name a stage span nobody receives, likewise
    settings = stagetrace.configure(propagate_traceparent=True)
    assert not settings.propagate_traceparent
    with pytest.raises(ConfigurationError, match="needs the otel sink"):
        stagetrace.configure(sinks=["memory"], otel_context=True)  # still a mistake


def test_collector_outage_costs_requests_nothing_and_export_resumes(collector: Collector) -> None:
    """Collector stopped: recording stays as fast as before, the export queue stays bounded and
    what does not fit is counted as dropped; collector back: later spans arrive again."""
    stagetrace.configure(
        sinks=["otel"], otlp_endpoint=collector.http_endpoint, otel_queue_size=200,
        otel_flush_timeout=0.5,
    )  # fmt: skip
    run_jobs(5)
    assert stagetrace.flush(5)
    collector.wait_for_spans(20)
    baseline = run_jobs(200)

    collector.stop()
    during = run_jobs(200)
    stagetrace.flush(5)
    for _ in range(5):  # keep feeding while the export thread is stuck retrying
        run_jobs(100)
        stagetrace.flush(5)
    stats = stagetrace.stats()
    assert stats["otel_spans_dropped"] > 0
    sink = stagetrace.settings().sinks[0]
    assert sink.queue_depth() <= 200  # type: ignore[attr-defined]
    # No request waits for the collector: the typical job is as fast as before (a POST on the
    # request path, even one refused at once, would cost each job a millisecond), and none
    # waits for the exporter's retries. The median, not the slowest job: on a loaded CI
    # machine any one job can be descheduled for tens of milliseconds.
    assert during[len(during) // 2] < max(0.001, baseline[len(baseline) // 2] * 20)
    assert during[-1] < 0.5

    collector.start()
    deadline = time.monotonic() + 30
    # What the queue still held goes first; wait for a job recorded after the outage.
    while not any(s.name == "after-outage" for _, s in collector.spans()):
        assert time.monotonic() < deadline, "export did not resume"
        with stagetrace.timeline("after-outage"):
            pass
        stagetrace.flush(1)
        time.sleep(0.2)
    assert any(s.name == "after-outage" for _, s in collector.spans())


def test_flush_and_shutdown_honour_the_deadline() -> None:
    """With the collector unreachable, flush(), shutdown() and reset() return within the flush
    deadline, not after the exporter's retries."""
    port = free_port()
    stagetrace.configure(
        sinks=["otel"], otlp_endpoint=f"http://127.0.0.1:{port}", otel_flush_timeout=0.5
    )
    run_jobs(10)
    t = time.monotonic()
    stagetrace.flush(2)
    stagetrace.shutdown(2)
    assert time.monotonic() - t < 2.5
    assert STATE.counters["otel_spans_exported"] == 0


def test_export_goes_on_after_shutdown_and_an_unrelated_configure(collector: Collector) -> None:
    """shutdown() says recording goes on with the same configuration, and configure() of
    another option keeps the sink: spans recorded after either still reach the collector (the
    sink's exporter used to be closed for good, every later span dropped)."""
    stagetrace.configure(sinks=["otel"], otlp_endpoint=collector.http_endpoint)
    run_jobs(1, stages=0)
    assert stagetrace.flush(5)
    collector.wait_for_spans(1)
    assert stagetrace.shutdown(5)
    run_jobs(1, stages=0)
    assert stagetrace.flush(5)
    collector.wait_for_spans(2)
    stagetrace.configure(sample_rate=1.0)
    run_jobs(1, stages=0)
    assert stagetrace.flush(5)
    collector.wait_for_spans(3)
    assert stagetrace.stats()["otel_spans_dropped"] == 0


def test_flush_says_false_while_the_collector_has_not_got_the_spans() -> None:
    """With the collector unreachable, flush() returns False (the spans are still being
    retried), and the export's counters are in stats() from the start."""
    port = free_port()
    stagetrace.configure(
        sinks=["otel"], otlp_endpoint=f"http://127.0.0.1:{port}", otel_flush_timeout=0.3
    )
    counted = stagetrace.stats()
    assert counted["otel_spans_exported"] == 0 and counted["otel_timelines_sampled_out"] == 0
    run_jobs(3)
    assert stagetrace.flush(2) is False
    stagetrace.shutdown(1)


def test_an_unreachable_collector_is_warned_about_at_the_first_failed_attempt(caplog) -> None:
    """The warning comes when the first attempt fails, not once the export's deadline (10 s by
    default) has passed; one warning an outage."""
    port = free_port()
    stagetrace.configure(
        sinks=["otel"], otlp_endpoint=f"http://127.0.0.1:{port}", otel_flush_timeout=0.3
    )
    with caplog.at_level("WARNING", logger="stagetrace"):
        run_jobs(2)
        stagetrace.flush(0.2)
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and not caplog.records:
            time.sleep(0.05)
        stagetrace.shutdown(0.2)
    failing = [r.getMessage() for r in caplog.records if "OTLP export" in r.getMessage()]
    assert len(failing) == 1 and f"127.0.0.1:{port}" in failing[0]
    assert "is failing (" in failing[0] and "Connection refused" in failing[0]


def test_endpoint_secrets_stay_out_of_warnings_and_settings(caplog) -> None:
    """An endpoint with ``user:password@`` (sent as Basic auth, not part of the URL) and an
    ``?api_key=`` is shown without either in the export warning and in the sink's repr (what
    ``settings()`` prints), which still name the collector."""
    port = free_port()
    stagetrace.configure(
        sinks=["otel"],
        otlp_endpoint=f"http://alice:s3cretpw@127.0.0.1:{port}/?api_key=k3y",
        otel_flush_timeout=0.3,
    )
    with caplog.at_level("WARNING", logger="stagetrace"):
        run_jobs(2)
        stagetrace.flush(0.2)
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline and not caplog.records:
            time.sleep(0.05)
        shown = repr(stagetrace.settings())
        stagetrace.shutdown(0.2)
    failing = [r.getMessage() for r in caplog.records if "OTLP export" in r.getMessage()]
    assert failing and f"//127.0.0.1:{port}/v1/traces?api_key=REDACTED is" in failing[0]
    assert f"//127.0.0.1:{port}/v1/traces?api_key=REDACTED" in shown
    for text in (*failing, shown, caplog.text, str(stagetrace.stats())):
        assert "s3cretpw" not in text and "alice" not in text and "k3y" not in text


FORKING = """
import os, sys
import stagetrace
endpoint, path = sys.argv[1], sys.argv[2]
if path == "provider":
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter(endpoint + "/v1/traces")))
    stagetrace.configure(sinks=["otel"], tracer_provider=provider)
else:
    stagetrace.configure(sinks=["otel"], otlp_endpoint=endpoint)
if path == "busy parent":  # the pipeline's and the exporter's threads run before the fork
    with stagetrace.timeline("before"):
        pass
    assert stagetrace.flush(5)
workers = []
for i in range(2):  # as gunicorn --preload: configured in the master, then forked
    pid = os.fork()
    if pid == 0:
        with stagetrace.timeline(f"worker-{i}"):
            pass
        os._exit(0 if stagetrace.flush(5) else 1)
    workers.append(pid)
for pid in workers:
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
with stagetrace.timeline("master"):
    pass
assert stagetrace.flush(5)
"""


@pytest.mark.parametrize("path", ["otlp", "busy parent", "provider"])
def test_forked_workers_each_export_their_own_service_instance_id(
    collector: Collector, path: str
) -> None:
    """Workers forked from a configured master (gunicorn ``--preload``) are told apart: each
    exports its own ``service.instance.id``, as the OpenTelemetry SDK's providers do, whether
    the master exported before forking or not, and through a TracerProvider too."""
    from opentelemetry.sdk.resources import Resource

    if "service.instance.id" not in Resource.create().attributes:
        pytest.skip("this OpenTelemetry SDK gives a resource no service.instance.id")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "STAGETRACE_"))}
    subprocess.run(
        [sys.executable, "-c", FORKING, collector.http_endpoint, path], env=env, check=True
    )
    expected = 3 if path != "busy parent" else 4
    by_name = {s.name: r["service.instance.id"] for r, s in collector.wait_for_spans(expected)}
    assert sorted(by_name) == sorted(
        ["worker-0", "worker-1", "master"] + (["before"] if path == "busy parent" else [])
    )
    assert len({by_name["worker-0"], by_name["worker-1"], by_name["master"]}) == 3
    assert by_name.get("before", by_name["master"]) == by_name["master"]


def test_a_configured_service_instance_id_is_kept_in_forked_workers(
    collector: Collector,
) -> None:
    """An instance id the deployment set (``OTEL_RESOURCE_ATTRIBUTES``) is what every worker
    exports: the resource is computed in the worker as configure() would compute it there."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "STAGETRACE_"))}
    env["OTEL_RESOURCE_ATTRIBUTES"] = "service.instance.id=pod-7"
    subprocess.run(
        [sys.executable, "-c", FORKING, collector.http_endpoint, "otlp"], env=env, check=True
    )
    assert {r["service.instance.id"] for r, _ in collector.wait_for_spans(3)} == {"pod-7"}


def test_a_providers_sampler_does_not_leave_the_applications_spans_without_their_root() -> None:
    """The request runs "sampled" (stagetrace decides to export after it): the application's
    own spans under it are recorded by its ``ParentBased`` sampler and ``inject()`` says
    sampled, so stagetrace's spans must reach the provider as well, whatever its sampler would
    say of a new root — asked after the request, it left the application's span an orphan."""
    from opentelemetry import propagate
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased

    from stagetrace.wsgi import StagetraceMiddleware
    from tests.helpers import wsgi_environ

    exporter = InMemorySpanExporter()
    provider = TracerProvider(sampler=ParentBased(ALWAYS_OFF))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("app")
    seen: dict[str, Any] = {}

    def app(environ: Any, start_response: Any) -> list[bytes]:
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        seen["traceparent"] = carrier.get("traceparent", "")
        with tracer.start_as_current_span("the app's own"):
            pass
        start_response("200 OK", [])
        return [b""]

    stagetrace.configure(sinks=["otel"], tracer_provider=provider)
    list(StagetraceMiddleware(app)(wsgi_environ("/"), lambda *a: None))
    assert stagetrace.flush(5)
    spans = exporter.get_finished_spans()
    ids = {s.context.span_id for s in spans}
    (own,) = [s for s in spans if s.name == "the app's own"]
    assert own.parent is not None and own.parent.span_id in ids
    assert seen["traceparent"].endswith("-01")


def test_tracer_provider_option_gets_readable_spans() -> None:
    """With configure(tracer_provider=...), the spans go to that provider's processors as SDK
    ReadableSpans (the app's exporters see them), with kinds, parents, the provider's resource."""
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.trace import SpanKind

    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "app"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    stagetrace.configure(sinks=["otel"], tracer_provider=provider)
    with stagetrace.timeline("nightly"), stagetrace.stage("load", kind="db.query"):
        pass
    assert stagetrace.flush(5)
    spans = exporter.get_finished_spans()
    by_name = {s.name: s for s in spans}
    assert set(by_name) == {"nightly", "load"}
    assert by_name["load"].kind is SpanKind.CLIENT
    assert by_name["load"].parent.span_id == by_name["nightly"].context.span_id
    assert by_name["load"].resource.attributes["service.name"] == "app"
    assert by_name["load"].attributes["stagetrace.kind"] == "db.query"


def test_global_sdk_provider_is_used_and_never_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    """An application that set a global SDK TracerProvider gets the spans there (even with an
    OTLP endpoint set), and stagetrace does not replace its global provider."""
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(trace, "_TRACER_PROVIDER", provider)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    stagetrace.configure(sinks=["otel"])
    run_jobs(1, stages=2)
    assert stagetrace.flush(5)
    assert len(exporter.get_finished_spans()) == 3
    assert trace._TRACER_PROVIDER is provider


def test_the_otel_sink_brings_the_context_hook_and_records_metrics() -> None:
    """With the otel sink, the running stage is OpenTelemetry's current span during a request
    (part B's context hook is installed), and with a MeterProvider the stage histograms are
    recorded from the same timelines."""
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace import TracerProvider

    from stagetrace.otel._context import ContextHook

    reader = InMemoryMetricReader()
    stagetrace.configure(
        sinks=["otel"],
        tracer_provider=TracerProvider(),
        meter_provider=MeterProvider(metric_readers=[reader]),
    )
    assert any(isinstance(h, ContextHook) for h in STATE.context_hooks)
    run_jobs(2)
    assert stagetrace.flush(5)
    data = reader.get_metrics_data()
    names = {m.name for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}
    assert "stagetrace.stage.duration" in names


class _Requests:
    """A transport that keeps each encoded request (what is tested here is how the sink cuts
    its batches, not the network: the collector tests above cover that)."""

    def __init__(self) -> None:
        from stagetrace.otel._transport import ExporterConfig

        self.config = ExporterConfig(url="http://127.0.0.1:9/v1/traces")
        self.sent: list[bytes] = []

    def export(self, data: bytes, deadline: float | None = None) -> Any:
        from stagetrace.otel._transport import ExportOutcome, ExportResult

        self.sent.append(data)
        return ExportOutcome(ExportResult.OK, 1)

    def close(self) -> None:
        pass


def _spans_in(data: bytes) -> list[Any]:
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    msg = ExportTraceServiceRequest.FromString(data)
    return [s for rs in msg.resource_spans for ss in rs.scope_spans for s in ss.spans]


def test_export_requests_are_cut_by_span_count_and_by_size(monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch goes out in requests of at most MAX_BATCH_SPANS spans and about MAX_BATCH_BYTES
    bytes — many small spans in few large requests (each POST's cost is mostly fixed), long
    SQL texts never in one request a collector would refuse — and every span arrives once."""
    from stagetrace.otel import _sink
    from stagetrace.otel._encode import SpanEncoder

    monkeypatch.setattr(_sink, "MAX_BATCH_SPANS", 50)
    monkeypatch.setattr(_sink, "MAX_BATCH_BYTES", 64 * 1024)
    transport = _Requests()
    sink = _sink.OtelSink(encoder=SpanEncoder(), transport=transport)
    with stagetrace.capture() as small:
        run_jobs(40, stages=4)  # 200 small spans: four requests of at most 50
    sql = "SELECT " + ", ".join(f"column_{i}" for i in range(400))  # 4 KB once cut
    with stagetrace.capture() as large:
        for i in range(4):
            with stagetrace.timeline(f"report-{i}"):
                for _ in range(10):
                    with stagetrace.stage("q", kind="db.query", **{"db.query.text": sql}):
                        pass
    sink.emit_many(small)
    assert sink.flush(5)
    assert [len(_spans_in(d)) for d in transport.sent] == [50, 50, 50, 50]
    transport.sent.clear()
    sink.emit_many(large)  # 44 spans, about 170 KB: cut by size, not by count
    assert sink.flush(5)
    sizes = [len(d) for d in transport.sent]
    assert len(sizes) >= 3 and max(sizes) <= 64 * 1024 + 8 * 1024, sizes
    names = sorted(s.name for d in transport.sent for s in _spans_in(d))
    assert names == sorted(["q"] * 40 + [f"report-{i}" for i in range(4)])
    sink.close()


def test_an_export_request_always_fits_in_the_export_queue() -> None:
    """With a small ``otel_queue_size`` the requests are cut to a quarter of it: a busy batch
    is never one request larger than the whole queue, dropped in full although the queue was
    empty (the regression: 1,200 spans with a queue of 1,000 all went as one request)."""
    from stagetrace.otel import _sink
    from stagetrace.otel._encode import SpanEncoder

    transport = _Requests()
    sink = _sink.OtelSink(encoder=SpanEncoder(), transport=transport, max_queue_spans=1000)
    with stagetrace.capture() as got:
        run_jobs(300, stages=3)  # 1,200 spans
    sink.emit_many(got)
    assert sink.flush(5)
    counts = [len(_spans_in(d)) for d in transport.sent]
    assert counts and max(counts) <= 250
    assert sum(counts) >= 1000  # at worst the last request waits for a full queue
    assert sum(counts) + STATE.counters["otel_spans_dropped"] == 1200
    sink.close()


def test_an_export_request_of_large_failed_spans_stays_under_the_byte_cap() -> None:
    """Spans the mapping leaves as tuples (roots, failed stages) count by their own size, not a
    fixed guess: 600 failed queries with 4,000 characters of non-ASCII SQL each (about 8 KB
    encoded) never make one request above OTLP/gRPC's 4 MiB default (the regression: 4.2 MB)."""
    import contextlib

    from stagetrace.otel import _sink
    from stagetrace.otel._encode import SpanEncoder

    transport = _Requests()
    sink = _sink.OtelSink(encoder=SpanEncoder(), transport=transport)
    sql = "SELECT " + "é" * 3990
    with stagetrace.capture() as got, stagetrace.timeline("import"):
        for _ in range(600):
            with (
                contextlib.suppress(ValueError),
                stagetrace.stage("INSERT", kind="db.query", **{"db.query.text": sql}),
            ):
                raise ValueError("duplicate key")
    sink.emit_many(got)
    assert sink.flush(5)
    sizes = [len(d) for d in transport.sent]
    assert max(sizes) <= _sink.MAX_BATCH_BYTES + 64 * 1024, sizes
    assert sum(len(_spans_in(d)) for d in transport.sent) == 601
    sink.close()
