"""WSGI entry point for the load test (gunicorn): the tracer named by ``BENCH_CONFIG`` is set
up before Django is imported, as each tracer's documentation asks."""

from benchmarks.overhead import _tracers

tracer = _tracers.setup("django")

from django.core.wsgi import get_wsgi_application  # noqa: E402

application = get_wsgi_application()
tracer.after_setup()
