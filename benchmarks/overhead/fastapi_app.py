"""ASGI entry point for the load test (uvicorn): the FastAPI example with one trivial route, the
tracer named by ``BENCH_CONFIG`` set up first.

    BENCH_CONFIG=stagetrace-memory uvicorn benchmarks.overhead.fastapi_app:app
"""

from benchmarks.overhead import _apps, _tracers

tracer = _tracers.setup("fastapi")
app = _apps.load_fastapi_example(tracer.stagetrace_on)
tracer.after_setup(app)
