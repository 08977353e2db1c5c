"""Timeline → OpenTelemetry spans, as the plain 12-tuples `_encode.SpanEncoder` takes.

One timeline becomes one trace fragment:

* the root stage becomes a span of kind SERVER (CONSUMER for a job) named ``"{METHOD} {route}"``
  (the method alone when no route matched), parented to the remote parent of an incoming
  ``traceparent`` (with the "parent is remote" flag set) and carrying its ``tracestate`` — or
  of kind INTERNAL, not flagged remote, when its parent is an OpenTelemetry span of this
  process that was current as it began (`Timeline.parent_is_remote` false: FastAPI's own
  telemetry, OpenTelemetry's ASGI middleware outside stagetrace's), which is then the entry;
* every other stage becomes a child span with its recorded start and end, parented to its
  parent stage, with the span id the request saw while it ran (``stage_span_id``): spans that
  other instrumentation made under a stage nest under it. ``db.query`` and ``http.client`` are
  CLIENT spans, all others INTERNAL. ``orm.compile`` and ``orm.fetch`` are spans too (a
  measured choice, see docs/export.md: an event costs about as much to encode as a span, and a
  stage that was current during the request must exist as a span, or children that other
  instrumentation parented to it would be orphans);
* attributes: what the adapters recorded, which already uses the semantic conventions' names
  (``http.request.method``, ``db.query.text`` ...), plus ``url.path`` and ``http.route`` on the
  root; anything that is not a semantic-convention name goes under ``stagetrace.``; and
  stagetrace's own: ``stagetrace.kind``, ``stagetrace.self_time_ns`` (left out when it equals
  the span's duration: a stage without children), for middleware instead
  ``stagetrace.middleware.in_ns`` / ``.out_ns`` (its own time, in detail) and
  ``.short_circuit``; findings are events on the root span (``stagetrace.finding``) and
  ``stagetrace.findings`` (the finding kinds, comma separated: a string repeats and encodes
  once, a list would be encoded every time) on the stages involved;
* status: a stage that ended with an exception is ERROR with ``error.type`` and an
  ``exception`` event (``exception.type``, ``exception.message``); a server span is ERROR on a
  5xx (``error.type`` the status code), not on a 4xx; an ``http.client`` span on any status of
  400 and above.

Works straight from the frozen `Timeline`'s stages: no SDK objects. `to_readable_spans` builds
SDK ``ReadableSpan`` objects from the same tuples for a user's ``TracerProvider``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .._model import Timeline, span_id_masks
from .._recorder import stages_once
from ._encode import (
    _INT64_LIMIT,
    _INT64_MIN,
    _UINT64_MASK,
    _VARINT1,
    KIND_CLIENT,
    KIND_CONSUMER,
    KIND_INTERNAL,
    KIND_SERVER,
    SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE,
    SPAN_FLAGS_CONTEXT_IS_REMOTE,
    STATUS_ERROR,
    STATUS_UNSET,
    SpanEncoder,
    _pack_times,
    _varint,
    dropped_attributes_field,
    times_field,
    utf8,
)
from ._metrics import KNOWN_METHODS

__all__ = [
    "export_key",
    "parse_resource_attributes",
    "resource_attributes",
    "span_name",
    "spans_of",
    "timeline_spans",
]

_CLIENT_KINDS = frozenset(("db.query", "http.client"))
_UNSET = (STATUS_UNSET, "")
#: ``Span.kind`` (field 6) as `SpanEncoder.encode` writes it.
_KIND_FIELDS = {k: b"0" + bytes((k,)) for k in (KIND_INTERNAL, KIND_CLIENT)}

#: Attribute names the semantic conventions define, exported as they are.
SEMCONV_KEYS = frozenset(
    (
        "http.request.method",
        "http.request.method_original",
        "http.route",
        "http.response.status_code",
        "http.request.body.size",
        "http.response.body.size",
        "url.path",
        "url.scheme",
        "url.query",
        "url.full",
        "server.address",
        "server.port",
        "client.address",
        "client.port",
        "user_agent.original",
        "network.protocol.version",
        "network.peer.address",
        "network.peer.port",
        "error.type",
        "db.system.name",
        "db.namespace",
        "db.operation.name",
        "db.operation.batch.size",
        "db.collection.name",
        "db.query.text",
        "db.query.summary",
        "db.response.returned_rows",
        "db.response.status_code",
        "code.function.name",
        "code.file.path",
        "code.line.number",
        "thread.id",
        "process.pid",
    )
)
#: Prefixes of semantic-convention namespaces whose names are exported as they are.
SEMCONV_PREFIXES = ("messaging.", "http.request.header.", "http.response.header.", "rpc.")

#: Names of timelines written before the attributes followed the current conventions.
LEGACY_KEYS = {
    "db.system": "db.system.name",
    "db.statement": "db.query.text",
    "db.rows": "db.response.returned_rows",
    "db.batch_size": "db.operation.batch.size",
}

_keys: dict[str, str] = {}


def export_key(key: str) -> str:
    """The attribute name a recorded key is exported under: semantic-convention names as they
    are, stagetrace's own (``stagetrace.*``) as they are, anything else under ``stagetrace.``
    (``http.response.sent_ns`` → ``stagetrace.http.response.sent_ns``), so nothing that is not
    the convention's meaning is sent under a convention's name."""
    out = _keys.get(key)
    if out is None:
        if key in SEMCONV_KEYS or key.startswith(SEMCONV_PREFIXES) or key.startswith("stagetrace."):
            out = key
        elif key in LEGACY_KEYS:
            out = LEGACY_KEYS[key]
        else:
            out = "stagetrace." + key
        if len(_keys) < 4096:
            _keys[key] = out
    return out


def span_name(tl: Timeline, known: frozenset[str] = KNOWN_METHODS) -> str:
    """The root span's name: ``"{METHOD} {route}"``, the method alone when no route matched
    (the path is high-cardinality and is not a span name), the root stage's name for a job.
    A method the conventions do not know is ``HTTP``, as they say: any client can send any
    token as a method. `known` is the ``http_known_methods`` option."""
    if tl.protocol == "job":
        root = tl.root
        return root.name if root is not None else "job"
    method = tl.method
    if method not in known:
        method = "HTTP"
    return f"{method} {tl.route}" if tl.route else method


def _hex_id(value: str | None, size: int) -> bytes | None:
    if not value:
        return None
    try:
        return int(value, 16).to_bytes(size, "big")
    except (ValueError, OverflowError):
        return None


def _uvarint(value: int) -> bytes | None:
    """The varint of an int64 as an ``int_value`` holds it (a timing: usually 3 or 4 bytes);
    None beyond int64's range, where the encoder writes the number as a string."""
    if value < 0x80:
        if value >= 0:
            return _VARINT1[value]
        return _varint(value & _UINT64_MASK) if value >= _INT64_MIN else None
    if value < 0x4000:
        return bytes((value & 0x7F | 0x80, value >> 7))
    if value < 0x200000:
        return bytes((value & 0x7F | 0x80, (value >> 7) & 0x7F | 0x80, value >> 14))
    if value < 0x10000000:
        return bytes(
            (
                value & 0x7F | 0x80,
                (value >> 7) & 0x7F | 0x80,
                (value >> 14) & 0x7F | 0x80,
                value >> 21,
            )
        )
    return _varint(value) if value < _INT64_LIMIT else None


