"""The export foundation stays light: no SDK, protobuf, grpc or requests at import."""

from __future__ import annotations

import subprocess
import sys


def test_encoder_and_transport_import_without_sdk_protobuf_or_grpc() -> None:
    """Importing the encoder and the transports pulls in none of the heavy dependencies; grpc is
    imported only when a gRPC transport is configured."""
    code = (
        "import sys, stagetrace.otel._encode, stagetrace.otel._transport as t\n"
        "heavy = ('opentelemetry.sdk', 'google.protobuf', 'grpc', 'requests', 'opentelemetry.proto')\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(heavy))\n"
        "assert not loaded, loaded\n"
        "t.exporter_config({})\n"
        "assert 'grpc' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
