"""OpenTelemetry export: OTLP encoding and transport (the span mapping and sink build on these).

Importing this package imports neither the OpenTelemetry SDK nor protobuf nor grpc.
"""
