#!/usr/bin/env python
"""OTLP export costs, side by side in one run: stagetrace's encoder and transports against the
official ones.

    python benchmarks/otlp_encode.py [--rounds 15] [--batch 500] [--posts 40] [--json out.json]

1. **Encoding, per span.** ``SpanEncoder.encode(tuples)`` against the official
   ``encode_spans(readable_spans).SerializeToString()`` on the same spans, each from its own
   input (plain tuples / prebuilt ``ReadableSpan`` objects, built outside the timing; building
   the ``ReadableSpan`` objects is reported separately). Workloads:
   * ``typical``: request timelines as stagetrace records them (gateway, middleware in/out, view,
     db queries, templates), 5-8 attributes a span, strings repeating across requests (the same
     statements, routes, middleware names) and a varying self-time int on every span;
   * ``unique``: the same shape with every string and int value unique (no cache hit at all).
   The encoder is made once and kept, as the exporter keeps it.
2. **Transport, client CPU per POST** (``time.process_time``, so gRPC's own threads count) to a
   real collector (rotel, black-hole exporter) on loopback, for batches of ``--batch-small`` and
   ``--batch`` spans: ``HttpTransport`` (http.client keep-alive), ``requests.Session.post`` as the
   official OTLP/HTTP exporter sends, ``GrpcTransport`` (pass-through bytes) and the official
   gRPC stub with a prebuilt message.

Rounds are interleaved; medians of CPU time (``time.process_time``) are reported, with ratios
to the official path.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans  # noqa: E402
from opentelemetry.sdk.resources import Resource  # noqa: E402
from opentelemetry.sdk.trace import Event, ReadableSpan  # noqa: E402
from opentelemetry.sdk.util.instrumentation import InstrumentationScope  # noqa: E402
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode  # noqa: E402

from stagetrace.otel._encode import SpanEncoder  # noqa: E402
from stagetrace.otel._transport import (  # noqa: E402
    GrpcTransport,
    HttpTransport,
    exporter_config,
)

RESOURCE = {
    "service.name": "shop",
    "service.version": "1.4.2",
    "deployment.environment.name": "production",
    "telemetry.sdk.name": "stagetrace",
    "telemetry.sdk.language": "python",
    "host.name": "web-1",
}
SCOPE = ("stagetrace", "0.1.0")

STATEMENTS = [
    "SELECT shop_item.id, shop_item.name, shop_item.price FROM shop_item WHERE shop_item.id = %s",
    'SELECT "auth_user"."id", "auth_user"."username" FROM "auth_user" WHERE "auth_user"."id" = %s',
    "SELECT django_session.session_data FROM django_session WHERE session_key = %s AND expire_date > %s",
    "SELECT shop_review.id, shop_review.body FROM shop_review WHERE shop_review.item_id = %s LIMIT 20",
    "UPDATE shop_item SET views = views + 1 WHERE id = %s",
    "SELECT COUNT(*) AS __count FROM shop_review WHERE shop_review.item_id = %s",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]
ROUTES = ["/items/<int:pk>", "/items/", "/reviews/<int:pk>", "/", "/cart/"]


def request_spans(n: int, unique: bool) -> list[tuple[Any, ...]]:
    """One request's spans (22 of them) as SpanTuples; ``unique`` makes every value distinct."""

    def u(text: str) -> str:
        return f"{text} #{n}" if unique else text

    def i(value: int) -> int:
        return value + n * 1000 if unique else value

    trace_id = (n + 1).to_bytes(16, "big")
    root = (n * 64 + 1).to_bytes(8, "big")
    t = 1_764_000_000_000_000_000 + n * 10_000_000
    route = ROUTES[n % len(ROUTES)]
    spans: list[tuple[Any, ...]] = [
        (trace_id, root, None, u(f"GET {route}"), 2, t, t + 4_000_000,
         {"http.request.method": "GET", "url.scheme": "https", "url.path": u(route.replace("<int:pk>", "7")),
          "http.route": u(route), "http.response.status_code": i(200), "http.response.body.size": i(5120),
          "user_agent.original": u("Mozilla/5.0 (X11; Linux x86_64) Firefox/133.0"), "stagetrace.kind": u("gateway")},
         None, (0, ""), None, 0x100)
    ]  # fmt: skip
    sid = n * 64 + 2
    for phase in ("in", "out"):
        for m in MIDDLEWARE:
            spans.append(
                (trace_id, sid.to_bytes(8, "big"), root, u(m.rsplit(".", 1)[1]), 1, t + sid, t + sid + 900,
                 {"stagetrace.kind": u("middleware"), "stagetrace.middleware.phase": phase,
                  "code.function.name": u(m), "stagetrace.self_ns": 400 + (sid * 37) % 500,
                  "stagetrace.short_circuit": False},
                 None, (0, ""), None, 0x100)
            )  # fmt: skip
            sid += 1
    for k in range(5):
        statement = STATEMENTS[(n + k) % len(STATEMENTS)]
        spans.append(
            (trace_id, sid.to_bytes(8, "big"), root, u(statement.split(" ", 1)[0] + " shop_item"), 3, t + sid, t + sid + 300_000,
             {"db.system.name": "postgresql", "db.namespace": u("shop"), "db.query.text": u(statement),
              "db.operation.name": u(statement.split(" ", 1)[0]), "db.response.returned_rows": i(1 + k % 3),
              "stagetrace.db.alias": u("default"), "stagetrace.kind": u("db.query"), "stagetrace.self_ns": 250_000 + sid},
             None, (0, ""), None, 0x100)
        )  # fmt: skip
        sid += 1
    for name in ("shop/item_detail.html", "shop/_reviews.html"):
        spans.append(
            (trace_id, sid.to_bytes(8, "big"), root, u(name), 1, t + sid, t + sid + 800_000,
             {"template.engine": u("django"), "stagetrace.kind": u("template"), "stagetrace.self_ns": 700_000 + sid,
              "code.function.name": u("django.template.base.Template.render"), "stagetrace.depth": 1},
             None, (0, ""), None, 0x100)
        )  # fmt: skip
        sid += 1
    return spans


