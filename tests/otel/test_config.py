"""``exporter_config``: the OTLP exporter specification's environment variables, and bad values."""

from __future__ import annotations

import builtins
import sys
from pathlib import Path
from typing import Any

import pytest

from stagetrace import ConfigurationError
from stagetrace.otel._transport import exporter_config


def test_defaults_are_http_protobuf_to_localhost_4318() -> None:
    """No variables: OTLP/HTTP protobuf to localhost:4318/v1/traces, 10 s, no compression."""
    config = exporter_config({})
    assert config.url == "http://localhost:4318/v1/traces"
    assert config.protocol == "http/protobuf"
    assert config.timeout == 10.0 and config.compression == "none" and config.headers == ()
    assert not config.secure


@pytest.mark.parametrize(
    ("base", "url"),
    [
        ("http://collector:4318", "http://collector:4318/v1/traces"),
        ("http://collector:4318/", "http://collector:4318/v1/traces"),
        ("https://collector/otlp", "https://collector/otlp/v1/traces"),
        ("https://collector/otlp/", "https://collector/otlp/v1/traces"),
    ],
)
def test_generic_http_endpoint_gets_the_traces_path_appended(base: str, url: str) -> None:
    """OTEL_EXPORTER_OTLP_ENDPOINT is a base URL: ``/v1/traces`` is appended to its path."""
    config = exporter_config({"OTEL_EXPORTER_OTLP_ENDPOINT": base})
    assert config.url == url
    assert config.secure == base.startswith("https")


@pytest.mark.parametrize(
    ("value", "url"),
    [
        ("http://collector:4318/custom", "http://collector:4318/custom"),
        ("http://collector:4318", "http://collector:4318/"),
        ("http://collector:4318/v1/traces?x=1", "http://collector:4318/v1/traces?x=1"),
    ],
)
def test_traces_endpoint_is_used_as_is_and_wins(value: str, url: str) -> None:
    """OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is used unchanged and beats the generic one."""
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://other:1",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": value,
    }
    assert exporter_config(env).url == url


def test_overrides_win_over_the_environment() -> None:
    """Explicit options beat every variable; ``endpoint`` is a base, ``traces_endpoint`` as is."""
    env = {
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://env:1/x",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "500",
        "OTEL_EXPORTER_OTLP_HEADERS": "a=1",
    }
    config = exporter_config(env, {"endpoint": "http://opt:2", "timeout": 2, "headers": {"b": "2"}})
    assert config.url == "http://opt:2/v1/traces"
    assert config.timeout == 2.0 and config.headers == (("b", "2"),)
    assert exporter_config(env, {"traces_endpoint": "http://opt:2/y"}).url == "http://opt:2/y"


def test_signal_specific_variables_beat_generic_ones() -> None:
    """Every ``OTEL_EXPORTER_OTLP_TRACES_*`` variable wins over its generic twin."""
    env = {
        "OTEL_EXPORTER_OTLP_HEADERS": "a=generic",
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS": "a=traces",
        "OTEL_EXPORTER_OTLP_TIMEOUT": "1000",
        "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "2500",
        "OTEL_EXPORTER_OTLP_COMPRESSION": "none",
        "OTEL_EXPORTER_OTLP_TRACES_COMPRESSION": "GZIP",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
    }
    config = exporter_config(env)
    assert config.headers == (("a", "traces"),)
    assert config.timeout == 2.5  # milliseconds, as the specification says
    assert config.compression == "gzip"
    assert config.protocol == "http/protobuf"


def test_headers_are_url_decoded_and_trimmed() -> None:
    """``k=v`` pairs separated by commas; keys and values percent-decoded, blanks ignored."""
    config = exporter_config(
        {"OTEL_EXPORTER_OTLP_HEADERS": " api-key = s%3Dcr%2Ct ,x-b=hello%20world,, "}
    )
    assert config.headers == (("api-key", "s=cr,t"), ("x-b", "hello world"))
    assert "s=cr,t" not in repr(config)  # secrets stay out of reprs and logs


