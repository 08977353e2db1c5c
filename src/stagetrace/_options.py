"""Options: what each one accepts, and how the configuration layers are merged.

Pure functions of their inputs: nothing here keeps state, builds sinks or starts threads (that is
`_runtime`). Configuration comes from layers, highest first: explicit `configure(...)` arguments,
the framework's settings (Django's ``STAGETRACE = {...}``), ``STAGETRACE_<OPTION>`` environment
variables, defaults a framework adapter proposes (Django under ``DEBUG``: the console sink), and
the built-in defaults. Every value is checked where it came from, and a bad one raises
`ConfigurationError` naming the option, its source and what it accepts — in one line.
"""

from __future__ import annotations

import difflib
import json
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

from ._http.headers import redact_url

if TYPE_CHECKING:
    from .typing import Analyzer, Sink


class ConfigurationError(ValueError):
    """An option has a value stagetrace cannot use; the message names the option and its source."""


ConfigurationError.__module__ = "stagetrace"  # as tracebacks show it: where users import it


#: The HTTP methods the semantic conventions know by default (RFC 9110's, PATCH, QUERY); they
#: are case-sensitive. ``OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS`` replaces the whole list.
DEFAULT_KNOWN_METHODS = (
    "CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE", "QUERY"
)  # fmt: skip


@dataclass(frozen=True)
class Settings:
    """The resolved configuration. Read it with `stagetrace.settings()`; change it with
    `stagetrace.configure()`."""

    enabled: bool = True
    sinks: tuple[Sink, ...] = ()
    jsonl: str | None = None
    sample_rate: float = 1.0
    exclude_paths: tuple[str, ...] = ()
    max_stages: int = 2000
    service: str = "unknown_service"
    analyzers: tuple[Analyzer, ...] = ()
    n_plus_one_threshold: int = 5
    queue_size: int = 1000
    memory_size: int = 100
    color: str = "auto"
    request_id_header: str = "x-request-id"
    echo_request_id: bool = False
    record_sql_params: bool = False
    max_sql_length: int = 4096
    max_attr_length: int = 4096
    record_headers: tuple[str, ...] = ()
    record_query_values: tuple[str, ...] = ()
    http_known_methods: tuple[str, ...] = DEFAULT_KNOWN_METHODS
    # the otel sink (docs/export.md)
    otlp_endpoint: str | None = None
    tracer_provider: Any = None
    otel_sample_rate: float = 1.0
    otel_keep_slower_than_ms: float | None = None
    otel_keep_errors: bool = True
    otel_keep_findings: bool = True
    otel_queue_size: int = 20_000
    otel_flush_timeout: float = 5.0
    # OpenTelemetry context, outbound propagation, metrics, Server-Timing
    otel_context: bool = False
    propagate_traceparent: bool = False
    meter_provider: Any = None
    server_timing: bool = False
    # derived, for the request path
    exclude_re: re.Pattern[str] | None = field(default=None, repr=False, compare=False)

    def __repr__(self) -> str:
        """As the dataclass writes it, with the OTLP endpoint's ``user:password@`` and query
        values redacted: settings get printed and logged, and those are credentials."""
        shown = []
        for f in fields(self):
            if f.repr:
                value = getattr(self, f.name)
                if f.name == "otlp_endpoint" and value is not None:
                    value = redact_url(value)
                shown.append(f"{f.name}={value!r}")
        return f"Settings({', '.join(shown)})"


# --- coercers: (value, from_env) -> value, or raise _Bad(what it accepts) -----------------------


class _Bad(Exception):
    """Raised by an option's coercer; carries what the option accepts."""


def _to_bool(value: Any, from_env: bool) -> bool:
    if isinstance(value, bool):
        return value
    if from_env and isinstance(value, str):
        v = value.strip().lower()
        if v in ("1", "true", "yes", "on"):
            return True
        if v in ("0", "false", "no", "off", ""):
            return False
    raise _Bad("true or false")