def batch(count: int, unique: bool, offset: int = 0) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    n = offset
    while len(out) < count:
        out.extend(request_spans(n, unique))
        n += 1
    return out[:count]


def readable(spans: list[tuple[Any, ...]]) -> list[ReadableSpan]:
    """The same spans as the SDK holds them."""
    resource = Resource(RESOURCE)
    scope = InstrumentationScope(*SCOPE)
    out = []
    for tid, sid, pid, name, kind, start, end, attrs, events, status, _, _ in spans:
        trace_id = int.from_bytes(tid, "big")
        out.append(
            ReadableSpan(
                name=name,
                context=SpanContext(trace_id, int.from_bytes(sid, "big"), False),
                parent=SpanContext(trace_id, int.from_bytes(pid, "big"), False) if pid else None,
                resource=resource,
                attributes=attrs,
                events=[Event(en, ea, et) for et, en, ea in events or ()],
                kind=SpanKind(kind - 1),
                instrumentation_scope=scope,
                status=Status(StatusCode(status[0])),
                start_time=start,
                end_time=end,
            )
        )
    return out


def timed(fn: Callable[[], object]) -> float:
    """CPU time of one call in ns: this process's CPU, so other load on the machine counts less."""
    started = time.process_time_ns()
    fn()
    return float(time.process_time_ns() - started)


def bench_encoding(rounds: int, size: int) -> dict[str, Any]:
    results: dict[str, Any] = {}
    encoder = SpanEncoder(RESOURCE, *SCOPE)
    for workload in ("typical", "unique"):
        unique = workload == "unique"
        # Distinct data per round for "unique" (so nothing is ever cached), the same for "typical"
        # (its values repeat anyway, as they do across requests).
        datasets = [batch(size, unique, offset=r * 1000 if unique else 0) for r in range(rounds)]
        sdk = [readable(d) for d in datasets]
        ours_bytes = encoder.encode(datasets[0])
        theirs_bytes = encode_spans(sdk[0]).SerializeToString()
        assert ours_bytes == theirs_bytes, "encoder output differs from the official encoder"
        encoder.encode(datasets[0])  # warm (typical: the cache; unique: nothing to warm)
        samples: dict[str, list[float]] = {"ours": [], "official": [], "build ReadableSpan": []}
        for r in range(rounds):
            d, s = datasets[r], sdk[r]
            samples["official"].append(
                timed(lambda s=s: encode_spans(s).SerializeToString()) / size
            )
            samples["ours"].append(timed(lambda d=d: encoder.encode(d)) / size)
            samples["build ReadableSpan"].append(timed(lambda d=d: readable(d)) / size)
        medians = {k: statistics.median(v) for k, v in samples.items()}
        results[workload] = {
            "ns_per_span": medians,
            "official_over_ours": medians["official"] / medians["ours"],
            "bytes_per_span": len(ours_bytes) / size,
        }
    return results