def _timing_prefixes(key: str) -> tuple[bytes, ...]:
    """Per varint length n: the bytes of span attribute `key` = an int up to its value's varint."""
    raw = utf8(key)
    field = b"\x0a" + _varint(len(raw)) + raw
    out = [b""]
    for n in range(1, 11):
        body_len = 1 + n
        kv_len = len(field) + 1 + 1 + body_len
        out.append(b"\x4a" + _varint(kv_len) + field + b"\x12" + bytes((body_len,)) + b"\x18")
    prefixes = _key_fields[key] = tuple(out)
    return prefixes


def _timing_block(key: str, value: int) -> bytes | None:
    """One span attribute ``key`` = int ``value`` as encoded span-attribute bytes (what
    ``SpanEncoder.span_attributes`` gives; None beyond int64's range): timings are unique per
    span, so the encoder's value cache would only churn on them."""
    prefixes = _key_fields.get(key) or _timing_prefixes(key)
    raw = _uvarint(value)
    return prefixes[len(raw)] + raw if raw is not None else None


_key_fields: dict[str, tuple[bytes, ...]] = {}
#: Attributes the mapping may add to a stage's own: kind, short-circuit, findings, 2 timings.
_MOST_ADDED = 5
_IN_NS = "stagetrace.middleware.in_ns"
_OUT_NS = "stagetrace.middleware.out_ns"
_SELF_NS = "stagetrace.self_time_ns"


