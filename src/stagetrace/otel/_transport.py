"""Sending OTLP trace request bytes: OTLP/HTTP with ``http.client`` keep-alive, or OTLP/gRPC.

Both transports take the bytes :class:`~stagetrace.otel._encode.SpanEncoder` produced and send
them as they are. Each :meth:`~Transport.export` call has a deadline, retries what the OTLP spec
calls retryable (HTTP 429, 502, 503, 504; gRPC UNAVAILABLE and friends) with exponential backoff
that never sleeps past that deadline, and returns an :class:`ExportOutcome` for the caller to
count. Nothing here blocks forever: every socket operation and every RPC has a timeout, and
:meth:`~Transport.close` interrupts a backoff sleep at once.

Configuration follows the OTLP exporter specification's environment variables
(:func:`exporter_config`); OTLP/HTTP needs only the standard library, OTLP/gRPC needs ``grpcio``,
which the ``otlp`` extra installs.
"""

from __future__ import annotations

import base64
import datetime
import email.utils
import http.client
import os
import random
import ssl
import threading
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Final, Literal, Protocol
from urllib.parse import SplitResult, unquote, urlsplit

from .._http.headers import redact_url
from .._options import ConfigurationError

__all__ = [
    "GRPC_INSTALL_HINT",
    "ExportOutcome",
    "ExportResult",
    "ExporterConfig",
    "GrpcTransport",
    "HttpTransport",
    "Transport",
    "exporter_config",
    "make_transport",
]

#: What to run when grpcio is missing; the ``otlp`` extra holds grpcio.
GRPC_INSTALL_HINT = 'pip install "stagetrace[otlp]"'

Protocol_ = Literal["http/protobuf", "grpc"]
HTTP_PROTOBUF: Final = "http/protobuf"
GRPC: Final = "grpc"

_DEFAULT_HTTP = "http://localhost:4318"
_DEFAULT_GRPC = "http://localhost:4317"
_DEFAULT_TIMEOUT = 10.0
#: Below this an OTEL_EXPORTER_OTLP_TIMEOUT was almost surely meant in seconds.
_MIN_TIMEOUT_MS = 100.0
_GRPC_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
_RETRYABLE_HTTP = frozenset({429, 502, 503, 504})


@dataclass(frozen=True)
class ExporterConfig:
    """Where and how to send spans, resolved from the environment and explicit overrides.

    ``url`` is the full URL spans are POSTed to (OTLP/HTTP) or the ``http(s)://host:port`` the
    gRPC channel connects to, without the endpoint's ``user:password@`` (that is sent as an
    ``Authorization`` header); its query may still hold an API key: show `display_url`, never
    ``url``. ``secure`` says whether TLS is used. ``timeout`` is in seconds: the default deadline
    of one export, retries included. ``headers`` are sent with every export (their values are
    secrets as often as not: never log them).
    """

    url: str
    protocol: Protocol_ = HTTP_PROTOBUF
    headers: tuple[tuple[str, str], ...] = ()
    timeout: float = _DEFAULT_TIMEOUT
    compression: Literal["gzip", "none"] = "none"
    secure: bool = False
    certificate_file: str | None = None
    client_key_file: str | None = None
    client_certificate_file: str | None = None

    @property
    def display_url(self) -> str:
        """``url`` as logs, errors and reprs show it: query values redacted (an ``?api_key=``)."""
        return redact_url(self.url)

    def __repr__(self) -> str:  # headers often carry API keys: keep them out of logs
        hidden = tuple((k, "***") for k, _ in self.headers)
        return (
            f"ExporterConfig(url={self.display_url!r}, protocol={self.protocol!r}, "
            f"headers={hidden!r}, timeout={self.timeout!r}, compression={self.compression!r}, "
            f"secure={self.secure!r})"
        )


_OVERRIDES = frozenset(
    {
        "endpoint",
        "traces_endpoint",
        "protocol",
        "headers",
        "timeout",
        "compression",
        "insecure",
        "certificate_file",
        "client_key_file",
        "client_certificate_file",
    }
)