def start_rotel(tmp: Path) -> tuple[subprocess.Popen[bytes], str, str]:
    from tests.otel.conftest import free_port, port_open, rotel_binary

    binary = rotel_binary()
    if binary is None:
        raise SystemExit("the transport benchmark needs the rotel collector: pip install rotel")
    http_port, grpc_port = free_port(), free_port()
    log = open(tmp / "rotel.log", "ab")  # noqa: SIM115 -- lives as long as the process
    process = subprocess.Popen(
        [str(binary), "start", "--otlp-grpc-endpoint", f"127.0.0.1:{grpc_port}",
         "--otlp-http-endpoint", f"127.0.0.1:{http_port}", "--exporter", "blackhole",
         "--pid-file", str(tmp / "rotel.pid"), "--log-file", str(tmp / "rotel.log")],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + 15
    while not (port_open(http_port) and port_open(grpc_port)):
        if time.monotonic() > deadline or process.poll() is not None:
            raise SystemExit("rotel did not start")
        time.sleep(0.02)
    return process, f"http://127.0.0.1:{http_port}", f"http://127.0.0.1:{grpc_port}"


def bench_transport(rounds: int, posts: int, sizes: list[int]) -> dict[str, Any]:
    import tempfile

    import grpc
    import requests
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2_grpc import TraceServiceStub

    tmp = Path(tempfile.mkdtemp(prefix="otlp-bench-"))
    process, http_url, grpc_url = start_rotel(tmp)
    results: dict[str, Any] = {}
    try:
        ours_http = HttpTransport(exporter_config({}, {"endpoint": http_url}))
        ours_gzip = HttpTransport(
            exporter_config({}, {"endpoint": http_url, "compression": "gzip"})
        )
        ours_grpc = GrpcTransport(exporter_config({}, {"endpoint": grpc_url, "protocol": "grpc"}))
        session = requests.Session()
        channel = grpc.insecure_channel(grpc_url.split("//", 1)[1])
        stub = TraceServiceStub(channel)
        encoder = SpanEncoder(RESOURCE, *SCOPE)
        for size in sizes:
            data = encoder.encode(batch(size, unique=False))
            message = ExportTraceServiceRequest.FromString(data)

            def official_http(data: bytes = data) -> None:
                # What OTLPSpanExporter (HTTP) does per export, minus the encoding.
                response = session.post(
                    http_url + "/v1/traces",
                    data=data,
                    headers={"Content-Type": "application/x-protobuf"},
                    verify=True,
                    timeout=10,
                    cert=None,
                )
                assert response.ok

            def official_grpc(message: Any = message) -> None:
                stub.Export(message, timeout=10)

            def check(transport: Any, data: bytes = data) -> Callable[[], None]:
                def run() -> None:
                    assert transport.export(data).ok

                return run

            candidates: dict[str, Callable[[], None]] = {
                "http.client keep-alive (ours)": check(ours_http),
                "http.client keep-alive + gzip (ours)": check(ours_gzip),
                "requests.Session (official HTTP exporter)": official_http,
                "grpc pass-through bytes (ours)": check(ours_grpc),
                "grpc stub + message (official gRPC exporter)": official_grpc,
            }
            for fn in candidates.values():  # connect and warm up
                for _ in range(3):
                    fn()
            cpu: dict[str, list[float]] = {name: [] for name in candidates}
            wall: dict[str, list[float]] = {name: [] for name in candidates}
            for _ in range(rounds):
                for name, fn in candidates.items():
                    c0, w0 = time.process_time_ns(), time.perf_counter_ns()
                    for _ in range(posts):
                        fn()
                    cpu[name].append((time.process_time_ns() - c0) / posts / 1000)
                    wall[name].append((time.perf_counter_ns() - w0) / posts / 1000)
            results[str(size)] = {
                name: {
                    "cpu_us": statistics.median(cpu[name]),
                    "wall_us": statistics.median(wall[name]),
                }
                for name in candidates
            }
            results[str(size)]["bytes"] = len(data)
        for t in (ours_http, ours_gzip, ours_grpc):
            t.close()
        session.close()
        channel.close()
    finally:
        process.terminate()
        process.wait(10)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--batch-small", type=int, default=50)
    parser.add_argument("--posts", type=int, default=40)
    parser.add_argument("--no-transport", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import platform

    from opentelemetry.sdk.version import __version__ as sdk_version

    try:
        from google.protobuf.internal import api_implementation

        backend = api_implementation.Type()
    except ImportError:  # pragma: no cover
        backend = "?"
    import google.protobuf

    print(
        f"Python {platform.python_version()}, opentelemetry-sdk {sdk_version}, "
        f"protobuf {google.protobuf.__version__} ({backend}), {os.cpu_count()} CPUs"
    )
    out: dict[str, Any] = {"encoding": bench_encoding(args.rounds, args.batch)}
    print(f"\nEncoding, {args.batch} spans a batch, median ns per span over {args.rounds} rounds")
    print(
        f"{'workload':<10} {'ours':>8} {'official':>9} {'ratio':>7} {'(ReadableSpan build)':>21} {'bytes/span':>11}"
    )
    for workload, r in out["encoding"].items():
        ns = r["ns_per_span"]
        print(
            f"{workload:<10} {ns['ours']:>8.0f} {ns['official']:>9.0f} {r['official_over_ours']:>6.1f}x"
            f" {ns['build ReadableSpan']:>21.0f} {r['bytes_per_span']:>11.0f}"
        )
    if not args.no_transport:
        out["transport"] = bench_transport(
            max(5, args.rounds // 2), args.posts, [args.batch_small, args.batch]
        )
        for size, rows in out["transport"].items():
            base = rows["requests.Session (official HTTP exporter)"]["cpu_us"]
            print(
                f"\nTransport, {size} spans ({rows['bytes']} bytes) a POST: client CPU and wall µs, median"
            )
            for name, r in rows.items():
                if name == "bytes":
                    continue
                print(
                    f"  {name:<46} cpu {r['cpu_us']:>7.0f}  wall {r['wall_us']:>7.0f}  cpu/requests {r['cpu_us'] / base:>5.2f}"
                )
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
