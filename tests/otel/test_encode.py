"""The hand-written OTLP encoder against the official one (``encode_spans`` + ``SerializeToString``).

Property tests build random spans, encode them with :class:`SpanEncoder` and with the SDK's
``ReadableSpan`` through the official encoder, and require the same bytes. Where the encoder
differs on purpose (lone surrogates, integers outside int64) the oracle is fed what the encoder
documents it writes, computed here independently.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
)

from stagetrace.otel._encode import SpanEncoder, utf8

from .oracle import official_bytes

INT64 = (-(2**63), 2**63 - 1)


def reference_sanitize(text: str) -> str:
    """What the encoder promises for strings, written code point by code point."""
    out = []
    i = 0
    while i < len(text):
        c = ord(text[i])
        if 0xD800 <= c <= 0xDBFF and i + 1 < len(text) and 0xDC00 <= ord(text[i + 1]) <= 0xDFFF:
            out.append(chr(0x10000 + ((c - 0xD800) << 10) + (ord(text[i + 1]) - 0xDC00)))
            i += 2
            continue
        out.append("\ufffd" if 0xD800 <= c <= 0xDFFF else text[i])
        i += 1
    return "".join(out)


def as_documented(value: Any) -> Any:
    """``value`` as the encoder documents writing it, in a form the official encoder takes."""
    if isinstance(value, str):
        return reference_sanitize(value)
    if isinstance(value, bool) or value is None or isinstance(value, (float, bytes)):
        return value
    if isinstance(value, int):
        return value if INT64[0] <= value <= INT64[1] else str(value)
    if isinstance(value, Mapping):
        return {reference_sanitize(k): as_documented(v) for k, v in value.items()}
    return [as_documented(v) for v in value]


def keys_survive(mapping: Mapping[str, Any]) -> bool:
    """Distinct keys stay distinct after sanitizing (else a dict oracle would merge them)."""
    return len({reference_sanitize(k) for k in mapping}) == len(mapping)


# -- strategies --------------------------------------------------------------------------------

tricky_chars = st.sampled_from(["\ud800", "\udcff", "\ud83d", "\ude00", "é", "😀", "\x00", "ß"])
texts = st.text(st.characters(exclude_categories=[]) | tricky_chars, max_size=12)
scalars = (
    texts
    | st.booleans()
    | st.integers(*INT64)
    | st.integers()  # past int64 too
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.binary(max_size=12)
    | st.none()
    | st.sampled_from([0, 1, -1, True, False, 0.0, -0.0, 1.0, "", "1", 2**63, -(2**63) - 1])
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.lists(inner, max_size=3).map(tuple)
        | st.dictionaries(texts, inner, max_size=3).filter(keys_survive)
    ),
    max_leaves=8,
)
attribute_dicts = st.dictionaries(texts, values, max_size=8).filter(keys_survive)
trace_states = st.none() | st.lists(
    st.tuples(
        st.from_regex(r"[a-z][a-z0-9_\-]{0,5}", fullmatch=True),
        st.from_regex(r"[a-zA-Z0-9]{1,6}", fullmatch=True),
    ),
    min_size=1,
    max_size=3,
    unique_by=lambda kv: kv[0],
).map(lambda pairs: ",".join(f"{k}={v}" for k, v in pairs))
times = st.integers(0, 2**64 - 1)
statuses = st.sampled_from([(0, ""), (1, ""), (2, "")]) | st.tuples(st.just(2), texts)


@st.composite
def span_batches(draw: st.DrawFn) -> list[tuple[Any, ...]]:
    trace_ids = draw(st.lists(st.integers(1, 2**128 - 1), min_size=1, max_size=3))
    spans = []
    for _ in range(draw(st.integers(1, 8))):
        tid = draw(st.sampled_from(trace_ids))
        sid = draw(st.integers(1, 2**64 - 1))
        parent = draw(st.none() | st.integers(1, 2**64 - 1))
        remote = parent is not None and draw(st.booleans())
        attrs = draw(attribute_dicts)
        events = draw(st.lists(st.tuples(times, texts, attribute_dicts | st.none()), max_size=3))
        as_bytes = draw(st.booleans())
        spans.append(
            (
                tid.to_bytes(16, "big") if as_bytes else tid,
                sid.to_bytes(8, "big") if as_bytes else sid,
                parent.to_bytes(8, "big") if as_bytes and parent else parent,
                draw(texts),
                draw(st.integers(1, 5)),
                draw(times),
                draw(times),
                tuple(attrs.items()) if draw(st.booleans()) else attrs,
                events,
                draw(statuses),
                draw(trace_states),
                0x300 if remote else 0x100,
            )
        )
    return spans


def documented_spans(spans: Sequence[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """The spans with every string and int as the encoder documents writing them."""
    out = []
    for s in spans:
        attrs = dict(s[7]) if s[7] else {}
        events = [
            (t, reference_sanitize(n), as_documented(a) if a else a) for t, n, a in s[8] or ()
        ]
        status = (s[9][0], reference_sanitize(s[9][1])) if s[9] else s[9]
        out.append(
            (
                *s[:3],
                reference_sanitize(s[3]),
                *s[4:7],
                as_documented(attrs),
                events,
                status,
                *s[10:],
            )
        )
    return out


def assert_same(ours: bytes, theirs: bytes) -> None:
    if ours != theirs:  # show a readable difference before failing
        assert ExportTraceServiceRequest.FromString(ours) == ExportTraceServiceRequest.FromString(
            theirs
        )
    assert ours == theirs


# -- properties --------------------------------------------------------------------------------

resource_values = texts | st.booleans() | st.integers(*INT64)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    spans=span_batches(),
    resource=st.dictionaries(texts.filter(bool), resource_values, max_size=4).filter(keys_survive),
    scope_name=texts,
    scope_version=st.none() | texts,
)
def test_bytes_equal_the_official_encoder(
    spans: list[tuple[Any, ...]],
    resource: dict[str, Any],
    scope_name: str,
    scope_version: str | None,
) -> None:
    """Random spans (unicode with surrogates, big ints, floats incl. NaN, bools, nested arrays and
    maps, empty strings, events, status, parents, several traces) encode to the official bytes."""
    encoder = SpanEncoder(resource, scope_name, scope_version)
    ours = encoder.encode(spans)
    theirs = official_bytes(
        documented_spans(spans),
        as_documented(resource),
        reference_sanitize(scope_name),
        None if scope_version is None else reference_sanitize(scope_version),
    )
    assert_same(ours, theirs)
    assert encoder.dropped == 0


#: One encoder across examples with a tiny cache, so hits, misses and clears all happen.
SHARED = SpanEncoder({"service.name": "shop"}, "stagetrace", "1.0", cache_limit=3)
pool = st.sampled_from(["k", "db.query.text", "n", ""])
pool_values = st.sampled_from(
    [0, 1, -1, True, False, 0.0, -0.0, 1.0, math.nan, math.inf, "1", "", "SELECT 1", 2**64, b"1"]
)


@settings(max_examples=300, deadline=None)
@given(
    batches=st.lists(
        st.lists(st.dictionaries(pool, pool_values, max_size=4), min_size=1, max_size=6),
        min_size=1,
        max_size=4,
    )
)
def test_attribute_cache_never_confuses_equal_values_of_other_types(
    batches: list[list[dict[str, Any]]],
) -> None:
    """``(k, 1) == (k, True) == (k, 1.0)`` and ``0.0 == -0.0`` in Python: through a shared,
    often-cleared cache every span still carries its own value's type and bits."""
    for batch in batches:
        spans = [
            (7, i + 1, None, "s", 1, 10, 20, attrs, None, (0, ""), None, 0x100)
            for i, attrs in enumerate(batch)
        ]
        theirs = official_bytes(
            [(*s[:7], as_documented(s[7]), *s[8:]) for s in spans], {"service.name": "shop"},
            "stagetrace", "1.0",
        )  # fmt: skip
        assert_same(SHARED.encode(spans), theirs)