def exporter_config(
    environ: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None
) -> ExporterConfig:
    """Resolve the OTLP trace exporter's configuration. Pure: reads only its arguments.

    ``environ`` (default ``os.environ``) supplies the standard variables, the ``TRACES_`` one
    winning over the generic one: ``OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT``, ``_PROTOCOL``
    (``http/protobuf``, the default, or ``grpc``), ``_HEADERS`` (``k1=v1,k2=v2``, URL-encoded),
    ``_TIMEOUT`` (milliseconds, as the specification says, default 10 s; the Python SDK reads
    seconds, so values under 100 ms are refused as a likely mix-up), ``_COMPRESSION``
    (``gzip`` or ``none``), ``_INSECURE`` (gRPC without a scheme), ``_CERTIFICATE``,
    ``_CLIENT_KEY``, ``_CLIENT_CERTIFICATE``.

    For OTLP/HTTP the generic endpoint is a base URL that gets ``/v1/traces`` appended; the
    traces endpoint is used as it is. ``overrides`` win over both and use the same rules:
    ``endpoint`` (base), ``traces_endpoint`` (as is), ``protocol``, ``headers`` (a mapping or
    the header string), ``timeout`` (seconds), ``compression``, ``insecure``,
    ``certificate_file``, ``client_key_file``, ``client_certificate_file``.

    Bad values raise :class:`stagetrace.ConfigurationError` with a one-line message naming the
    variable; choosing gRPC without ``grpcio`` installed says which ``pip install`` to run.
    """
    env = os.environ if environ is None else environ
    over = dict(overrides or {})
    unknown = sorted(set(over) - _OVERRIDES)
    if unknown:
        raise ConfigurationError(
            f"OTLP exporter: unknown option(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(_OVERRIDES))}"
        )

    def pick(name: str, option: str) -> tuple[str, str] | None:
        """(value, where it came from): the override, else TRACES_ variable, else generic."""
        if over.get(option) is not None:
            return over[option], f"option {option!r}"
        for var in (f"OTEL_EXPORTER_OTLP_TRACES_{name}", f"OTEL_EXPORTER_OTLP_{name}"):
            value = env.get(var, "").strip()
            if value:
                return value, var
        return None

    protocol_pick = pick("PROTOCOL", "protocol")
    protocol = protocol_pick[0].strip().lower() if protocol_pick else HTTP_PROTOBUF
    if protocol not in (HTTP_PROTOBUF, GRPC):
        where = protocol_pick[1] if protocol_pick else "protocol"
        hint = " (http/json is not supported)" if protocol == "http/json" else ""
        raise ConfigurationError(
            f"{where}: {protocol_pick[0] if protocol_pick else protocol!r} is not an OTLP "
            f"protocol stagetrace can send; use http/protobuf or grpc{hint}"
        )
    if protocol == GRPC:
        _require_grpc()

    url, secure, userinfo = _endpoint(env, over, protocol)
    insecure_pick = pick("INSECURE", "insecure")
    if protocol == GRPC and insecure_pick is not None and "://" not in url:
        secure = not _boolean(*insecure_pick)
    elif insecure_pick is not None:
        _boolean(*insecure_pick)  # still validated, though it only matters for scheme-less gRPC
    if protocol == GRPC and "://" not in url:
        url = ("https://" if secure else "http://") + url

    headers_pick = pick("HEADERS", "headers")
    headers: tuple[tuple[str, str], ...] = ()
    if headers_pick is not None:
        raw, where = headers_pick
        if isinstance(raw, Mapping):
            headers = tuple((str(k).strip(), str(v).strip()) for k, v in raw.items())
        else:
            headers = _parse_headers(str(raw), where)
        for key, value in headers:
            if not key or not _is_token(key):
                raise ConfigurationError(f"{where}: {key!r} is not a valid header name")
            bad = _bad_header_value(value, protocol)
            if bad:  # the value is often an API key: never shown
                raise ConfigurationError(f"{where}: the value of {key!r} {bad}")
    if userinfo is not None and not any(k.lower() == "authorization" for k, _ in headers):
        headers += (("Authorization", _basic_auth(userinfo)),)

    timeout = _DEFAULT_TIMEOUT
    timeout_over = over.get("timeout")
    if timeout_over is not None:
        timeout = _number(timeout_over, "option 'timeout'", "a number of seconds")
    else:
        timeout_pick = pick("TIMEOUT", "timeout")
        if timeout_pick is not None:
            ms = _number(timeout_pick[0], timeout_pick[1], "a number of milliseconds")
            if ms < _MIN_TIMEOUT_MS:
                # The Python SDK reads this variable as seconds; the specification says ms.
                raise ConfigurationError(
                    f"{timeout_pick[1]}: {timeout_pick[0]!r} ms is too short for an export; the "
                    f"value is in milliseconds (the Python SDK reads seconds), e.g. 10000 for "
                    f"10 s, or pass stagetrace's timeout option in seconds"
                )
            timeout = ms / 1000.0

    compression_pick = pick("COMPRESSION", "compression")
    compression = compression_pick[0].strip().lower() if compression_pick else "none"
    if compression not in ("gzip", "none"):
        raise ConfigurationError(
            f"{compression_pick[1] if compression_pick else 'compression'}: "
            f"{compression!r} is not supported; use gzip or none"
        )

    files: dict[str, str | None] = {}
    sources: dict[str, str] = {}
    for name, option in (
        ("CERTIFICATE", "certificate_file"),
        ("CLIENT_KEY", "client_key_file"),
        ("CLIENT_CERTIFICATE", "client_certificate_file"),
    ):
        chosen = pick(name, option)
        if chosen is not None and not os.path.isfile(chosen[0]):
            raise ConfigurationError(f"{chosen[1]}: no such file: {chosen[0]!r}")
        files[option] = chosen[0] if chosen else None
        if chosen is not None:
            sources[option] = chosen[1]
    _check_tls_files(files, sources)

    return ExporterConfig(
        url=url,
        protocol=protocol,  # type: ignore[arg-type]
        headers=headers,
        timeout=timeout,
        compression=compression,  # type: ignore[arg-type]
        secure=secure,
        **files,
    )