def timeline_spans(
    tl: Timeline, encoder: SpanEncoder | None = None, known: frozenset[str] = KNOWN_METHODS
) -> list[Any]:
    """The spans of one timeline, root first, as `_encode.SpanTuple` 12-tuples with
    ``(key, value)`` attribute pairs (the provider path); or, with `encoder`, in the form
    `SpanEncoder.encode` takes fastest (what the OTLP path sends): the common child spans
    already encoded (``bytes``), the others as tuples whose attributes are encoded bytes (the
    encoder's cached blocks plus the per-span timings written directly). HTTP methods not in
    `known` (the ``http_known_methods`` option) are exported as ``_OTHER``."""
    stages = stages_once(tl)
    if not stages:
        return []
    trace = int(tl.trace_id, 16).to_bytes(16, "big")
    root_id = int(tl.span_id, 16)
    remote = _hex_id(tl.parent_span_id, 8)
    sampled = tl.trace_flags & 0xFF
    child_flags = sampled | SPAN_FLAGS_CONTEXT_HAS_IS_REMOTE
    root_flags = child_flags | (
        SPAN_FLAGS_CONTEXT_IS_REMOTE if remote and tl.parent_is_remote else 0
    )
    state = tl.tracestate or None
    wall0 = tl.start_unix_nano
    n = len(stages)
    ids = [root_id.to_bytes(8, "big")]
    # stage_span_id(root_id, i) for each stage, inlined
    ids += [((root_id ^ m) or 1).to_bytes(8, "big") for m in span_id_masks(n)[1:n]]
    marks: dict[int, str] = {}
    for f in tl.findings:
        for i in f.stages:
            seen = marks.get(i)
            if seen is None:
                marks[i] = f.kind
            elif f.kind not in seen.split(","):
                marks[i] = f"{seen},{f.kind}"
    encode = encoder.span_attributes if encoder is not None else None
    timing = _timing_block
    client = _CLIENT_KINDS
    out: list[Any] = []
    append = out.append
    blocks = _blocks if encoder is not None and encoder is _blocks_owner[0] else None
    if encoder is not None and blocks is None:
        _blocks.clear()
        _blocks_owner[0] = encoder
        blocks = _blocks
    if encoder is not None:
        # Child spans on the common path are written here as encoded bytes, which the encoder
        # takes as they are (`SpanEncoder.span_constants` says how): no tuple to build and
        # unpack, no checks of ids that are already bytes of the right length.
        state_field, child_tail, names = encoder.span_constants(state, _UNSET, child_flags)
        name_field = encoder.name_field
        kind_client = _KIND_FIELDS[KIND_CLIENT]
        kind_internal = _KIND_FIELDS[KIND_INTERNAL]
        head = b"\x0a\x10" + trace + b"\x12\x08"
    uv = _uvarint
    p_in = _key_fields.get(_IN_NS) or _timing_prefixes(_IN_NS)
    p_out = _key_fields.get(_OUT_NS) or _timing_prefixes(_OUT_NS)
    p_self = _key_fields.get(_SELF_NS) or _timing_prefixes(_SELF_NS)
    # the encoder's span attribute count limit (`SpanEncoder.attribute_count_limit`): stages
    # with fewer attributes than that by `_MOST_ADDED` (kind, short-circuit, findings, two
    # timings) take the common path, others the one that counts and cuts
    most = None
    if encoder is not None and encoder.attribute_count_limit is not None:
        most = encoder.attribute_count_limit - _MOST_ADDED
    for i, p, kind_name, name, start_ns, duration, self_ns, sattrs, err, phases, short in stages:
        if (
            blocks is not None
            and i
            and err is None
            and kind_name != "http.client"
            and (most is None or len(sattrs) <= most)
        ):
            # The common case on the OTLP path: the span's attributes other than its timings
            # repeat from request to request (same kind, same query text ...): encode them
            # once, and write the timings directly.
            mark = marks.get(i) if marks else None
            ck: tuple[Any, ...] | None
            try:
                ck = (
                    (kind_name, short, mark, *sattrs.items())
                    if sattrs
                    else (kind_name, short, mark)
                )
                block = blocks.get(ck)
            except TypeError:  # an unhashable value (a list): no cache
                ck, block = None, None
            if block is _TYPED:
                # 1, True and 1.0 are equal keys: where a number is among the values, the
                # entry under the plain key only says so, and the block is kept under a key
                # with the values' types as well.
                ck = (ck, *map(type, sattrs.values()))
                block = blocks.get(ck)
            if block is None:
                attrs = _stage_attrs(sattrs, kind_name, short, mark)
                block = encode(attrs)  # type: ignore[misc]
                if ck is not None:
                    if len(blocks) >= BLOCK_CACHE_LIMIT:
                        blocks.clear()
                    _keep_block(blocks, ck, sattrs, block)
            if phases is not None:
                # A middleware's own time is its in and out phases: they say it in more detail.
                v = phases.get("in", 0)
                raw = uv(v)
                block += p_in[len(raw)] + raw if raw is not None else encode(((_IN_NS, v),))  # type: ignore[misc]
                v = phases.get("out", 0)
                raw = uv(v)
                block += p_out[len(raw)] + raw if raw is not None else encode(((_OUT_NS, v),))  # type: ignore[misc]
            elif self_ns != duration:  # else a stage without children: its duration
                raw = uv(self_ns)
                block += (
                    p_self[len(raw)] + raw if raw is not None else encode(((_SELF_NS, self_ns),))  # type: ignore[misc]
                )
            start = wall0 + start_ns
            end = start + duration
            body = b"".join(
                (
                    head,
                    ids[i],
                    state_field,
                    b"\x22\x08",
                    ids[p if p is not None else 0],
                    names.get(name) or name_field(name),
                    kind_client if kind_name in client else kind_internal,
                    _pack_times(0x39, start, 0x41, end)
                    if start and end
                    else times_field(start, end),
                    block,
                    child_tail,
                )
            )
            append(b"\x12" + _varint(len(body)) + body)
            continue
        times: tuple[tuple[str, int], ...] = ()
        if phases is not None:
            times = ((_IN_NS, phases.get("in", 0)), (_OUT_NS, phases.get("out", 0)))
        elif self_ns != duration:
            times = ((_SELF_NS, self_ns),)
        attrs = _stage_attrs(sattrs, kind_name, short, marks.get(i))
        events: list[tuple[int, str, Any]] | None = None
        status = _UNSET
        start = wall0 + start_ns
        end = start + duration
        if err is not None:
            status = (STATUS_ERROR, err.message)
            attrs.append(("error.type", err.type))
            events = [
                (
                    end,
                    "exception",
                    (("exception.type", err.type), ("exception.message", err.message)),
                )
            ]
        if i == 0:
            kind, name, status, events = _root(
                tl, name, sattrs, err, attrs, status, events, end, known
            )
            parent = remote
            flags = root_flags
        else:
            kind = KIND_CLIENT if kind_name in client else KIND_INTERNAL
            parent = ids[p if p is not None else 0]
            flags = child_flags
            if kind_name == "http.client":
                if err is None:
                    answer = sattrs.get("http.response.status_code")
                    if type(answer) is int and answer >= 400:
                        status = (STATUS_ERROR, "")
                        attrs.append(("error.type", str(answer)))
                _client_url(attrs, sattrs)
                method = sattrs.get("http.request.method")
                if method is not None:
                    # "{method}": the conventions' name without a low-cardinality target (the
                    # stage's "METHOD host" is no target, a host-less URL's "METHOD path" one
                    # they forbid); the host is server.address, the URL url.full.
                    name = method if method in known else "HTTP"
                    if method not in known:
                        _other_method(attrs, method)
        if encode is not None:
            limit = encoder.attribute_count_limit  # type: ignore[union-attr]
            if limit is not None and len(attrs) + len(times) > limit:
                # beyond the limit: discarded, and counted (Span.dropped_attributes_count)
                every = [*attrs, *times]
                block = encode(every[:limit]) + dropped_attributes_field(len(every) - limit)
            else:
                block = encode(attrs)
                for k, v in times:
                    t = timing(k, v) if type(v) is int else None
                    block += t if t is not None else encode(((k, v),))
            span_attrs: Any = block
        else:
            span_attrs = attrs + list(times)
        append(
            (
                trace,
                ids[i],
                parent,
                name,
                kind,
                start,
                end,
                span_attrs,
                events,
                status,
                state,
                flags,
            )
        )
    return out


