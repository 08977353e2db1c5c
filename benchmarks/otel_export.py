#!/usr/bin/env python
"""The otel sink's cost per span, from a finished timeline to OTLP bytes, against the official
SDK's paths for the same spans.

    python benchmarks/otel_export.py [--requests 200] [--rounds 7]

Timelines are recorded for real (``stagetrace.timeline`` + ``stagetrace.stage``, a Django-like
request: 7 middleware, route, view, 12 ORM compiles and queries with semantic-convention
attributes, 3 templates, a serializer: 37 stages). Each round re-records them, so the lazy
stages are built inside the timing as the sink builds them. Measured per span, CPU time
(``time.process_time``), median of the rounds:

* ``stagetrace``: ``timeline_spans(tl, encoder)`` (freezing the stages included) +
  ``SpanEncoder.encode``, as the sink runs them;
* ``encode only``: the encoder fed plain attribute pairs, every stage a span, against each
  ``orm.compile`` folded into the next query span as an event instead (what that alternative
  would cost);
* ``sdk ReadableSpan + official encoder``: ``ReadableSpan`` objects built directly from the same
  tuples (the provider path) + ``encode_spans(...).SerializeToString()``;
* ``sdk tracer.start_span + official encoder``: what OpenTelemetry instrumentation pays: a span
  started and ended through a ``Tracer`` per stage, then the official encoder.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import stagetrace  # noqa: E402
from stagetrace.otel._encode import SpanEncoder  # noqa: E402
from stagetrace.otel._mapping import timeline_spans  # noqa: E402
from stagetrace.otel._provider import readable_spans  # noqa: E402

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
SQL = 'SELECT "shop_author"."id", "shop_author"."name" FROM "shop_author" WHERE "shop_author"."id" = %s'


def record(n: int) -> list[Any]:
    """`n` finished request-like timelines (lazy: stages not built yet)."""

    def nest(depth: int) -> None:
        if depth < len(MIDDLEWARE):
            with stagetrace.stage(MIDDLEWARE[depth], kind="middleware"):
                nest(depth + 1)
            return
        with stagetrace.stage("books/", kind="route", view="shop.views.book_list"):
            pass
        with stagetrace.stage("shop.views.book_list", kind="view"):
            for _ in range(12):
                with stagetrace.stage("Author", kind="orm.compile"):
                    pass
                with stagetrace.stage(
                    "SELECT shop_author",
                    kind="db.query",
                    **{
                        "db.system.name": "postgresql",
                        "db.namespace": "shop",
                        "db.operation.name": "SELECT",
                        "db.query.text": SQL,
                        "db.response.returned_rows": 1,
                        "stagetrace.db.alias": "default",
                    },
                ):
                    pass
            for name in ("shop/book_list.html", "shop/base.html", "shop/_row.html"):
                with stagetrace.stage(name, kind="template", **{"template.engine": "django"}):
                    pass
            with stagetrace.stage("JsonResponse", kind="serialize"):
                pass

    with stagetrace.capture() as timelines:
        for _ in range(n):
            with stagetrace.timeline("GET books/", **{"http.request.method": "GET"}):
                nest(0)
    return list(timelines)


def fold_orm(spans: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """The alternative mapping: each orm.compile span becomes an event of the next span."""
    out: list[tuple[Any, ...]] = []
    pending: list[tuple[int, str, Any]] = []
    for span in spans:
        attrs = span[7]
        if ("stagetrace.kind", "orm.compile") in attrs:
            pending.append(
                (span[5], "orm.compile", (("stagetrace.duration_ns", span[6] - span[5]),))
            )
            continue
        if pending:
            span = (*span[:8], pending, *span[9:])
            pending = []
        out.append(span)
    return out


def cpu(fn: Any) -> float:
    t = time.process_time()
    fn()
    return time.process_time() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
    from opentelemetry.trace import SpanKind, set_span_in_context

    stagetrace.configure(service="bench")
    resource_attrs = {"service.name": "bench", "telemetry.sdk.language": "python"}
    resource = Resource.create(resource_attrs)
    encoder = SpanEncoder(resource_attrs, "stagetrace", "0.1")

    class Keep(SpanExporter):
        def __init__(self) -> None:
            self.spans: list[Any] = []

        def export(self, spans: Any) -> SpanExportResult:
            self.spans.extend(spans)
            return SpanExportResult.SUCCESS

    results: dict[str, list[float]] = {}
    n_spans = 0

    def ours(tls: list[Any], box: dict[str, Any]) -> None:
        spans: list[Any] = []
        for tl in tls:
            spans.extend(timeline_spans(tl, encoder))  # as the sink does: attributes encoded
        for i in range(0, len(spans), 512):
            encoder.encode(spans[i : i + 512])
        box["n"] = len(spans)

    def folded(spans: list[Any]) -> None:
        for i in range(0, len(spans), 512):
            encoder.encode(fold_orm(spans[i : i + 512]))

    def plain(spans: list[Any]) -> None:
        for i in range(0, len(spans), 512):
            encoder.encode(spans[i : i + 512])

    def sdk_readable(spans: list[Any]) -> None:
        readable = readable_spans(spans, resource)
        for i in range(0, len(readable), 512):
            encode_spans(readable[i : i + 512]).SerializeToString()

    def sdk_tracer(tls: list[Any]) -> None:
        keep = Keep()
        provider = TracerProvider(resource=resource)
        provider.add_span_processor(SimpleSpanProcessor(keep))
        tracer = provider.get_tracer("bench")
        for tl in tls:
            ctxs: list[Any] = []
            for st in tl.stages:
                parent = ctxs[st.parent] if st.parent is not None else None
                span = tracer.start_span(
                    st.name,
                    context=parent,
                    kind=SpanKind.CLIENT if st.kind == "db.query" else SpanKind.INTERNAL,
                    attributes=dict(st.attrs),
                    start_time=tl.start_unix_nano + st.start_ns,
                )
                ctxs.append(set_span_in_context(span))
                span.end(tl.start_unix_nano + st.end_ns)
        for i in range(0, len(keep.spans), 512):
            encode_spans(keep.spans[i : i + 512]).SerializeToString()

    for _ in range(args.rounds):
        tls = record(args.requests)
        box: dict[str, Any] = {}
        add = results.setdefault
        add("stagetrace: timeline_spans + SpanEncoder", []).append(cpu(partial(ours, tls, box)))
        spans = [s for tl in tls for s in timeline_spans(tl)]  # plain pairs, not timed
        n_spans = box["n"]
        add("  (encode only, orm.compile folded into events)", []).append(
            cpu(partial(folded, spans))
        )
        add("  (encode only, every stage a span)", []).append(cpu(partial(plain, spans)))
        add("sdk: ReadableSpan + official encoder", []).append(cpu(partial(sdk_readable, spans)))
        add("sdk: tracer.start_span/end + official encoder", []).append(
            cpu(partial(sdk_tracer, tls))
        )

    print(f"{args.requests} requests x {n_spans // args.requests} spans, median of {args.rounds}")
    base = statistics.median(results["stagetrace: timeline_spans + SpanEncoder"])
    for name, values in results.items():
        med = statistics.median(values)
        print(f"  {name:48s} {med / n_spans * 1e6:7.2f} µs/span  {med / base:5.2f}x")


if __name__ == "__main__":
    main()
