"""The Celery app of the task-queue tests: one task that uses Django's ORM and makes an
outbound HTTP call, and can fail and retry. A real worker runs it
(``celery -A tests.celeryapp worker``); the web side is tests/djapp's ``tasks/receipt/`` view.

Broker and key prefix come from the environment, so each test run uses a private Redis
database and prefix (and cleans up after itself).
"""

from __future__ import annotations

import os

from celery import Celery

import stagetrace
import stagetrace.celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.djapp.settings")

BROKER = os.environ.get("STAGETRACE_TEST_BROKER", "redis://127.0.0.1:6379/14")
PREFIX = os.environ.get("STAGETRACE_TEST_PREFIX", "stagetrace-test:")
QUEUE = os.environ.get("STAGETRACE_TEST_QUEUE", "stagetrace-test")

app = Celery("stagetrace_tests", broker=BROKER)
app.conf.update(
    broker_transport_options={"global_keyprefix": PREFIX},
    task_default_queue=QUEUE,
    task_ignore_result=True,
    worker_hijack_root_logger=False,
    broker_connection_retry_on_startup=True,
)

if os.environ.get("STAGETRACE_TEST_WORKER"):
    # In the worker process. (An app's celery.py calls it unconditionally; the test process
    # instruments and uninstruments around each test instead.)
    stagetrace.celery.instrument()
    if os.environ.get("STAGETRACE_TEST_OTEL_CELERY"):
        # OpenTelemetry's own Celery instrumentation beside stagetrace's, with an SDK provider
        # (no exporter) so that its task spans are real, recording spans.
        from opentelemetry import trace
        from opentelemetry.instrumentation.celery import CeleryInstrumentor
        from opentelemetry.sdk.trace import TracerProvider

        trace.set_tracer_provider(TracerProvider())
        CeleryInstrumentor().instrument()
    if os.environ.get("STAGETRACE_TEST_AFTER_TASK"):
        from celery.signals import task_postrun

        def _after_task(**kwargs: object) -> None:
            """Connected last: what OpenTelemetry holds current once every receiver ran."""
            import json

            from opentelemetry import trace

            sc = trace.get_current_span().get_span_context()
            with open(os.environ["STAGETRACE_TEST_AFTER_TASK"], "a") as f:
                f.write(json.dumps({"valid": sc.is_valid}) + "\n")

        task_postrun.connect(_after_task, weak=False)


@app.task(name="orders.send_receipt", bind=True, max_retries=3)
def send_receipt(self, order_id: int, url: str | None = None, fail_times: int = 0) -> int:
    """Write and read through the ORM, call a URL, and fail `fail_times` times first."""
    import requests

    from tests.djapp.models import Author, Book

    author = Author.objects.create(name=f"receipt {order_id}")
    count = Book.objects.filter(author=author).count()
    if url:
        requests.get(url, timeout=5)
    if self.request.retries < fail_times:
        raise self.retry(exc=RuntimeError(f"attempt {self.request.retries} failed"), countdown=0)
    return count


@app.task(name="orders.otel_probe")
def otel_probe() -> None:
    """What OpenTelemetry sees as the current span while a task runs, written on its stage."""
    from opentelemetry import trace

    sc = trace.get_current_span().get_span_context()
    stagetrace.annotate(
        **{
            "probe.valid": sc.is_valid,
            "probe.trace_id": f"{sc.trace_id:032x}",
            "probe.span_id": f"{sc.span_id:016x}",
        }
    )
