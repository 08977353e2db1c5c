"""The Django dev page (``stagetrace.django.urls``): recent requests from the memory sink as a
page and as JSON, only under DEBUG or for staff, never showing its own requests."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator

import pytest
from django.contrib.auth.models import User
from django.test import Client, override_settings

import stagetrace

PAGE = "/__stagetrace__/"
JSON = "/__stagetrace__/json/"


@pytest.fixture
def memory() -> None:
    stagetrace.configure(sinks=["memory"])


@pytest.fixture
def staff() -> Iterator[User]:
    user = User.objects.create_user("staff-devpage", password="x", is_staff=True)
    yield user
    user.delete()


@pytest.fixture
def member() -> Iterator[User]:
    user = User.objects.create_user("member-devpage", password="x")
    yield user
    user.delete()


def page_data(html: str) -> dict:
    (raw,) = re.findall(
        r'<script type="application/json" id="stagetrace-data">(.*?)</script>', html, re.S
    )
    return json.loads(raw)


def served(client: Client, *paths: str) -> None:
    for path in paths:
        client.get(path).close()
    assert stagetrace.flush(timeout=10)


@pytest.mark.parametrize("url", [PAGE, JSON, PAGE + "?format=json"])
def test_hidden_without_debug_or_staff(url: str, member: User, memory: None) -> None:
    """Anonymous users and non-staff users get a 404, as if the page did not exist."""
    client = Client()
    assert client.get(url).status_code == 404
    client.force_login(member)
    assert client.get(url).status_code == 404


def test_staff_sees_recent_requests_with_waterfalls(staff: User, memory: None) -> None:
    """A staff user gets the page: the requests the memory sink kept (newest first, the N+1
    one with its finding), and none of the dev page's own requests, even after reloading."""
    client = Client()
    client.force_login(staff)
    served(client, "/books.json", "/books/", "/request-id/")
    first = client.get(PAGE)
    assert first.status_code == 200
    assert first["Content-Type"] == "text/html; charset=utf-8"
    assert first["Cache-Control"] == "no-store"
    served(client)
    second = client.get(PAGE)
    html = second.content.decode()
    data = page_data(html)
    assert data["sort"] == "newest"
    paths = [t["path"] for t in data["timelines"]]
    assert paths == ["/books.json", "/books/", "/request-id/"]
    n1 = data["timelines"][0]
    assert "n_plus_one" in [f["kind"] for f in n1["findings"]]
    assert len(n1["stages"]) > 10
    assert 'id="notice"' not in html
    assert "stagetrace: recent requests" in html


@override_settings(DEBUG=True)
def test_the_pages_own_requests_reach_no_sink(memory: None) -> None:
    """Viewing the page records nothing: neither the memory sink (which it shows) nor any other
    receiver (console, JSON lines, a capture) gets the page's own requests."""
    client = Client()
    with stagetrace.capture() as seen:
        served(client, "/books/")
        for url in (PAGE, JSON, PAGE + "?format=json"):
            assert client.get(url).status_code == 200
        assert stagetrace.flush(timeout=10)
    assert [t.path for t in seen] == ["/books/"]
    assert [t.path for t in stagetrace.recent()] == ["/books/"]


@override_settings(DEBUG=True)
def test_debug_opens_it_to_anyone_and_json_matches(memory: None) -> None:
    """Under DEBUG an anonymous user gets it; ``json/`` and ``?format=json`` give the same
    timelines as the page, in the current timeline schema, ``?n=`` limits them."""
    client = Client()
    served(client, "/books.json", "/api/count/", "/books/")
    page = page_data(client.get(PAGE).content.decode())
    body = client.get(JSON).json()
    assert body["enabled"] is True
    assert body["schema"] == stagetrace.SCHEMA
    assert [t["trace_id"] for t in body["timelines"]] == [t["trace_id"] for t in page["timelines"]]
    assert [t["path"] for t in body["timelines"]] == ["/books.json", "/api/count/", "/books/"]
    for t in body["timelines"]:
        assert stagetrace.Timeline.from_dict(t).stages
    again = client.get(PAGE + "?format=json").json()
    assert [t["trace_id"] for t in again["timelines"]] == [t["trace_id"] for t in body["timelines"]]
    last = client.get(JSON + "?n=1").json()
    assert [t["path"] for t in last["timelines"]] == ["/books/"]
    assert client.get(JSON + "?n=zero").json()["kept"] == 3


@override_settings(DEBUG=True)
def test_without_memory_sink_it_says_how_to_enable_it() -> None:
    """No memory sink configured: the page and the JSON say how to turn it on."""
    client = Client()
    html = client.get(PAGE).content.decode()
    assert 'id="notice"' in html
    assert "STAGETRACE = {&quot;sinks&quot;: [&quot;console&quot;, &quot;memory&quot;]" in html
    assert page_data(html)["timelines"] == []
    body = client.get(JSON).json()
    assert body["enabled"] is False
    assert "STAGETRACE_SINKS=memory" in body["hint"]
    assert body["timelines"] == []