def _no_password() -> bytes:
    raise _Encrypted


class _Encrypted(Exception):
    """Raised instead of OpenSSL prompting on the terminal for a key's pass phrase."""


def _check_tls_files(files: Mapping[str, str | None], sources: Mapping[str, str]) -> None:
    """Load the certificate files as the transports will, so that one that is not PEM (or a
    key that needs a pass phrase) fails here in one line naming its variable, not as an
    ``ssl.SSLError`` traceback at configuration or a failed connection at every export."""
    ca = files.get("certificate_file")
    if ca:
        try:
            ssl.create_default_context(cafile=ca)
        except (ssl.SSLError, ValueError, OSError) as exc:
            raise ConfigurationError(
                f"{sources['certificate_file']}: {ca!r} holds no PEM certificate ({_describe(exc)})"
            ) from None
    cert, key = files.get("client_certificate_file"), files.get("client_key_file")
    if cert:
        where = sources["client_certificate_file"]
        if key:
            where += f" / {sources['client_key_file']}"
        try:
            ssl.create_default_context().load_cert_chain(cert, key, password=_no_password)
        except _Encrypted:
            raise ConfigurationError(
                f"{where}: the client key is encrypted; give an unencrypted PEM key"
            ) from None
        except (ssl.SSLError, ValueError, OSError) as exc:
            raise ConfigurationError(
                f"{where}: not a PEM client certificate and its key ({_describe(exc)})"
            ) from None