def _root(
    tl: Timeline,
    name: str,
    sattrs: Mapping[str, Any],
    err: Any,
    attrs: list[tuple[str, Any]],
    status: tuple[int, str],
    events: list[tuple[int, str, Any]] | None,
    end: int,
    known: frozenset[str],
) -> tuple[int, str, tuple[int, str], list[tuple[int, str, Any]] | None]:
    """Kind, name, status and events of the root span; its extra attributes go into `attrs`."""
    if tl.protocol == "job":
        kind = KIND_CONSUMER
    else:
        kind = KIND_SERVER
        name = span_name(tl, known)
        if tl.path is not None:
            attrs.append(("url.path", tl.path))
        if tl.route:
            attrs.append(("http.route", tl.route))
        method = sattrs.get("http.request.method")
        if method is not None and method not in known:
            _other_method(attrs, method)
        code = tl.status
        if code is not None and tl.protocol == "http":
            if "http.response.status_code" not in sattrs:
                attrs.append(("http.response.status_code", code))
            if code >= 500 and err is None:
                status = (STATUS_ERROR, "")
                attrs.append(("error.type", str(code)))
        elif "http.response.status_code" in sattrs:
            # A websocket's close code, where the ASGI gateway used to record it (timelines
            # read from older files): no HTTP status; stagetrace.websocket.close_code has it.
            attrs[:] = [kv for kv in attrs if kv[0] != "http.response.status_code"]
    if tl.parent_span_id and not tl.parent_is_remote:
        # An OpenTelemetry span of this process was current when the request began (FastAPI's
        # own telemetry, OpenTelemetry's ASGI/WSGI middleware outside ours): that span is the
        # entry, this one its INTERNAL child — as OpenTelemetry's instrumentations do.
        kind = KIND_INTERNAL
    if tl.request_id != tl.trace_id:
        attrs.append(("stagetrace.request_id", tl.request_id))
    if tl.dropped_stages:
        attrs.append(("stagetrace.dropped_stages", tl.dropped_stages))
    if tl.findings:
        events = (events or []) + [
            (
                end,
                "stagetrace.finding",
                (
                    ("stagetrace.finding.kind", f.kind),
                    ("stagetrace.finding.message", f.message),
                    ("stagetrace.finding.stages", list(f.stages)),
                ),
            )
            for f in tl.findings
        ]
    return kind, name, status, events


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _client_url(attrs: list[tuple[str, Any]], sattrs: Mapping[str, Any]) -> None:
    """What the HTTP conventions make Required on a client span beyond what the stage
    recorded: ``server.port`` (the scheme's default when the URL named none) and ``url.full``,
    built from the recorded parts — so with the query as it was redacted, and never the
    URL's ``user:password@``, which is not recorded."""
    if "url.full" in sattrs:
        return
    scheme, host = sattrs.get("url.scheme"), sattrs.get("server.address")
    if not isinstance(scheme, str) or not isinstance(host, str) or not host:
        return
    port = sattrs.get("server.port")
    default = _DEFAULT_PORTS.get(scheme)
    if port is None and default is not None:
        attrs.append(("server.port", default))
    netloc = f"[{host}]" if ":" in host else host
    if port is not None and port != default:
        netloc += f":{port}"
    path = sattrs.get("url.path")
    query = sattrs.get("url.query")
    full = f"{scheme}://{netloc}{path if isinstance(path, str) else ''}"
    attrs.append(("url.full", f"{full}?{query}" if isinstance(query, str) and query else full))


