"""Privacy by default: nothing secret a request carries reaches a timeline unless the user opts
in, and nothing a client sent can forge log lines, headers or terminal output."""

from __future__ import annotations

import json

import pytest
from django.test import Client

import stagetrace
from stagetrace.sinks import render_waterfall

SECRETS = ("s3cr3t-token", "sessionid-value", "hunter2", "secret-value", "card-4242")


def dump(timelines) -> str:
    return json.dumps([t.to_dict() for t in timelines])


def test_secrets_in_headers_query_body_and_sql_parameters_are_never_recorded(captured):
    """Authorization, Cookie, query-string values, the body and SQL parameter values stay out of
    every timeline; header values only by an allowlist."""
    client = Client()
    client.post(
        "/exempt/?token=s3cr3t-token&page=2",
        data={"password": "hunter2"},
        HTTP_AUTHORIZATION="Bearer s3cr3t-token",
        HTTP_COOKIE="sessionid=sessionid-value",
        HTTP_PROXY_AUTHORIZATION="Basic hunter2",
        HTTP_X_CARD="card-4242",
    )
    client.get("/raw/")  # runs SQL with the parameter "secret-value"
    text = dump(captured)
    for secret in SECRETS:
        assert secret not in text
    gateway = captured[0].stages[0].attrs
    assert gateway["url.query"] == "token=REDACTED&page=REDACTED"
    assert not any(k.startswith("http.request.header.") for k in gateway)


def test_allowlisted_headers_and_query_values_are_recorded_and_secret_headers_refused(captured):
    """record_headers and record_query_values opt in, per name; the secret-carrying headers can
    never be allowed."""
    stagetrace.configure(record_headers=["x-tenant"], record_query_values=["page"])
    Client().get("/books.json?page=2&token=t", HTTP_X_TENANT="acme", HTTP_AUTHORIZATION="x")
    attrs = captured[0].stages[0].attrs
    assert attrs["http.request.header.x-tenant"] == ["acme"]
    assert attrs["url.query"] == "page=2&token=REDACTED"
    for name in ("authorization", "Cookie", "set-cookie", "proxy-authorization"):
        with pytest.raises(stagetrace.ConfigurationError, match="carries secrets"):
            stagetrace.configure(record_headers=[name])


def test_the_request_id_header_cannot_be_one_that_carries_secrets(captured):
    """The request id's header is recorded on every timeline and echoed back to the client
    with ``echo_request_id``: naming ``Authorization`` or ``Cookie`` there would record the
    credentials and send them back, so it is refused in one line like ``record_headers``."""
    for name in ("Authorization", "cookie", "x-api-key"):
        with pytest.raises(stagetrace.ConfigurationError, match="carries secrets") as info:
            stagetrace.configure(request_id_header=name)
        assert "\n" not in str(info.value)
    stagetrace.configure(request_id_header="x-correlation-id")
    Client().get("/books.json", HTTP_X_CORRELATION_ID="abc-123")
    assert captured[0].request_id == "abc-123"


def test_sql_parameter_values_only_with_record_sql_params(captured):
    """The SQL text keeps its placeholders; values appear only when the user opts in."""
    Client().get("/raw/")
    stagetrace.configure(record_sql_params=True)
    Client().get("/raw/")
    off, on = captured
    assert "secret-value" not in dump([off])
    params = [q.attrs.get("db.query.parameters") for q in on.of_kind("db.query")]
    assert any(p and "secret-value" in p for p in params)


def test_control_characters_from_the_request_never_reach_exports_or_the_terminal(captured):
    """A path or header with newlines and escape sequences is escaped in the timeline and in
    the waterfall, so it cannot forge log lines or drive a terminal."""
    evil = "/books.json%0aFAKE LOG LINE%1b[31m"
    Client().get(evil, HTTP_USER_AGENT="agent\r\nX-Injected: 1\x1b[2J")
    (tl,) = captured
    text = dump([tl]) + render_waterfall(tl, width=120)
    assert "\n" not in tl.path and "\x1b" not in text and "\r" not in text
    assert "\\x0a" in tl.path
    assert tl.stages[0].attrs["user_agent.original"].startswith("agent\\x0d\\x0a")


def test_a_404_does_not_carry_the_url_configuration(captured):
    """Django's ``Resolver404`` holds every pattern it tried (module paths, kilobytes on every
    404 a scanner provokes): the route stage says no pattern matched, and where."""
    response = Client().get("/wp-login.php")
    assert response.status_code == 404
    (tl,) = captured
    text = dump(captured)
    assert "URLPattern" not in text and "tried" not in text
    (route,) = [s for s in tl.stages if s.kind == "route"]
    assert route.error.message == "no URL pattern matched the path"
    assert route.attrs["url.path"] == "/wp-login.php"