def _to_bool_or_auto(value: Any, from_env: bool) -> bool | None:
    """True, False, or None ("auto": decided from the other options)."""
    if value is None or (from_env and isinstance(value, str) and value.strip().lower() == "auto"):
        return None
    try:
        return _to_bool(value, from_env)
    except _Bad:
        raise _Bad("true, false or auto") from None


def _number(value: Any, from_env: bool, accepts: str) -> float:
    """A number (not a bool, not NaN; from the environment, its text), else `_Bad(accepts)`."""
    if isinstance(value, bool):
        raise _Bad(accepts)
    if from_env and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise _Bad(accepts) from None
    if not isinstance(value, (int, float)) or math.isnan(value):
        raise _Bad(accepts)
    return float(value)


def _to_rate(value: Any, from_env: bool) -> float:
    accepts = "a number from 0 to 1"
    rate = _number(value, from_env, accepts)
    if not 0.0 <= rate <= 1.0:
        raise _Bad(accepts)
    return rate


def _positive_int(value: Any, from_env: bool) -> int:
    accepts = "a whole number of at least 1"
    if isinstance(value, bool):
        raise _Bad(accepts)
    if from_env and isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise _Bad(accepts) from None
    if not isinstance(value, int) or value < 1:
        raise _Bad(accepts)
    return value


def _str_list(value: Any, from_env: bool) -> tuple[str, ...]:
    """A list of strings; from the environment a comma list, or a JSON array when a value
    itself needs commas."""
    if from_env and isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except ValueError:
                raise _Bad("a comma-separated list or a JSON array of strings") from None
        else:
            return tuple(p.strip() for p in text.split(",") if p.strip())
    if isinstance(value, str):
        return (value,)
    if isinstance(value, Iterable) and not isinstance(value, Mapping):
        items = tuple(value)
        if all(isinstance(v, str) for v in items):
            return items
    raise _Bad("a list of strings")


_COUNT = re.compile(r"\{\d*,?\d*\}")


def _split_regexes(text: str) -> tuple[str, ...]:
    """A comma list of regular expressions, split only at the commas that separate them: not
    inside ``{1,3}``, a group, a character class, or after a backslash."""
    parts: list[str] = []
    start = depth = class_start = skip = 0
    in_class = escaped = False
    for i, ch in enumerate(text):
        if i < skip:
            continue
        if escaped:
            escaped = False
        elif ch == "\\":
            escaped = True
        elif in_class:
            # ``]`` right after ``[`` or ``[^`` is a literal, not the class's end
            if ch == "]" and i > class_start:
                in_class = False
        elif ch == "[":
            in_class = True
            class_start = i + 2 if text.startswith("^", i + 1) else i + 1
        elif ch == "{":
            # a repetition count ({3}, {1,3}, {,2}): its comma stays; any other ``{`` is a
            # literal in Python's regexes and opens nothing
            count = _COUNT.match(text, i)
            if count is not None:
                skip = count.end()
        elif ch == "(":
            depth += 1
        elif ch == ")" and depth:
            depth -= 1
        elif ch == "," and not depth:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return tuple(p.strip() for p in parts if p.strip())


def _regexes(value: Any, from_env: bool) -> tuple[str, ...]:
    if from_env and isinstance(value, str):
        text = value.strip()
        try:  # a JSON array of strings, else regexes separated by commas
            found = json.loads(text) if text.startswith("[") else None
        except ValueError:
            found = None
        if isinstance(found, list) and all(isinstance(v, str) for v in found):
            value = found
        else:
            value = _split_regexes(text)
    patterns = _str_list(value, False)
    for p in patterns:
        try:
            re.compile(p)
        except re.error as exc:
            raise _Bad(f"valid regular expressions ({p!r}: {exc})") from None
    return patterns