def test_grpc_endpoints_and_insecure() -> None:
    """gRPC takes a URL (scheme decides TLS, path ignored) or host:port, where INSECURE decides."""
    grpc = {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}
    assert exporter_config(grpc).url == "http://localhost:4317"
    config = exporter_config({**grpc, "OTEL_EXPORTER_OTLP_ENDPOINT": "https://c:4317/ignored"})
    assert config.url == "https://c:4317" and config.secure
    bare = {**grpc, "OTEL_EXPORTER_OTLP_ENDPOINT": "c:4317"}
    assert exporter_config(bare).secure  # the specification's default: insecure=false
    plain = exporter_config({**bare, "OTEL_EXPORTER_OTLP_INSECURE": "TRUE"})
    assert plain.url == "http://c:4317" and not plain.secure
    # INSECURE does not override an explicit scheme.
    scheme = {
        **grpc,
        "OTEL_EXPORTER_OTLP_ENDPOINT": "https://c:4317",
        "OTEL_EXPORTER_OTLP_INSECURE": "true",
    }
    assert exporter_config(scheme).secure


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"}, "OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json' is not an OTLP protocol stagetrace can send; use http/protobuf or grpc (http/json is not supported)"),
        ({"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "thrift"}, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: 'thrift' is not an OTLP protocol"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"}, "OTEL_EXPORTER_OTLP_ENDPOINT: 'collector:4318' is not an http:// or https:// URL"),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "ftp://x/"}, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: 'ftp://x/' is not an http:// or https:// URL"),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:99999"}, "OTEL_EXPORTER_OTLP_ENDPOINT: 'http://x:99999' is not a URL"),
        ({"OTEL_EXPORTER_OTLP_TIMEOUT": "soon"}, "OTEL_EXPORTER_OTLP_TIMEOUT: 'soon' is not a number of milliseconds"),
        ({"OTEL_EXPORTER_OTLP_TRACES_TIMEOUT": "-5"}, "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT: '-5' is not a number of milliseconds above zero"),
        ({"OTEL_EXPORTER_OTLP_TIMEOUT": "nan"}, "is not a number of milliseconds above zero"),
        ({"OTEL_EXPORTER_OTLP_TIMEOUT": "10"}, "OTEL_EXPORTER_OTLP_TIMEOUT: '10' ms is too short for an export; the value is in milliseconds (the Python SDK reads seconds), e.g. 10000 for 10 s"),
        ({"OTEL_EXPORTER_OTLP_COMPRESSION": "br"}, "OTEL_EXPORTER_OTLP_COMPRESSION: 'br' is not supported; use gzip or none"),
        ({"OTEL_EXPORTER_OTLP_HEADERS": "novalue"}, "OTEL_EXPORTER_OTLP_HEADERS: 'novalue' has no '=value'"),
        ({"OTEL_EXPORTER_OTLP_HEADERS": "bad key=1"}, "OTEL_EXPORTER_OTLP_HEADERS: 'bad key' is not a valid header name"),
        ({"OTEL_EXPORTER_OTLP_INSECURE": "maybe"}, "OTEL_EXPORTER_OTLP_INSECURE: 'maybe' is not true or false"),
        ({"OTEL_EXPORTER_OTLP_CERTIFICATE": "/nonexistent/ca.pem"}, "OTEL_EXPORTER_OTLP_CERTIFICATE: no such file: '/nonexistent/ca.pem'"),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_ENDPOINT": "a/b"}, "OTEL_EXPORTER_OTLP_ENDPOINT: 'a/b' is not a gRPC target or URL"),
    ],
)  # fmt: skip
def test_bad_values_get_one_line_errors_naming_the_variable(
    env: dict[str, str], message: str
) -> None:
    """Every bad value is a ConfigurationError on one line that names the variable and value."""
    with pytest.raises(ConfigurationError) as info:
        exporter_config(env)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "env",
    [
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://alice:s3cretpw@collector:4318/?api_key=k3y"},
        {"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "https://alice:s3cretpw@c/v1/traces?api_key=k3y"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://alice:s3cretpw@c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "alice:s3cretpw@c:4317", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
    ],
)  # fmt: skip
def test_endpoint_credentials_become_basic_auth_and_are_never_shown(env: dict[str, str]) -> None:
    """The endpoint's ``user:password@`` is taken out of the URL and sent as Basic auth; what
    is shown of the endpoint (``display_url``, the repr) has neither it nor query values."""
    config = exporter_config(env)
    assert "alice" not in config.url and "s3cretpw" not in config.url
    assert dict(config.headers)["Authorization"].startswith("Basic ")
    for shown in (config.display_url, repr(config)):
        assert "alice" not in shown and "s3cretpw" not in shown and "k3y" not in shown
    assert "@c" not in config.display_url or "REDACTED@" in config.display_url


