"""Outbound W3C trace context: httpx (sync and async) and requests calls made inside a
recorded request carry a ``traceparent`` naming their http.client stage (and the request's
``tracestate``), checked on what a real HTTP server on loopback received."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

import stagetrace
from stagetrace import httpclients as _outbound
from tests.otel.conftest import RECEIVED, calls_and_headers, exporting

httpx = pytest.importorskip("httpx")
requests = pytest.importorskip("requests")


@pytest.fixture(autouse=True)
def patched() -> Iterator[None]:
    _outbound.install()
    RECEIVED.clear()
    stagetrace.configure(**exporting())  # the stages the headers name are exported
    yield
    _outbound.uninstall()


def _calls(server: str, **headers: str) -> None:
    httpx.get(f"{server}/a", headers=headers)

    async def run() -> None:
        async with httpx.AsyncClient() as client:
            await client.get(f"{server}/b", headers=headers)

    asyncio.run(run())
    requests.get(f"{server}/c", headers=headers, timeout=5)


def test_each_call_carries_the_traceparent_of_its_stage(server):
    """Inside a recorded job, each call's traceparent is this trace with the span id of that
    call's http.client stage, sampled flag set; no tracestate when the trace has none."""
    with stagetrace.capture() as got, stagetrace.timeline("job"):
        _calls(server)
    stagetrace.flush()
    tl = got[0]
    for stage, headers in calls_and_headers(tl, 3):
        assert headers["traceparent"] == f"00-{tl.trace_id}-{tl.stage_span_id(stage.id)}-01"
        assert "tracestate" not in headers


def test_a_django_request_passes_its_trace_and_tracestate_on(server):
    """A Django request that came with traceparent and tracestate: its view's httpx and
    requests calls carry the caller's trace id, their own stage's span id, and the
    tracestate."""
    pytest.importorskip("django")
    import os

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.djapp.settings")
    import django

    django.setup()
    from django.test import Client

    from stagetrace.django._install import load_settings

    load_settings()
    trace = "0af7651916cd43dd8448eb211c80319c"
    with stagetrace.capture() as got:
        response = Client().get(
            "/outbound/",
            {"url": f"{server}/x"},
            headers={"traceparent": f"00-{trace}-b7ad6b7169203331-01", "tracestate": "v=1"},
        )
    stagetrace.flush()
    assert response.status_code == 200
    tl = got[0]
    for stage, headers in calls_and_headers(tl, 2):
        assert headers["traceparent"] == f"00-{trace}-{tl.stage_span_id(stage.id)}-01"
        assert headers["tracestate"] == "v=1"


def test_a_header_the_caller_set_is_never_replaced(server):
    """A traceparent the application set itself (its own OpenTelemetry span, say) is sent
    as it was."""
    mine = "00-11111111111111111111111111111111-2222222222222222-00"
    with stagetrace.timeline("job"):
        _calls(server, traceparent=mine)
    assert [h["traceparent"] for h in RECEIVED] == [mine] * 3


def test_nothing_is_added_outside_a_recorded_request(server):
    """Not recording (outside any timeline, or sampled out): no traceparent."""
    _calls(server)
    stagetrace.configure(sample_rate=0.0)
    with stagetrace.timeline("job"):
        _calls(server)
    assert RECEIVED and all("traceparent" not in h for h in RECEIVED)


def test_without_an_exporting_sink_nothing_is_added_by_default(server):
    """The headers name stage spans: with no sink exporting them (only the memory sink here),
    a downstream service would parent its spans on spans no collector receives, so by default
    nothing is added; propagate_traceparent=True asks for it anyway."""
    stagetrace.reset()
    stagetrace.configure(sinks=["memory"])
    with stagetrace.timeline("job"):
        _calls(server)
    assert len(RECEIVED) == 3 and all("traceparent" not in h for h in RECEIVED)
    stagetrace.configure(propagate_traceparent=True)
    with stagetrace.timeline("job"):
        _calls(server)
    assert all("traceparent" in h for h in RECEIVED[3:])