# -- chosen behaviours -------------------------------------------------------------------------


def decode(data: bytes) -> Any:
    return ExportTraceServiceRequest.FromString(data)


def one_span(encoder: SpanEncoder, **overrides: Any) -> Any:
    fields = {
        "trace_id": 1,
        "span_id": 2,
        "parent_span_id": None,
        "name": "s",
        "kind": 1,
        "start": 10,
        "end": 20,
        "attributes": None,
        "events": None,
        "status": None,
        "trace_state": None,
        "flags": 0,
    }
    fields.update(overrides)
    request = decode(encoder.encode([tuple(fields.values())]))
    return request.resource_spans[0].scope_spans[0].spans[0]


def attr_values(span: Any) -> dict[str, Any]:
    return {kv.key: kv.value for kv in span.attributes}


def test_lone_surrogates_become_replacement_characters_everywhere() -> None:
    """Lone surrogates in names, keys, values and status become U+FFFD; a split pair is joined."""
    span = one_span(
        SpanEncoder(),
        name="a\udcffb",
        attributes={"k\ud800": "x\ud83d\ude00y\ude00"},
        status=(2, "\udc80"),
    )
    assert span.name == "a\ufffdb"
    assert attr_values(span)["k\ufffd"].string_value == "x😀y\ufffd"
    assert span.status.message == "\ufffd"
    assert utf8("plain") == b"plain"