def _endpoint(
    env: Mapping[str, str], over: Mapping[str, Any], protocol: str
) -> tuple[str, bool, str | None]:
    """The URL (HTTP: with the traces path) without its ``user:password@``, whether it is TLS,
    and that userinfo (None when there is none)."""
    chosen: tuple[str, str, bool] | None = None  # value, where, used as is?
    if over.get("traces_endpoint"):
        chosen = (str(over["traces_endpoint"]), "option 'traces_endpoint'", True)
    elif over.get("endpoint"):
        chosen = (str(over["endpoint"]), "option 'endpoint'", False)
    else:
        for var, as_is in (
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", True),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", False),
        ):
            if env.get(var, "").strip():
                chosen = (env[var].strip(), var, as_is)
                break
    if protocol == GRPC:
        value, where = (chosen[0], chosen[1]) if chosen else (_DEFAULT_GRPC, "endpoint")
        if "://" not in value:  # host:port, as gRPC clients accept it
            if not value or "/" in value:
                shown = redact_url(value)
                raise ConfigurationError(f"{where}: {shown!r} is not a gRPC target or URL")
            userinfo, at, target = value.rpartition("@")
            return target, True, userinfo if at else None
        parts = _split_url(value, where)
        return f"{parts.scheme}://{_host_port(parts)}", parts.scheme == "https", _userinfo(parts)
    value, where, as_is = chosen if chosen else (_DEFAULT_HTTP, "endpoint", False)
    parts = _split_url(value, where)
    path = parts.path
    if not as_is:
        path = path.rstrip("/") + "/v1/traces"
    elif not path:
        path = "/"
    query = f"?{parts.query}" if parts.query else ""
    url = f"{parts.scheme}://{_host_port(parts)}{path}{query}"
    return url, parts.scheme == "https", _userinfo(parts)


def _split_url(value: str, where: str) -> SplitResult:
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 -- raises on a bad port
    except ValueError as exc:  # its message may quote a part of the URL (a password): not shown
        why = " (its port is not a number from 0 to 65535)" if "port" in str(exc).lower() else ""
        raise ConfigurationError(f"{where}: {redact_url(value)!r} is not a URL{why}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(
            f"{where}: {redact_url(value)!r} is not an http:// or https:// URL"
        )
    return parts


def _host_port(parts: SplitResult) -> str:
    """The URL's ``host:port`` as written, without its ``user:password@``."""
    return parts.netloc.rpartition("@")[2]


def _userinfo(parts: SplitResult) -> str | None:
    """The URL's ``user:password`` as written (percent-encoded), None when it has none."""
    userinfo, at, _ = parts.netloc.rpartition("@")
    return userinfo if at else None


def _basic_auth(userinfo: str) -> str:
    """The ``Authorization`` value for an endpoint's ``user:password@``: Basic, user and password
    percent-decoded, as OpenTelemetry's own OTLP/HTTP exporter sends it (through requests), so
    a collector behind basic auth accepts either exporter. UTF-8, as RFC 7617 advises."""
    user, _, password = userinfo.partition(":")
    token = base64.b64encode(f"{unquote(user)}:{unquote(password)}".encode()).decode("ascii")
    return f"Basic {token}"


def _parse_headers(raw: str, where: str) -> tuple[tuple[str, str], ...]:
    out = []
    for item in raw.split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigurationError(f"{where}: {unquote(key.strip())!r} has no '=value'")
        out.append((unquote(key).strip(), unquote(value).strip()))
    return tuple(out)


_TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _is_token(name: str) -> bool:
    return all(c in _TOKEN for c in name)


def _bad_header_value(value: str, protocol: str) -> str:
    """Why no request can carry header `value` ("" when one can): a line break or another
    control character (``http.client`` refuses it at every export, quoting it in the error;
    it could also end the header), or a character the protocol cannot send: HTTP/1.1 header
    values are Latin-1, gRPC metadata values printable ASCII."""
    for c in value:
        code = ord(c)
        if (code < 0x20 and c != "\t") or code == 0x7F:
            return "holds a control character (a line break?) that no request can carry"
        if code > (0x7E if protocol == GRPC else 0xFF):
            allowed = "printable ASCII (gRPC metadata)" if protocol == GRPC else "Latin-1"
            return f"holds a character a request cannot carry: header values are {allowed}"
    return ""


