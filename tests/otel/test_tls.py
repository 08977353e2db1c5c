"""The transports over TLS, against real TLS servers on loopback with a test CA."""

from __future__ import annotations

import http.server
import shutil
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

from stagetrace.otel._transport import (
    ExportResult,
    GrpcTransport,
    HttpTransport,
    exporter_config,
)

BODY = b"\x0a\x00"


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1, made with the openssl CLI."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    d = tmp_path_factory.mktemp("certs")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
        "-subj", "/CN=stagetrace test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")  # fmt: skip
    run("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1")
    (d / "ext.cnf").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "authorityKeyIdentifier=keyid,issuer\n"
        "subjectKeyIdentifier=hash\n"
    )
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf")  # fmt: skip
    return {
        name: d / f"{name}.pem" if name != "key" else d / "server.key"
        for name in ("ca", "server", "key")
    }


class _Ok(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def https_url(certs: dict[str, Path]) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    server.daemon_threads = True
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certs["server"], certs["key"])
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield f"https://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_https_with_the_configured_ca_succeeds(https_url: str, certs: dict[str, Path]) -> None:
    """An https:// endpoint is reached over TLS, trusting OTEL_EXPORTER_OTLP_CERTIFICATE."""
    config = exporter_config(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": https_url,
            "OTEL_EXPORTER_OTLP_CERTIFICATE": str(certs["ca"]),
        }
    )
    assert config.secure
    transport = HttpTransport(config)
    try:
        outcomes = [transport.export(BODY) for _ in range(3)]
    finally:
        transport.close()
    assert all(o.ok and o.attempts == 1 for o in outcomes)


def test_https_with_an_untrusted_certificate_fails_at_once(https_url: str) -> None:
    """Without the CA the certificate does not verify: a permanent failure, not retried."""
    transport = HttpTransport(exporter_config({"OTEL_EXPORTER_OTLP_ENDPOINT": https_url}))
    started = time.monotonic()
    try:
        outcome = transport.export(BODY, deadline=started + 5)
    finally:
        transport.close()
    assert outcome.result is ExportResult.FAILED and outcome.attempts == 1
    assert "CERTIFICATE_VERIFY_FAILED" in outcome.detail
    assert time.monotonic() - started < 2


def test_grpc_over_tls_with_the_configured_ca(certs: dict[str, Path]) -> None:
    """An https:// gRPC endpoint uses TLS with OTEL_EXPORTER_OTLP_CERTIFICATE as the root."""
    received: list[bytes] = []

    def export(request: bytes, context: grpc.ServicerContext) -> bytes:
        received.append(request)
        return b""

    handler = grpc.method_handlers_generic_handler(
        "opentelemetry.proto.collector.trace.v1.TraceService",
        {"Export": grpc.unary_unary_rpc_method_handler(export)},
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((handler,))
    credentials = grpc.ssl_server_credentials(
        [(certs["key"].read_bytes(), certs["server"].read_bytes())]
    )
    port = server.add_secure_port("127.0.0.1:0", credentials)
    server.start()
    try:
        transport = GrpcTransport(
            exporter_config(
                {"OTEL_EXPORTER_OTLP_CERTIFICATE": str(certs["ca"])},
                {"endpoint": f"https://127.0.0.1:{port}", "protocol": "grpc"},
            )
        )
        outcome = transport.export(BODY, deadline=time.monotonic() + 10)
        transport.close()
    finally:
        server.stop(0)
    assert outcome.ok, outcome
    assert received == [BODY]


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_certificate_files_that_are_not_pem_fail_in_one_line(
    certs: dict[str, Path], tmp_path: Path, protocol: str
) -> None:
    """A CA file, or a client certificate and key, that TLS cannot load (not PEM, a key that
    needs a pass phrase) fails at configuration with a one-line ConfigurationError naming the
    variables — not an ``ssl.SSLError`` traceback out of ``configure()``, nor OpenSSL asking
    for the pass phrase on the terminal, nor every export failing later (gRPC)."""
    import stagetrace
    from stagetrace import ConfigurationError

    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    encrypted = tmp_path / "encrypted.key"
    subprocess.run(
        ["openssl", "pkey", "-in", str(certs["key"]), "-out", str(encrypted), "-aes256",
         "-passout", "pass:secret"],
        check=True, capture_output=True,
    )  # fmt: skip
    endpoint = {"OTEL_EXPORTER_OTLP_ENDPOINT": "https://127.0.0.1:9"}
    if protocol == "grpc":
        endpoint["OTEL_EXPORTER_OTLP_PROTOCOL"] = "grpc"
    cases = [
        ({"OTEL_EXPORTER_OTLP_CERTIFICATE": str(garbage)}, "OTEL_EXPORTER_OTLP_CERTIFICATE"),
        ({"OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE": str(garbage),
          "OTEL_EXPORTER_OTLP_CLIENT_KEY": str(certs["key"])},
         "OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE"),
        ({"OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE": str(certs["server"]),
          "OTEL_EXPORTER_OTLP_CLIENT_KEY": str(encrypted)}, "encrypted"),
    ]  # fmt: skip
    for env, named in cases:
        with pytest.raises(ConfigurationError) as info:
            exporter_config({**endpoint, **env})
        message = str(info.value)
        assert named in message and "\n" not in message and "secret" not in message
    good = {"OTEL_EXPORTER_OTLP_CERTIFICATE": str(certs["ca"]),
            "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE": str(certs["server"]),
            "OTEL_EXPORTER_OTLP_CLIENT_KEY": str(certs["key"])}  # fmt: skip
    assert exporter_config({**endpoint, **good}).certificate_file == str(certs["ca"])
    with pytest.MonkeyPatch.context() as mp:
        for key, value in {**endpoint, "OTEL_EXPORTER_OTLP_CERTIFICATE": str(garbage)}.items():
            mp.setenv(key, value)
        with pytest.raises(ConfigurationError, match="OTEL_EXPORTER_OTLP_CERTIFICATE"):
            stagetrace.configure(sinks=["otel"])