def test_integers_outside_int64_are_written_as_decimal_strings() -> None:
    """int64 bounds stay ints; one past either bound is kept as its decimal string."""
    span = one_span(
        SpanEncoder(),
        attributes={"lo": -(2**63), "hi": 2**63 - 1, "over": 2**63, "under": -(2**63) - 1},
    )
    got = attr_values(span)
    assert got["lo"].int_value == -(2**63)
    assert got["hi"].int_value == 2**63 - 1
    assert got["over"].string_value == str(2**63)
    assert got["under"].string_value == str(-(2**63) - 1)


def test_equal_values_of_different_types_keep_their_type_through_the_cache() -> None:
    """1, True and 1.0 under one key, one after another through one encoder, stay distinct."""
    encoder = SpanEncoder()
    kinds = [
        attr_values(one_span(encoder, attributes={"k": v}))["k"].WhichOneof("value")
        for v in (1, True, 1.0, 1, True)
    ]
    assert kinds == ["int_value", "bool_value", "double_value", "int_value", "bool_value"]
    negative_zero = attr_values(one_span(encoder, attributes={"z": -0.0}))["z"].double_value
    assert math.copysign(1.0, negative_zero) == -1.0


def test_non_finite_doubles_keep_their_bits() -> None:
    """NaN, +inf and -inf are written as IEEE doubles, bit for bit."""
    nan = struct.unpack("<d", b"\x01\x00\x00\x00\x00\x00\xf8\x7f")[0]  # a NaN with a payload
    got = attr_values(one_span(SpanEncoder(), attributes={"n": nan, "i": math.inf, "m": -math.inf}))
    assert struct.pack("<d", got["n"].double_value) == struct.pack("<d", nan)
    assert got["i"].double_value == math.inf
    assert got["m"].double_value == -math.inf


def test_kind_zero_and_empty_values_are_left_out_as_proto3_defaults() -> None:
    """Kind 0 is SPAN_KIND_UNSPECIFIED (no field); empty name, state and times are absent; an
    empty string, array and map value are still present as set values."""
    encoder = SpanEncoder()
    span = one_span(
        encoder, kind=0, name="", start=0, end=0, attributes={"e": "", "a": [], "m": {}, "n": None}
    )
    assert span.kind == 0 and span.name == "" and span.start_time_unix_nano == 0
    got = attr_values(span)
    assert got["e"].WhichOneof("value") == "string_value"
    assert got["a"].WhichOneof("value") == "array_value" and not got["a"].array_value.values
    assert got["m"].WhichOneof("value") == "kvlist_value"
    assert got["n"].WhichOneof("value") is None
    assert not span.HasField("status")
    assert one_span(encoder, kind=7).kind == 7  # future kinds pass through