def _other_method(attrs: list[tuple[str, Any]], method: Any) -> None:
    """A method the semantic conventions do not know, as they say to export it:
    ``http.request.method=_OTHER`` and the method as sent in ``http.request.method_original``.
    Checked once per request (and per outbound call), never per stage."""
    for i, (key, _) in enumerate(attrs):
        if key == "http.request.method":
            attrs[i] = (key, "_OTHER")
            break
    attrs.append(("http.request.method_original", method))


def _stage_attrs(
    sattrs: Mapping[str, Any], kind_name: str, short: bool | None, findings: str | None
) -> list[tuple[str, Any]]:
    """A stage's attributes other than its timings, under their exported names."""
    known = _keys.get
    attrs = [(known(k) or export_key(k), v) for k, v in sattrs.items()]
    attrs.append(("stagetrace.kind", kind_name))
    if short is not None:
        attrs.append(("stagetrace.middleware.short_circuit", bool(short)))
    if findings is not None:
        attrs.append(("stagetrace.findings", findings))
    return attrs


#: What the block cache holds under a key whose values include numbers: look again under the
#: key with the values' types added (1, True and 1.0 are equal keys).
_TYPED: Any = object()
_PLAIN = frozenset((str, int, bool, type(None)))
_NUMBERS = frozenset((int, bool))