@pytest.mark.parametrize(
    "env",
    [
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://alice:s3cretpw@x:99999/?api_key=k3y"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "ftp://alice:s3cretpw@x/?api_key=k3y"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "alice:s3cretpw@x/?api_key=k3y", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"},
    ],
)  # fmt: skip
def test_a_bad_endpoint_error_does_not_repeat_its_secrets(env: dict[str, str]) -> None:
    """Refusing an endpoint names it without its credentials or query values, in one line."""
    with pytest.raises(ConfigurationError) as info:
        exporter_config(env)
    message = str(info.value)
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" in message and "REDACTED" in message
    assert "s3cretpw" not in message and "k3y" not in message and "\n" not in message


def test_unknown_override_is_refused() -> None:
    """A misspelt option is an error listing the known ones, not silently ignored."""
    with pytest.raises(ConfigurationError, match="unknown option\\(s\\) endpont; known: "):
        exporter_config({}, {"endpont": "http://x"})


def test_certificate_files_are_kept(tmp_path: Path) -> None:
    """CERTIFICATE / CLIENT_KEY / CLIENT_CERTIFICATE name existing files and are carried over
    (a CA file TLS can load: a self-signed certificate)."""
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    ca = tmp_path / "ca.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(tmp_path / "ca.key"), "-out", str(ca), "-days", "2",
         "-subj", "/CN=stagetrace test CA"],
        check=True, capture_output=True,
    )  # fmt: skip
    config = exporter_config({"OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE": str(ca)})
    assert config.certificate_file == str(ca)


def test_grpc_without_grpcio_names_the_pip_install_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """Choosing gRPC where grpcio cannot be imported fails at configuration with the exact
    ``pip install "stagetrace[otlp]"`` line."""
    real_import = builtins.__import__

    def no_grpc(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "grpc" or name.startswith("grpc."):
            raise ImportError("No module named 'grpc'")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "grpc", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_grpc)
    with pytest.raises(ConfigurationError) as info:
        exporter_config({"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc"})
    assert str(info.value) == (
        'OTLP over gRPC needs grpcio, which is not installed: pip install "stagetrace[otlp]"'
    )
    # HTTP needs nothing beyond the standard library.
    assert exporter_config({}).protocol == "http/protobuf"


@pytest.mark.parametrize(
    ("value", "protocol"),
    [
        ("api-key=s3cret%0D%0AX-Evil: 1", "http/protobuf"),
        ("api-key=s3cret%0Ax", "http/protobuf"),
        ("api-key=s3cret%00", "http/protobuf"),
        ("api-key=s3cret%E2%82%AC", "http/protobuf"),
        ("api-key=s3cret%C3%A9", "grpc"),
        ("api-key=s3cret%7F", "grpc"),
    ],
)
def test_a_header_value_no_request_can_carry_fails_at_configuration_without_showing_it(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, value: str, protocol: str
) -> None:
    """A percent-decoded ``OTEL_EXPORTER_OTLP_HEADERS`` value with a line break or another
    control character, or a character the protocol cannot send (HTTP: beyond Latin-1; gRPC
    metadata: beyond printable ASCII), is refused at configuration in one line naming the
    variable and the header, never its value (an API key) — not accepted, every export then
    failing on the worker and the value written to the log."""
    import stagetrace

    with pytest.raises(ConfigurationError) as info:
        exporter_config(
            {"OTEL_EXPORTER_OTLP_HEADERS": value, "OTEL_EXPORTER_OTLP_PROTOCOL": protocol}
        )
    message = str(info.value)
    assert "\n" not in message and "s3cret" not in message
    assert "OTEL_EXPORTER_OTLP_HEADERS" in message and "'api-key'" in message
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_HEADERS", value)
    with pytest.raises(ConfigurationError, match="OTEL_EXPORTER_OTLP_TRACES_HEADERS"):
        stagetrace.configure(sinks=["otel"])
    assert "s3cret" not in caplog.text