def test_unsupported_values_drop_only_their_attribute_and_are_counted() -> None:
    """An object (alone or inside an array) drops that attribute; the rest of the span stays."""
    encoder = SpanEncoder()
    span = one_span(encoder, attributes={"a": object(), "b": [1, object()], "c": "kept"})
    assert list(attr_values(span)) == ["c"]
    assert encoder.dropped == 2


def test_nested_arrays_and_maps() -> None:
    """Arrays nest and mix types; maps become kvlist values with their own nesting."""
    got = attr_values(one_span(SpanEncoder(), attributes={"x": [1, ["a", True], {"m": [2.5]}]}))
    values = got["x"].array_value.values
    assert values[0].int_value == 1
    assert [v.string_value or v.bool_value for v in values[1].array_value.values] == ["a", True]
    inner = values[2].kvlist_value.values[0]
    assert inner.key == "m" and inner.value.array_value.values[0].double_value == 2.5


def test_no_spans_is_an_empty_request() -> None:
    """Nothing to send encodes to no bytes, as the official encoder does."""
    assert SpanEncoder({"service.name": "x"}).encode([]) == b""


@pytest.mark.parametrize(
    ("trace_id", "span_id", "parent"),
    [(b"short", b"\x00" * 8, None), (1, 2**64, None), (1, 2, b"\x01"), ("1", 2, None)],
)
def test_malformed_ids_raise_one_line_value_errors(
    trace_id: Any, span_id: Any, parent: Any
) -> None:
    """Ids of the wrong size or type are a caller bug: a ValueError naming the span."""
    with pytest.raises(ValueError, match="span 'bad'") as info:
        one_span(
            SpanEncoder(), trace_id=trace_id, span_id=span_id, parent_span_id=parent, name="bad"
        )
    assert "\n" not in str(info.value)


def test_scope_attributes_and_schema_urls_match_the_official_encoder() -> None:
    """Scope attributes and schema URLs land where the official encoder puts them."""
    encoder = SpanEncoder(
        {"service.name": "svc"},
        "stagetrace",
        "2.0",
        scope_attributes={"a": 1},
        resource_schema_url="https://opentelemetry.io/schemas/1.30.0",
        scope_schema_url="https://opentelemetry.io/schemas/1.31.0",
    )
    request = decode(encoder.encode([(1, 2, None, "s", 1, 10, 20, None, None, None, None, 0)]))
    rs = request.resource_spans[0]
    assert rs.schema_url.endswith("1.30.0") and rs.scope_spans[0].schema_url.endswith("1.31.0")
    assert rs.scope_spans[0].scope.attributes[0].value.int_value == 1
    assert rs.resource.attributes[0].value.string_value == "svc"


@settings(max_examples=60, deadline=None)
@given(static=attribute_dicts, dynamic=attribute_dicts)
def test_pre_encoded_attribute_blocks_concatenate(
    static: dict[str, Any], dynamic: dict[str, Any]
) -> None:
    """Attributes pre-encoded with ``span_attributes`` (a static block plus a per-span block)
    give the same bytes as the same pairs passed in one go."""
    encoder = SpanEncoder({"service.name": "x"})
    pairs = tuple(static.items()) + tuple(dynamic.items())
    block = encoder.span_attributes(static) + encoder.span_attributes(dynamic)
    span = (1, 2, None, "s", 1, 10, 20, pairs, None, (0, ""), None, 0x100)
    assert encoder.encode([(*span[:7], block, *span[8:])]) == encoder.encode([span])


def test_caches_stay_bounded_and_correct_when_values_never_repeat() -> None:
    """Unique long values under many keys: the caches empty themselves (bounded memory) and every
    span still encodes exactly as the official encoder does."""
    encoder = SpanEncoder({"service.name": "x"}, "s", cache_limit=16, cache_bytes=4096)
    for n in range(5):
        attrs = {f"k{i}": f"{'v' * 200}{n}-{i}" for i in range(40)} | {"n": n, "same": "x"}
        span = (1, n + 1, None, "s", 1, 10, 20, attrs, None, (0, ""), None, 0x100)
        assert_same(
            encoder.encode([span]), official_bytes([span], {"service.name": "x"}, "s", None)
        )
        assert len(encoder._keys) <= 16
        assert encoder._cached_bytes <= 4096