def _utf8(text: str) -> bool:
    """Whether `text` can be written as UTF-8. Not when it holds lone surrogates: how Python
    decodes bytes of another encoding in the environment, argv and file names."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


#: What a text option refuses that is not UTF-8: every export writes it, and none could.
_NOT_UTF8 = "text that is valid UTF-8 (this holds bytes of another encoding)"


def _text(value: Any, from_env: bool) -> str:
    if isinstance(value, str) and value.strip():
        if not _utf8(value):
            raise _Bad(_NOT_UTF8)
        return value.strip()
    raise _Bad("a non-empty string")


def _path_or_none(value: Any, from_env: bool) -> str | None:
    if value is None or (from_env and value == ""):
        return None
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, str) and value:
        return value
    raise _Bad("a file path")


def _color(value: Any, from_env: bool) -> str:
    if isinstance(value, bool):
        return "always" if value else "never"
    if isinstance(value, str) and value.strip().lower() in ("auto", "always", "never"):
        return value.strip().lower()
    raise _Bad("'auto', 'always' or 'never'")


_TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")


def _header(value: Any, from_env: bool) -> str:
    if isinstance(value, str) and _TOKEN.fullmatch(value.strip()):
        return value.strip().lower()
    raise _Bad("an HTTP header name")


#: Headers whose values are never recorded, whatever the configuration says.
SECRET_HEADERS = frozenset(
    ("authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key", "x-csrftoken")
)


def _header_list(value: Any, from_env: bool) -> tuple[str, ...]:
    names = _str_list(value, from_env)
    out = []
    for name in names:
        if not _TOKEN.fullmatch(name.strip()):
            raise _Bad(f"a list of HTTP header names ({name!r} is not one)")
        lname = name.strip().lower()
        if lname in SECRET_HEADERS:
            raise _Bad(
                f"a list of HTTP header names; {lname!r} carries secrets and is never recorded"
            )
        out.append(lname)
    return tuple(out)


def _id_header(value: Any, from_env: bool) -> str:
    """The request id's header: its value is recorded on every timeline (and echoed back with
    `echo_request_id`), so never one of the `SECRET_HEADERS`."""
    name = _header(value, from_env)
    if name in SECRET_HEADERS:
        raise _Bad(f"an HTTP header name; {name!r} carries secrets and is never recorded")
    return name


def _methods(value: Any, from_env: bool) -> tuple[str, ...]:
    accepts = "a list of HTTP methods (case-sensitive tokens such as GET or PROPFIND)"
    try:
        names = _str_list(value, from_env)
    except _Bad:
        raise _Bad(accepts) from None
    out = []
    for name in names:
        if not _TOKEN.fullmatch(name.strip()):
            raise _Bad(f"{accepts}; {name!r} is not one")
        out.append(name.strip())
    return tuple(out)


def _query_names(value: Any, from_env: bool) -> tuple[str, ...]:
    return tuple(n.strip() for n in _str_list(value, from_env) if n.strip())


SINK_NAMES = ("console", "jsonl", "memory", "otel", "otel-metrics")


def _sinks(value: Any, from_env: bool) -> tuple[Any, ...]:
    accepts = f"a list of sink names ({', '.join(SINK_NAMES)}) or sink objects"
    if from_env or isinstance(value, str):
        items: tuple[Any, ...] = _str_list(value, from_env)
    elif isinstance(value, Iterable) and not isinstance(value, Mapping):
        items = tuple(value)
    else:
        raise _Bad(accepts)
    for item in items:
        if isinstance(item, str):
            if item not in SINK_NAMES:
                close = difflib.get_close_matches(item, SINK_NAMES, 1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise _Bad(f"{accepts}; {item!r} is not one{hint}")
        elif not callable(getattr(item, "emit", None)):
            raise _Bad(f"{accepts}; {item!r} has no emit() method")
    return items


def _threshold(value: Any, from_env: bool) -> int:
    try:
        n = _positive_int(value, from_env)
    except _Bad:
        n = 0
    if n < 2:
        raise _Bad("a whole number of at least 2")
    return n


def _analyzers(value: Any, from_env: bool) -> tuple[Any, ...]:
    if from_env:
        raise _Bad("analyzer objects (set them with configure(), not the environment)")
    if isinstance(value, Iterable) and not isinstance(value, (str, Mapping)):
        items = tuple(value)
        if all(callable(a) for a in items):
            return items
    raise _Bad("a list of callables taking a Timeline")


def _url_or_none(value: Any, from_env: bool) -> str | None:
    if value is None or (from_env and value.strip() == ""):
        return None
    if isinstance(value, str) and re.match(r"https?://[^/\s]+", value.strip()):
        if not _utf8(value):  # no request could be sent to it
            raise _Bad(_NOT_UTF8)
        return value.strip()
    raise _Bad("an http:// or https:// URL")


def _tracer_provider(value: Any, from_env: bool) -> Any:
    if from_env:
        raise _Bad("a TracerProvider object (set it with configure(), not the environment)")
    if value is None or callable(getattr(value, "get_tracer", None)):
        return value
    raise _Bad("an OpenTelemetry TracerProvider")


def _millis_or_none(value: Any, from_env: bool) -> float | None:
    accepts = "a number of milliseconds (0 or more), or nothing"
    if value is None or (from_env and isinstance(value, str) and value.strip() == ""):
        return None
    millis = _number(value, from_env, accepts)
    if not 0 <= millis < math.inf:
        raise _Bad(accepts)
    return millis


def _seconds(value: Any, from_env: bool) -> float:
    accepts = "a number of seconds above 0"
    seconds = _number(value, from_env, accepts)
    if not 0 < seconds < math.inf:
        raise _Bad(accepts)
    return seconds


def _meter_provider(value: Any, from_env: bool) -> Any:
    accepts = "an OpenTelemetry MeterProvider (set it with configure(), not the environment)"
    if from_env:
        raise _Bad(accepts)
    if value is None or callable(getattr(value, "get_meter", None)):
        return value
    raise _Bad(accepts)


@dataclass(frozen=True)
class _Option:
    coerce: Callable[[Any, bool], Any]
    doc: str


OPTIONS: dict[str, _Option] = {
    "enabled": _Option(_to_bool, "record timelines at all"),
    "sinks": _Option(
        _sinks, "where finished timelines go: console, jsonl, memory, otel, otel-metrics"
    ),
    "jsonl": _Option(_path_or_none, "path of the JSON lines file (always adds the jsonl sink)"),
    "sample_rate": _Option(_to_rate, "fraction of requests recorded"),
    "exclude_paths": _Option(_regexes, "regexes; matching request paths are not recorded"),
    "max_stages": _Option(_positive_int, "stages kept per timeline; later ones are counted"),
    "service": _Option(_text, "service name (default: OTEL_SERVICE_NAME)"),
    "analyzers": _Option(
        _analyzers, "callables adding findings (default: N+1 and duplicate queries)"
    ),
    "n_plus_one_threshold": _Option(_threshold, "repeats of one query that make an N+1"),
    "queue_size": _Option(_positive_int, "timelines waiting for background sinks"),
    "memory_size": _Option(_positive_int, "timelines the memory sink keeps"),
    "color": _Option(_color, "console colours: auto (only on a terminal), always, never"),
    "request_id_header": _Option(
        _id_header, "incoming header holding the request id (not one that carries secrets)"
    ),
    "echo_request_id": _Option(_to_bool, "add the request id header to responses"),
    "record_sql_params": _Option(_to_bool, "record SQL parameter values (off: placeholders)"),
    "max_sql_length": _Option(_positive_int, "characters of SQL text kept per query"),
    "max_attr_length": _Option(_positive_int, "characters kept of any other attribute value"),
    "record_headers": _Option(_header_list, "request headers whose values are recorded"),
    "record_query_values": _Option(
        _query_names, "query parameters whose values are recorded (others: name only)"
    ),
    "http_known_methods": _Option(
        _methods,
        "HTTP methods spans and metrics show as they are (case-sensitive); others as _OTHER",
    ),
    "otlp_endpoint": _Option(
        _url_or_none, "otel sink: OTLP base URL (default: OTEL_EXPORTER_OTLP_ENDPOINT)"
    ),
    "tracer_provider": _Option(
        _tracer_provider, "otel sink: an SDK TracerProvider to hand spans to (configure() only)"
    ),
    "otel_sample_rate": _Option(
        _to_rate, "otel sink: fraction of the requests no tail rule keeps that are exported"
    ),
    "otel_keep_slower_than_ms": _Option(
        _millis_or_none, "otel sink: always export requests at least this slow"
    ),
    "otel_keep_errors": _Option(_to_bool, "otel sink: always export 5xx and failed requests"),
    "otel_keep_findings": _Option(_to_bool, "otel sink: always export requests with findings"),
    "otel_queue_size": _Option(_positive_int, "otel sink: spans waiting for export at most"),
    "otel_flush_timeout": _Option(
        _seconds, "otel sink: longest wait for the collector at flush, shutdown and exit"
    ),
    # OpenTelemetry context, outbound propagation, metrics, Server-Timing (docs/opentelemetry.md)
    "otel_context": _Option(
        _to_bool_or_auto,
        "make each recorded request's current stage the OpenTelemetry current span "
        "(default: with the otel sink, which exports those stages; needs it)",
    ),
    "propagate_traceparent": _Option(
        _to_bool_or_auto,
        "add traceparent to outbound httpx/requests calls of recorded requests "
        "(default: with the otel sink, which exports the stages it names)",
    ),
    "meter_provider": _Option(
        _meter_provider, "MeterProvider for stage metrics (default: the global SDK one)"
    ),
    "server_timing": _Option(
        _to_bool, "add a Server-Timing header with per-kind totals (default: on under DEBUG)"
    ),
}


def known_options() -> Sequence[tuple[str, str]]:
    """(name, description) of every option, for documentation and error messages."""
    return [(name, opt.doc) for name, opt in OPTIONS.items()]


def default_service(environ: Mapping[str, str]) -> str:
    """``OTEL_SERVICE_NAME``, else ``service.name`` in ``OTEL_RESOURCE_ATTRIBUTES`` (whose
    values are percent-encoded, as the SDK's resource detection reads them), checked as the
    ``service`` option is (it goes into every timeline)."""
    name = environ.get("OTEL_SERVICE_NAME", "").strip()
    if name:
        return str(coerce("service", name, "environment OTEL_SERVICE_NAME", True))
    found = None
    for part in environ.get("OTEL_RESOURCE_ATTRIBUTES", "").split(","):
        key, _, value = part.partition("=")
        if key.strip() == "service.name" and value.strip():
            found = value.strip()  # the last one, as in the SDK's resource detection
    if found is not None:
        # undecodable escapes become U+FFFD, as in the SDK's resource detection
        return str(coerce("service", unquote(found), "environment OTEL_RESOURCE_ATTRIBUTES", True))
    return "unknown_service"


def default_known_methods(environ: Mapping[str, str]) -> tuple[str, ...]:
    """``OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS`` (comma-separated, case-sensitive: the
    semantic conventions' variable, a full override of their list), else that list."""
    raw = environ.get("OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS", "")
    if not raw.strip():
        return DEFAULT_KNOWN_METHODS
    source = "environment OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS"
    return tuple(coerce("http_known_methods", raw, source, True))


def check_names(options: Mapping[str, Any], source: str) -> None:
    """Refuse option names stagetrace does not know, naming the known ones."""
    for name in options:
        if name not in OPTIONS:
            close = difflib.get_close_matches(str(name), OPTIONS, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            known = ", ".join(OPTIONS)
            raise ConfigurationError(
                f"unknown stagetrace option {name!r} ({source}); {hint}known options: {known}"
            )


def coerce(name: str, value: Any, source: str, from_env: bool = False) -> Any:
    """One option's value, checked; `ConfigurationError` says what is wrong in one line."""
    try:
        return OPTIONS[name].coerce(value, from_env)
    except _Bad as bad:
        hint = _as_text_hint(name, value) if not from_env else ""
        if name == "otlp_endpoint" and isinstance(value, str):
            value = redact_url(value)  # an endpoint's user:password@ and ?api_key= are secrets
        raise ConfigurationError(
            f"stagetrace option {name!r} ({source}): expected {bad}, got {_short(value)}{hint}"
        ) from None


def _as_text_hint(name: str, value: Any) -> str:
    """When a string was given in code (``configure()``, Django's ``STAGETRACE``) for an option
    that reads such text only from the environment (``"false"``, ``"0.5"``): what to write
    instead — else "expected true or false, got 'false'" reads as a contradiction."""
    if not isinstance(value, str):
        return ""
    try:
        meant = OPTIONS[name].coerce(value, True)
    except Exception:
        return ""
    return f" (text is read only from the environment; in code write {meant!r})"


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 200 else text[:200] + "…"


def resolve(
    explicit: Mapping[str, Any],
    framework: Mapping[str, Any],
    framework_source: str,
    environ: Mapping[str, str],
    proposed: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Merge the layers into a dict of checked option values (sinks still as given: names and
    objects; `_runtime` builds them). `proposed` holds an adapter's defaults, below the
    environment."""
    values: dict[str, Any] = {}
    for name in OPTIONS:
        env_name = "STAGETRACE_" + name.upper()
        if env_name in environ:
            values[name] = coerce(name, environ[env_name], f"environment {env_name}", True)
    for layer, source in ((framework, framework_source), (explicit, "configure()")):
        check_names(layer, source)
        for name, value in layer.items():
            values[name] = coerce(name, value, source)
    for name, value in (proposed or {}).items():
        # An adapter's proposal fills only what no layer chose (a JSON lines path set anywhere
        # is written besides a proposed sink list: `sink_plan`).
        if name not in values:
            values[name] = coerce(name, value, "framework default")
    if "service" not in values:
        values["service"] = default_service(environ)
    if "http_known_methods" not in values:
        values["http_known_methods"] = default_known_methods(environ)
    return values


def sink_plan(values: Mapping[str, Any]) -> tuple[Any, ...]:
    """The sinks to build, as names and objects: what was asked for, plus ``jsonl`` whenever a
    path is set (setting a path means the file gets written, whatever else is chosen)."""
    requested = tuple(values.get("sinks") or ())
    if values.get("jsonl") and "jsonl" not in requested:
        requested += ("jsonl",)
    if "jsonl" in requested and not values.get("jsonl"):
        raise ConfigurationError(
            "stagetrace option 'sinks' lists 'jsonl' but no file is set: "
            "set 'jsonl' (STAGETRACE_JSONL) to a path"
        )
    return requested


def settings_from(values: Mapping[str, Any], sinks: tuple[Sink, ...]) -> Settings:
    """The `Settings` object for resolved values and built sinks."""
    data = dict(values)
    named = {s for s in values.get("sinks") or () if isinstance(s, str)}
    data["sinks"] = sinks
    # Trace context that names stage spans (the OpenTelemetry current span, an outbound
    # traceparent) only where those spans reach a collector: otherwise the spans of other
    # instrumentations and of downstream services would point at parents nobody receives.
    exports = any(getattr(s, "exports_stage_spans", False) for s in sinks)
    hooked = any(getattr(s, "context_hook", None) is not None for s in sinks)
    if data.get("otel_context") is None:
        data["otel_context"] = hooked
    elif data["otel_context"] and not exports and "otel" in named:
        # The otel sink was asked for and left out (OTEL_SDK_DISABLED=true): so is its context.
        data["otel_context"] = False
    elif data["otel_context"] and not exports:
        raise ConfigurationError(
            "stagetrace option 'otel_context' needs the otel sink (sinks=[..., 'otel']): "
            "without it the stages it makes OpenTelemetry's current span are never exported, "
            "and OpenTelemetry's spans would point at parents no collector receives"
        )
    elif data["otel_context"] and not hooked:
        raise ConfigurationError(
            "stagetrace option 'otel_context' needs the OpenTelemetry API, which is not "
            'installed: pip install "stagetrace[otlp]"'
        )
    if data.get("propagate_traceparent") is None:
        data["propagate_traceparent"] = exports
    elif data["propagate_traceparent"] and not exports and "otel" in named:
        # Likewise: an outbound traceparent would name a stage span nobody receives.
        data["propagate_traceparent"] = False
    patterns = data.get("exclude_paths", ())
    if patterns:
        data["exclude_re"] = re.compile("|".join(f"(?:{p})" for p in patterns))
    return Settings(**data)
