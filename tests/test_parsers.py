"""Every parser of request data is total: for any input it returns a value or None, never raises,
and its work is bounded by what it looks at (long inputs are cut before parsing). Property-based
(hypothesis), plus the cases that broke requests before."""

from __future__ import annotations

import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stagetrace._http import asgi, headers, wsgi
from stagetrace._options import Settings

CFG = Settings()
anything = st.one_of(st.none(), st.text(max_size=600), st.binary(max_size=600))
#: Long inputs: a short random piece repeated (hypothesis does not draw 10,000-character texts).
huge = st.one_of(
    st.text(min_size=1, max_size=40).map(lambda s: s * (12_000 // len(s) + 1)),
    st.binary(min_size=1, max_size=40).map(lambda b: b * (12_000 // len(b) + 1)),
)
fast = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def bounded(fn, value, *args):
    """Call the parser; it must return within a generous bound even on huge input."""
    t0 = time.perf_counter()
    out = fn(value, *args)
    assert time.perf_counter() - t0 < 0.5
    return out


@fast
@given(st.one_of(anything, huge))
def test_traceparent_is_total(value):
    out = bounded(headers.traceparent, value)
    if out is not None:
        trace_id, span_id, flags = out
        assert 0 < trace_id < 2**128 and 0 < span_id < 2**64 and 0 <= flags < 256


@fast
@given(st.one_of(anything, huge))
def test_tracestate_is_total(value):
    out = bounded(headers.tracestate, value)
    assert out is None or (isinstance(out, str) and len(out) <= 512 and out.count(",") < 32)


@fast
@given(
    st.lists(
        st.tuples(st.from_regex(r"[a-z][a-z0-9_]{0,20}", fullmatch=True), st.integers(1, 200)),
        min_size=1,
        max_size=32,
        unique_by=lambda kv: kv[0],
    )
)
def test_a_long_tracestate_loses_whole_members_never_part_of_a_value(members):
    """Over 512 characters, a tracestate keeps a subset of its members, each exactly as sent
    (a value cut short would be passed on downstream as the vendor's own), members over 128
    characters going first, then from the end, as W3C Trace Context says."""
    sent = [f"{k}={'v' * n}" for k, n in members]
    out = headers.tracestate(", ".join(sent))
    kept = out.split(",") if out else []
    assert set(kept) <= set(sent) and len(out or "") <= 512
    if len(",".join(sent)) <= 512:
        assert kept == sent
    else:
        short = [m for m in sent if len(m) <= 128]
        assert kept == short[: len(kept)]
        assert len(kept) == len(short) or len(",".join(short[: len(kept) + 1])) > 512


def test_a_tracestate_cut_at_512_characters_is_not_altered():
    """The trial that found it: a header whose 512th character falls inside a value kept the
    value's first characters, a well-formed but wrong member."""
    sent = ",".join(f"k{i}=" + "x" * 30 for i in range(16)) + ",z=" + "y" * 30
    out = headers.tracestate(sent)
    assert out is not None and "z=" not in out
    assert out == ",".join(f"k{i}=" + "x" * 30 for i in range(len(out.split(","))))


@pytest.mark.parametrize("value", [":²", "shop:²", "[::1]:²", "shop:٣٠٠٠"])
def test_a_host_port_of_non_ascii_digits_is_invalid(value):
    """`str.isdigit` is true of superscripts and other scripts' digits that `int` refuses or
    reads as another number: such a port makes the header invalid (it raised ValueError,
    found by the property test above on Python 3.10)."""
    assert headers.host_and_port(value) == (None, None)


@fast
@given(st.one_of(anything, huge))
def test_baggage_is_total(value):
    out = bounded(headers.baggage, value)
    assert out is None or (isinstance(out, dict) and len(out) <= 64)


def test_a_baggage_member_cut_by_the_header_limit_is_dropped_not_kept_cut():
    """A ``baggage`` header longer than the limit keeps the members that fit whole: the one the
    limit cuts is dropped — kept, ``tenant=acme-production`` became ``tenant=acme-produ`` in
    the request's OpenTelemetry baggage, which ``inject()`` passes on to every service
    downstream (W3C: "MUST NOT propagate any partial list-members")."""
    pad = "pad=" + "x" * (headers.MAX_HEADER - 20)
    assert headers.baggage(f"{pad},tenant=acme-production") == {"pad": pad[4:]}
    assert headers.baggage(f"{pad},tier=gold") == {"pad": pad[4:], "tier": "gold"}  # fits
    assert headers.baggage("tenant=" + "y" * headers.MAX_HEADER) is None


@fast
@given(st.one_of(anything, huge), st.integers(min_value=0, max_value=2**63))
def test_queue_time_is_total(value, now):
    out = bounded(headers.queue_time_ns, value, now)
    assert out is None or 0 <= out <= 3600 * 10**9


@pytest.mark.parametrize(
    "value", ["t=1e400", "inf", "-inf", "t=1.8e308", "9" * 400, "nan", "t=-5", "1_000", "t=", ""]
)
def test_queue_time_refuses_what_broke_requests(value):
    """Exponents, infinities, signs and digit separators are not read (1e400 overflowed)."""
    assert headers.queue_time_ns(value, time.time_ns()) is None


def test_queue_time_reads_each_unit():
    now = 1_700_000_000_000_000_000
    assert headers.queue_time_ns("t=1699999999.5", now) == 500_000_000
    assert headers.queue_time_ns("1699999999900", now) == 100_000_000  # ms
    assert headers.queue_time_ns("1699999999990000", now) == 10_000_000  # µs
    assert headers.queue_time_ns(b"t=1699999999999000000", now) == 1_000_000  # ns


@fast
@given(st.one_of(anything, huge))
def test_request_id_is_total(value):
    out = bounded(headers.request_id, value)
    assert out is None or (0 < len(out) <= 200 and out.isprintable() and " " not in out)


@fast
@given(st.one_of(anything, huge))
def test_content_length_is_total(value):
    out = bounded(headers.content_length, value)
    assert out is None or 0 <= out < 10**19


@fast
@given(st.one_of(anything, huge), st.lists(st.text(max_size=5), max_size=3))
def test_query_redaction_is_total_and_keeps_no_value(value, keep):
    out = bounded(headers.redact_query, value, tuple(keep))
    if out is not None:
        assert len(out) <= 4 * (headers.MAX_URL_PART + 1)  # control characters escaped
        for part in out.split("&"):
            name, _, val = part.partition("=")
            assert val in ("", "REDACTED") or name in keep or "%" in name or "\\x" in part


def test_a_long_query_is_cut_between_pieces():
    """Redacted values grow (``=0`` becomes ``=REDACTED``): a query past the length kept is
    cut between two pieces, never inside a ``REDACTED`` (hypothesis found ``=0&`` repeated
    4,000 times)."""
    out = headers.redact_query("=0&" * 4000)
    assert out is not None and len(out) <= headers.MAX_URL_PART + 2
    assert out.endswith("&…") and set(out[:-2].split("&")) == {"=REDACTED"}


def test_query_values_are_redacted_unless_allowed():
    assert headers.redact_query("q=shoes&token=abc&page=2&flag", ("page",)) == (
        "q=REDACTED&token=REDACTED&page=2&flag"
    )


def test_a_value_given_without_a_name_is_redacted():
    """A bare piece is kept only when it looks like a flag's name: a magic link's token, a
    signed value or a cache buster given without ``name=`` is a value."""
    jwt = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig"
    assert headers.redact_query(f"{jwt}") == "REDACTED"
    assert headers.redact_query("a8f3c2d1e9&print-view&debug&1699999999") == (
        "REDACTED&print-view&debug&REDACTED"
    )
    assert headers.redact_query("v2", ("v2",)) == "v2"
    # a token in URL-safe base64 can be letters only: only lower-case names pass for flags
    assert headers.redact_query("QkZrTmxWbGpYbWdWcg&noCache&amp") == "REDACTED&REDACTED&amp"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://alice:s3cret@collector:4318/v1/traces?api_key=k&debug", "https://REDACTED@collector:4318/v1/traces?api_key=REDACTED&debug"),
        ("http://a:p/w@h:1/x#frag", "http://REDACTED@h:1/x#REDACTED"),
        ("alice:pw@collector:4317", "REDACTED@collector:4317"),
        ("http://collector:4318", "http://collector:4318"),
        # a password pasted unencoded, with "#" or "?" in it
        ("http://admin:hunter2#@collector:4318", "http://REDACTED@collector:4318"),
        ("http://admin:s3?cr#3t@collector:4318/v1", "http://REDACTED@collector:4318/v1"),
    ],
)  # fmt: skip
def test_a_url_is_shown_without_credentials_or_query_values(url: str, shown: str) -> None:
    """What logs and errors show of a configured URL (an OTLP endpoint), valid or not."""
    assert headers.redact_url(url) == shown


@fast
@given(st.one_of(anything, huge))
def test_host_is_total(value):
    host, port = bounded(headers.host_and_port, value)
    assert host is None or (" " not in host and host == host.lower())
    assert port is None or 0 <= port <= 99999


@fast
@given(st.text(max_size=3000))
def test_safe_text_escapes_every_control_character(value):
    out = headers.safe(value)
    assert not any(ord(c) < 32 or 127 <= ord(c) < 160 for c in out)
    assert len(out) <= 4 * (headers.MAX_URL_PART + 1)
    out.encode("utf-8")  # lone surrogates never reach exports


header_pairs = st.lists(
    st.tuples(
        st.one_of(
            st.binary(max_size=30), st.sampled_from([b"traceparent", b"Host", b"x-request-id"])
        ),
        st.binary(max_size=200),
    ),
    max_size=20,
)


@fast
@given(
    st.fixed_dictionaries(
        {
            "type": st.sampled_from(["http", "websocket"]),
            "path": st.one_of(st.text(max_size=300), st.none(), st.integers()),
            "root_path": st.one_of(st.text(max_size=30), st.none()),
            "query_string": st.one_of(st.binary(max_size=300), st.none()),
            "headers": st.one_of(header_pairs, st.none(), st.just([(1, 2)]), st.just("x")),
            "client": st.one_of(st.none(), st.tuples(st.text(max_size=40), st.integers())),
            "method": st.one_of(st.text(max_size=10), st.none(), st.integers()),
            "http_version": st.one_of(st.text(max_size=5), st.none()),
        }
    )
)
def test_asgi_scope_parser_is_total(scope):
    req = asgi.request(scope, CFG)
    assert isinstance(req.path, str) and req.path
    assert all(isinstance(k, str) for k in req.headers)


@fast
@given(
    st.dictionaries(
        st.sampled_from(
            [
                "REQUEST_METHOD",
                "PATH_INFO",
                "SCRIPT_NAME",
                "QUERY_STRING",
                "HTTP_HOST",
                "HTTP_TRACEPARENT",
                "CONTENT_LENGTH",
                "REMOTE_ADDR",
                "SERVER_PROTOCOL",
                "wsgi.url_scheme",
                "HTTP_X_REQUEST_ID",
            ]
        ),
        st.one_of(st.text(max_size=300), st.integers(), st.none(), st.binary(max_size=10)),
    )
)
def test_wsgi_environ_parser_is_total(environ):
    req = wsgi.request(environ, CFG)
    assert isinstance(req.path, str)


@fast
@given(st.one_of(anything, huge))
def test_the_whole_gateway_begin_survives_any_header(value):
    """Every header value the gateway reads, all at once, through begin and end."""
    import stagetrace
    from stagetrace import _recorder
    from stagetrace._http.gateway import Request, begin_http, end_http

    wanted = {
        name: value
        for name in (
            "traceparent",
            "tracestate",
            "baggage",
            "x-request-start",
            "x-queue-start",
            "content-length",
            "host",
            "user-agent",
            "x-request-id",
        )
    }
    cfg = stagetrace.settings()
    root = begin_http(cfg, "test", Request("GET", "/", value, "http", wanted), framework="test")
    assert root is not None
    end_http(root, 200)
    assert _recorder.current() is None