def _keep_block(
    blocks: dict[tuple[Any, ...], Any], ck: tuple[Any, ...], sattrs: Any, block: bytes
) -> None:
    """Keep a block just encoded under `ck` (see `timeline_spans`), if it may be reused: only
    attributes whose values are all str, int, bool or None are cached (a float: 0.0 == -0.0
    and nan != nan; an array or another type may equal a differently encoded value); with an
    int or bool among them, the plain key gets the ``_TYPED`` marker and the block a key with
    the values' types."""
    if not sattrs:
        blocks[ck] = block
        return
    types = set(map(type, sattrs.values()))
    if not types <= _PLAIN:
        return
    if types & _NUMBERS and type(ck[0]) is not tuple:  # not a typed key already
        blocks[ck] = _TYPED
        typed = (ck, *map(type, sattrs.values()))
        blocks[typed] = block
    else:
        blocks[ck] = block


#: Encoded attribute blocks of recent stages, by kind, short-circuit, findings and attributes;
#: valid for one encoder (the bytes do not depend on its state, but keep it simple). At most
#: `BLOCK_CACHE_LIMIT` of them (then it starts over): a few MB at worst, with long SQL texts.
BLOCK_CACHE_LIMIT = 1024
_blocks: dict[tuple[Any, ...], Any] = {}
_blocks_owner: list[Any] = [None]


def spans_of(
    timelines: Iterable[Timeline],
    encoder: SpanEncoder | None = None,
    known: frozenset[str] = KNOWN_METHODS,
) -> list[Any]:
    """The spans of several timelines, concatenated."""
    out: list[Any] = []
    for tl in timelines:
        out.extend(timeline_spans(tl, encoder, known))
    return out


def parse_resource_attributes(raw: str) -> dict[str, str]:
    """``OTEL_RESOURCE_ATTRIBUTES`` (``k1=v1,k2=v2``, values percent-encoded) as a dict; items
    without ``=`` are ignored, as the SDK does."""
    from urllib.parse import unquote

    out: dict[str, str] = {}
    for item in raw.split(","):
        key, sep, value = item.partition("=")
        if sep and key.strip():
            out[key.strip()] = unquote(value.strip())
    return out


def resource_attributes(service: str, environ: Mapping[str, str]) -> dict[str, Any]:
    """The resource every exported span carries: with the OpenTelemetry SDK installed, what its
    ``Resource.create()`` detects (``OTEL_RESOURCE_ATTRIBUTES``, the configured detectors,
    ``telemetry.sdk.*``); without it ``OTEL_RESOURCE_ATTRIBUTES`` and stagetrace's own
    ``telemetry.sdk.*``. ``service.name`` is stagetrace's ``service`` option (which defaults to
    ``OTEL_SERVICE_NAME``)."""
    from ._about import version

    attrs: dict[str, Any]
    try:
        from opentelemetry.sdk.resources import Resource
    except ImportError:
        attrs = {
            "telemetry.sdk.language": "python",
            "telemetry.sdk.name": "stagetrace",
            "telemetry.sdk.version": version(),
        }
        attrs.update(parse_resource_attributes(environ.get("OTEL_RESOURCE_ATTRIBUTES", "")))
    else:
        attrs = dict(Resource.create({}).attributes)
    if service and (service != "unknown_service" or "service.name" not in attrs):
        attrs["service.name"] = service
    return attrs