def test_a_request_object_sent_again_carries_no_earlier_trace_context(server):
    """The header is taken off the request object once sent: an httpx.Request sent from two
    jobs (and then outside any) used to carry the first job's traceparent every time."""
    req = httpx.Request("GET", f"{server}/a")
    with httpx.Client() as client:
        for _ in range(2):
            with stagetrace.timeline("job"):
                client.send(req)
        client.send(req)
    sent = [h.get("traceparent") for h in RECEIVED]
    assert sent[0] and sent[1] and sent[0] != sent[1] and sent[2] is None
    assert "traceparent" not in req.headers


def test_no_request_object_of_a_redirected_call_keeps_its_trace_context(server):
    """Every hop of a redirected call carries the trace context of a stage of that call, and
    none of the request objects the clients hand back keeps it: the last hop's
    (``response.request``, a copy the client made), the earlier hops' (``response.history``)
    and, with redirects not followed, the next one (httpx's ``next_request``, requests'
    ``next``). A retry sending one of them later, from another job or outside any, used to
    carry this call's traceparent."""
    with requests.Session() as session, httpx.Client(follow_redirects=True) as client:
        with stagetrace.capture() as got, stagetrace.timeline("job"):
            followed = [
                session.get(f"{server}/redirect", timeout=5),
                client.get(f"{server}/redirect"),
            ]
            not_followed = [
                session.get(f"{server}/redirect", timeout=5, allow_redirects=False),
                client.get(f"{server}/redirect", follow_redirects=False),
            ]
        stagetrace.flush()
        tl = got[0]
        spans = {tl.stage_span_id(s.id) for s in tl.stages if s.kind == "http.client"}
        hops = [h["traceparent"] for h in RECEIVED]
        assert len(hops) == 6 and {h[3:35] for h in hops} == {tl.trace_id}
        assert {h[36:52] for h in hops} <= spans
        handed_back = [r.request for r in followed]
        handed_back += [h.request for r in followed for h in r.history]
        handed_back += [not_followed[0].next, not_followed[1].next_request]
        assert [dict(r.headers).keys() & {"traceparent", "tracestate"} for r in handed_back] == [
            set()
        ] * 6
        RECEIVED.clear()
        session.send(followed[0].request, timeout=5)
        client.send(followed[1].request)
    assert [h.get("traceparent") for h in RECEIVED] == [None, None]


def test_a_failed_hop_leaves_no_trace_context_on_its_request():
    """A call that fails (nothing listens) takes the headers off its request too: the one
    the exception carries is the one a retry would send."""
    failed = []
    with stagetrace.timeline("job"):
        for call, error in (
            (lambda: httpx.get("http://127.0.0.1:9/", timeout=2), httpx.ConnectError),
            (lambda: requests.get("http://127.0.0.1:9/", timeout=2), requests.ConnectionError),
        ):
            with pytest.raises(error) as raised:
                call()
            failed.append(raised.value.request)
    assert [dict(r.headers).keys() & {"traceparent"} for r in failed] == [set(), set()]


def test_an_adapter_of_the_applications_own_sends_the_trace_context_too():
    """A requests transport adapter not derived from ``HTTPAdapter`` (requests_mock's, a
    Unix-socket adapter) never runs the hop we wrap: the call's trace context goes on for the
    whole call instead, names its http.client stage, and comes off the request afterwards."""
    seen: list[dict[str, str]] = []

    class Recording(requests.adapters.BaseAdapter):
        def send(self, request, **kwargs):  # type: ignore[no-untyped-def]
            seen.append(dict(request.headers))
            response = requests.Response()
            response.status_code, response.request, response._content = 200, request, b""
            return response

        def close(self) -> None:
            pass

    stagetrace.configure(**exporting())
    session = requests.Session()
    session.mount("mock://", Recording())
    with stagetrace.capture() as got, stagetrace.timeline("job"):
        response = session.get("mock://svc/x")
    (tl,) = got
    (stage,) = [s for s in tl.stages if s.kind == "http.client"]
    assert seen[0]["traceparent"] == f"00-{tl.trace_id}-{tl.stage_span_id(stage.id)}-01"
    assert "traceparent" not in response.request.headers


def test_the_option_turns_it_off(server):
    """propagate_traceparent=False: calls are still stages, but carry no traceparent."""
    stagetrace.configure(propagate_traceparent=False)
    with stagetrace.capture() as got, stagetrace.timeline("job"):
        _calls(server)
    stagetrace.flush()
    assert len([s for s in got[0].stages if s.kind == "http.client"]) == 3
    assert all("traceparent" not in h for h in RECEIVED)