def _boolean(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1"):
        return True
    if text in ("false", "0"):
        return False
    raise ConfigurationError(f"{where}: {value!r} is not true or false")


def _number(value: Any, where: str, what: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigurationError(f"{where}: {value!r} is not {what}") from None
    if not number > 0 or number == float("inf"):
        raise ConfigurationError(f"{where}: {value!r} is not {what} above zero")
    return number


def _require_grpc() -> None:
    try:
        import grpc  # noqa: F401
    except ImportError:
        raise ConfigurationError(
            f"OTLP over gRPC needs grpcio, which is not installed: {GRPC_INSTALL_HINT}"
        ) from None


# -- results -----------------------------------------------------------------------------------


class ExportResult(Enum):
    """How one export ended."""

    #: The collector accepted the request (possibly rejecting some spans: see ``rejected``).
    OK = "ok"
    #: A failure worth trying again later: unreachable, overloaded, or the deadline ran out.
    RETRYABLE = "retryable"
    #: The collector refused the request (HTTP 400, 401, 413 ..., gRPC INVALID_ARGUMENT ...).
    FAILED = "failed"


@dataclass(frozen=True)
class ExportOutcome:
    """One export's result, how many attempts it took, and a short reason when it failed."""

    result: ExportResult
    attempts: int
    detail: str = ""
    #: Spans the collector reported rejecting in a partial success.
    rejected: int = 0

    @property
    def ok(self) -> bool:
        """Whether the collector accepted the request."""
        return self.result is ExportResult.OK


class Transport(Protocol):
    """Sends encoded ``ExportTraceServiceRequest`` bytes; what a sink holds."""

    config: ExporterConfig
    on_retry: Callable[[str], None] | None

    def export(self, data: bytes, deadline: float | None = None) -> ExportOutcome:
        """Send ``data``; give up at ``deadline`` (``time.monotonic()``), default now+timeout."""
        ...

    def close(self) -> None:
        """Release the connection and interrupt any backoff sleep; later exports reconnect."""
        ...


def make_transport(config: ExporterConfig) -> Transport:
    """The transport for ``config.protocol``."""
    if config.protocol == GRPC:
        return GrpcTransport(config)
    return HttpTransport(config)


@dataclass
class _Backoff:
    """Exponential backoff with jitter, bounded by a deadline, interruptible by ``close()``."""

    initial: float = 0.5
    maximum: float = 8.0
    woken: threading.Event = field(default_factory=threading.Event)

    def sleep(self, attempt: int, deadline: float, hint: float | None = None) -> bool:
        """Wait before attempt ``attempt + 1``; False when that would pass the deadline. A
        server's `hint` (``Retry-After``) makes the wait longer, never shorter: a collector
        answering ``429`` with ``Retry-After: 0`` again and again is not sent a request per
        round trip until the deadline."""
        delay = min(self.maximum, self.initial * 2 ** (attempt - 1)) * random.uniform(0.8, 1.2)
        if hint is not None:
            delay = max(delay, hint)
        if time.monotonic() + delay >= deadline:
            return False
        return not self.woken.wait(delay)


def partial_success_rejected(body: bytes) -> tuple[int, str]:
    """``(rejected_spans, error_message)`` from an ``ExportTraceServiceResponse``'s bytes."""
    try:
        inner = _field(body, 1)
        if inner is None:
            return 0, ""
        rejected, message = 0, ""
        pos = 0
        while pos < len(inner):
            tag, pos = _read_varint(inner, pos)
            number, wire = tag >> 3, tag & 7
            if wire == 0:
                value, pos = _read_varint(inner, pos)
                if number == 1:
                    rejected = value
            elif wire == 2:
                size, pos = _read_varint(inner, pos)
                if number == 2:
                    message = inner[pos : pos + size].decode("utf-8", "replace")
                pos += size
            else:
                break
        return rejected, message
    except (IndexError, ValueError):
        return 0, ""


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def _field(data: bytes, wanted: int) -> bytes | None:
    """The first length-delimited field `wanted` of a message."""
    found = _fields(data, wanted, first=True)
    return found[0] if found else None


def _gzip(data: bytes) -> bytes:
    # Level 1: on 500 typical spans (160 kB) 11x smaller in 0.5 ms, where level 6 is 13x in
    # 1.2 ms and level 9 (what gzip.compress and the official exporter use) 13x in 2.4 ms.
    compressor = zlib.compressobj(1, zlib.DEFLATED, 31)
    return compressor.compress(data) + compressor.flush()


# -- OTLP/HTTP ---------------------------------------------------------------------------------


class HttpTransport:
    """OTLP/HTTP protobuf over one persistent ``http.client`` connection (TLS for https).

    The connection is kept between exports and replaced after any error; a kept connection the
    collector closed while idle is retried at once on a fresh one. Not for concurrent use: one
    exporting thread owns it (the sink's worker).
    """

    #: Called with what went wrong when a request's first attempt failed and it is retried
    #: (the sink warns then, not only once the deadline has passed).
    on_retry: Callable[[str], None] | None = None

    def __init__(self, config: ExporterConfig) -> None:
        from ._about import version

        self.config = config
        parts = urlsplit(config.url)
        self._https = parts.scheme == "https"
        self._host = parts.hostname or "localhost"
        self._port = parts.port or (443 if self._https else 80)
        self._path = parts.path + (f"?{parts.query}" if parts.query else "")
        self._headers = {
            "Content-Type": "application/x-protobuf",
            "User-Agent": f"stagetrace/{version()}",
        }
        if config.compression == "gzip":
            self._headers["Content-Encoding"] = "gzip"
        self._headers.update(config.headers)
        self._ssl: ssl.SSLContext | None = None
        if self._https:
            self._ssl = ssl.create_default_context(cafile=config.certificate_file)
            if config.client_certificate_file:
                self._ssl.load_cert_chain(
                    config.client_certificate_file, config.client_key_file, password=_no_password
                )
        self._conn: http.client.HTTPConnection | None = None
        self._backoff = _Backoff()

    def _connection(self, timeout: float) -> tuple[http.client.HTTPConnection, bool]:
        conn = self._conn
        if conn is not None and conn.sock is not None:
            conn.sock.settimeout(timeout)
            return conn, True
        if self._https:
            conn = http.client.HTTPSConnection(
                self._host, self._port, timeout=timeout, context=self._ssl
            )
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=timeout)
        self._conn = conn
        return conn, False

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def export(self, data: bytes, deadline: float | None = None) -> ExportOutcome:
        """POST ``data``; retry 429/502/503/504 and connection errors until ``deadline``."""
        if deadline is None:
            deadline = time.monotonic() + self.config.timeout
        self._backoff.woken.clear()
        body = _gzip(data) if self.config.compression == "gzip" else data
        attempt = 0
        detail = ""
        while True:
            attempt += 1
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return ExportOutcome(ExportResult.RETRYABLE, attempt - 1, detail or "deadline")
            retry_after: float | None = None
            try:
                conn, reused = self._connection(remaining)
                try:
                    conn.request("POST", self._path, body, self._headers)
                    response = conn.getresponse()
                except (ConnectionError, http.client.RemoteDisconnected, BrokenPipeError):
                    if not reused:
                        raise
                    # The collector closed our idle keep-alive connection: retry at once.
                    self._drop()
                    conn, _ = self._connection(max(deadline - time.monotonic(), 0.001))
                    conn.request("POST", self._path, body, self._headers)
                    response = conn.getresponse()
                payload = response.read()
                if response.will_close:
                    self._drop()
            except ssl.SSLCertVerificationError as exc:
                self._drop()  # retrying cannot make the certificate valid
                return ExportOutcome(ExportResult.FAILED, attempt, _describe(exc))
            except (OSError, http.client.HTTPException) as exc:
                self._drop()
                detail = _describe(exc)
            else:
                status = response.status
                if 200 <= status < 300:
                    rejected, message = partial_success_rejected(payload)
                    return ExportOutcome(ExportResult.OK, attempt, message, rejected)
                detail = f"HTTP {status}"
                if status not in _RETRYABLE_HTTP:
                    return ExportOutcome(ExportResult.FAILED, attempt, detail)
                retry_after = _retry_after(response.getheader("Retry-After"))
            if attempt == 1 and self.on_retry is not None:
                self.on_retry(detail)
            if not self._backoff.sleep(attempt, deadline, retry_after):
                return ExportOutcome(ExportResult.RETRYABLE, attempt, detail)

    def close(self) -> None:
        """Close the connection and cut short any backoff sleep in progress."""
        self._backoff.woken.set()
        self._drop()


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value: a number of seconds or an HTTP date
    (RFC 9110 allows both); None when it is neither. At most an hour."""
    if not value:
        return None
    try:
        return min(max(0.0, float(value)), 3600.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT
        when = when.replace(tzinfo=datetime.timezone.utc)
    return min(max(0.0, when.timestamp() - time.time()), 3600.0)


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text.splitlines()[0][:200]


# -- OTLP/gRPC ---------------------------------------------------------------------------------

#: RESOURCE_EXHAUSTED only with a ``RetryInfo`` detail (`GrpcTransport.export`).
_RETRYABLE_GRPC = (
    "CANCELLED",
    "DEADLINE_EXCEEDED",
    "RESOURCE_EXHAUSTED",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNAVAILABLE",
    "DATA_LOSS",
)


class GrpcTransport:
    """OTLP/gRPC: one channel, and a unary call whose (de)serializers pass bytes through.

    The channel reconnects by itself; its reconnect backoff is capped at a few seconds so export
    resumes soon after the collector comes back. Safe to use from several threads.
    """

    #: Called with what went wrong when a request's first attempt failed and it is retried
    #: (the sink warns then, not only once the deadline has passed).
    on_retry: Callable[[str], None] | None = None

    def __init__(self, config: ExporterConfig) -> None:
        _require_grpc()
        import grpc

        self.config = config
        self._grpc = grpc
        self._channel: Any = None
        self._call: Any = None
        self._metadata = tuple((k.lower(), v) for k, v in config.headers)
        self._compression = grpc.Compression.Gzip if config.compression == "gzip" else None
        self._retryable = frozenset(getattr(grpc.StatusCode, name) for name in _RETRYABLE_GRPC)
        self._exhausted = grpc.StatusCode.RESOURCE_EXHAUSTED
        self._backoff = _Backoff()

    def _open(self) -> Any:
        grpc = self._grpc
        config = self.config
        target = urlsplit(config.url).netloc
        options = [
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", 2000),
            ("grpc.enable_retries", 0),  # we retry, bounded by our deadline
        ]
        if config.secure:
            credentials = grpc.ssl_channel_credentials(
                _read(config.certificate_file),
                _read(config.client_key_file),
                _read(config.client_certificate_file),
            )
            self._channel = grpc.secure_channel(target, credentials, options=options)
        else:
            self._channel = grpc.insecure_channel(target, options=options)
        # No serializers: the request bytes go out as they are, the response comes back as bytes.
        self._call = self._channel.unary_unary(_GRPC_METHOD)
        return self._call

    def export(self, data: bytes, deadline: float | None = None) -> ExportOutcome:
        """Call ``TraceService/Export``; retry UNAVAILABLE and friends until ``deadline``."""
        if deadline is None:
            deadline = time.monotonic() + self.config.timeout
        self._backoff.woken.clear()
        attempt = 0
        detail = ""
        while True:
            attempt += 1
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return ExportOutcome(ExportResult.RETRYABLE, attempt - 1, detail or "deadline")
            try:
                response = (self._call or self._open())(
                    data,
                    timeout=remaining,
                    metadata=self._metadata,
                    compression=self._compression,
                )
            except self._grpc.RpcError as exc:
                code = exc.code() if hasattr(exc, "code") else None
                detail = f"gRPC {getattr(code, 'name', code)}"
                if code not in self._retryable:
                    return ExportOutcome(ExportResult.FAILED, attempt, detail)
                retry_after = _retry_info_delay(exc)
                if retry_after is None and code is self._exhausted:
                    # retryable only when the collector says it will recover (the OTLP
                    # specification): with a RetryInfo detail
                    return ExportOutcome(ExportResult.FAILED, attempt, detail)
                if retry_after is _NO_DELAY:  # a RetryInfo without a delay: our backoff
                    retry_after = None
            else:
                rejected, message = partial_success_rejected(response or b"")
                return ExportOutcome(ExportResult.OK, attempt, message, rejected)
            if attempt == 1 and self.on_retry is not None:
                self.on_retry(detail)
            if not self._backoff.sleep(attempt, deadline, retry_after):
                return ExportOutcome(ExportResult.RETRYABLE, attempt, detail)

    def close(self) -> None:
        """Close the channel and cut short any backoff sleep in progress."""
        self._backoff.woken.set()
        channel, self._channel, self._call = self._channel, None, None
        if channel is not None:
            channel.close()


_RETRY_INFO = b"type.googleapis.com/google.rpc.RetryInfo"
#: What `_retry_info_delay` gives for a ``RetryInfo`` that names no delay: retry, with our
#: own backoff.
_NO_DELAY = -1.0


def _retry_info_delay(exc: Any) -> float | None:
    """The delay a gRPC error's ``google.rpc.RetryInfo`` asks for (in the trailing
    ``grpc-status-details-bin`` metadata: a ``google.rpc.Status`` whose ``details`` may hold
    it), in seconds; None when there is none or it cannot be read, `_NO_DELAY` when it is
    there without a delay. The OTLP specification's counterpart of HTTP's ``Retry-After``."""
    try:
        trailers = exc.trailing_metadata() or ()
        raw = next((v for k, v in trailers if k == "grpc-status-details-bin"), None)
        if not isinstance(raw, bytes):
            return None
        for detail in _fields(raw, 3):  # Status.details: repeated Any
            if _field(detail, 1) == _RETRY_INFO:  # Any.type_url
                delay = _field(_field(detail, 2) or b"", 1)  # RetryInfo.retry_delay
                if delay is None:
                    return _NO_DELAY
                seconds = nanos = 0
                pos = 0
                while pos < len(delay):  # Duration: seconds (1), nanos (2), both varints
                    tag, pos = _read_varint(delay, pos)
                    value, pos = _read_varint(delay, pos)
                    if tag == 0x08:
                        seconds = value
                    elif tag == 0x10:
                        nanos = value
                return max(0.0, min(seconds + nanos / 1e9, 3600.0))
    except Exception:  # a malformed detail: our own backoff
        return None
    return None


def _fields(data: bytes, wanted: int, first: bool = False) -> list[bytes]:
    """Every length-delimited field `wanted` of a message (a repeated message field); with
    `first`, only the first one."""
    out: list[bytes] = []
    pos = 0
    while pos < len(data):
        tag, pos = _read_varint(data, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 2:
            size, pos = _read_varint(data, pos)
            if number == wanted:
                out.append(data[pos : pos + size])
                if first:
                    return out
            pos += size
        elif wire == 0:
            _, pos = _read_varint(data, pos)
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise ValueError("unsupported wire type")
    return out


def _read(path: str | None) -> bytes | None:
    if not path:
        return None
    with open(path, "rb") as f:
        return f.read()
