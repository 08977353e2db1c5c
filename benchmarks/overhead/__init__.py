"""Side-by-side overhead benchmark: stagetrace against untraced, OpenTelemetry contrib, Sentry
and ddtrace, on a Django shop and the FastAPI example. Run ``python -m benchmarks.overhead``;
see benchmarks/README.md."""
