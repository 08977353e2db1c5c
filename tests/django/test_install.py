"""instrument()/uninstrument(): idempotent, reversible, transparent, usable before setup."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from asgiref.sync import iscoroutinefunction
from django.test import Client, override_settings

import stagetrace.django
from stagetrace.django._common import patcher

ROOT = Path(__file__).resolve().parents[2]


def test_uninstrument_restores_every_patched_object(captured):
    """After uninstrument() each patched attribute is the original object again, and no
    timeline is recorded; instrument() brings everything back."""
    from django.core.handlers.base import BaseHandler
    from django.db.models.query import QuerySet
    from django.template.base import Template

    Client().get("/books.json")  # make sure lazily patched classes (cache, session) are in
    applied = patcher.patches()
    assert len(applied) > 20
    # What someone else replaced after us (Django's test environment swapping Template._render
    # when it is set up after this instrumentation, as when this file runs alone) stays theirs.
    originals = [
        (owner, attr, original, had_own)
        for owner, attr, original, had_own, ours in applied
        if had_own is None or vars(owner).get(attr) is ours
    ]
    stagetrace.django.uninstrument()
    try:
        for owner, attr, original, had_own in originals:
            if had_own:
                assert vars(owner)[attr] is original, (owner, attr)
            else:
                assert attr not in vars(owner), (owner, attr)
        assert BaseHandler.resolve_request.__qualname__ == "BaseHandler.resolve_request"
        assert QuerySet._fetch_all.__qualname__ == "QuerySet._fetch_all"
        assert not hasattr(Template._render, "__wrapped__") or "instrumented" in repr(
            Template._render
        )
        captured.clear()
        Client().get("/books.json")
        assert captured == []
        assert stagetrace.django.is_instrumented() is False
    finally:
        stagetrace.django.instrument()
    Client().get("/books.json")
    assert len(captured) == 1 and len(captured[0].of_kind("db.query")) == 7


def test_djangos_exception_conversion_stays_one_function_under_both_its_names():
    """``convert_exception_to_response`` is replaced where ``load_middleware`` calls it and in
    its own module with one object (code checking that Django's handler was not patched
    behind its back compares the two names), and both are Django's again once undone."""
    from django.core.handlers import base, exception

    assert base.convert_exception_to_response is exception.convert_exception_to_response
    assert base.convert_exception_to_response.__wrapped__ is not None
    stagetrace.django.uninstrument()
    try:
        assert base.convert_exception_to_response is exception.convert_exception_to_response
        assert not hasattr(base.convert_exception_to_response, "__stagetrace_patch__")
    finally:
        stagetrace.django.instrument()
    assert base.convert_exception_to_response is exception.convert_exception_to_response


def test_instrument_twice_changes_nothing(captured):
    """A second instrument() is a no-op: no stage is recorded twice."""
    stagetrace.django.instrument()
    stagetrace.django.instrument()
    Client().get("/books.json")
    (tl,) = captured
    assert len(tl.of_kind("view")) == 1 and len(tl.of_kind("db.query")) == 7


def test_middleware_proxies_are_transparent():
    """The factory and instance proxies keep isinstance, attributes, capability flags and
    coroutine markers of the real middleware."""
    from django.contrib.sessions.middleware import SessionMiddleware
    from django.core.handlers import base

    factory = base.import_string("django.contrib.sessions.middleware.SessionMiddleware")
    assert factory.__wrapped__ is SessionMiddleware
    assert factory.sync_capable is True and factory.async_capable is True

    def get_response(request):
        return None

    async def aget_response(request):
        return None

    instance = factory(get_response)
    assert isinstance(instance, SessionMiddleware)
    assert type(instance.__wrapped__) is SessionMiddleware
    assert not iscoroutinefunction(instance)
    assert iscoroutinefunction(factory(aget_response))
    assert instance.SessionStore.__name__ == "SessionStore"
    assert hasattr(instance, "process_view") is False
    assert hasattr(instance, "process_response") is True


BEFORE_SETUP = textwrap.dedent(
    """
    import django, stagetrace, stagetrace.django
    from django.conf import settings
    stagetrace.django.instrument()          # before settings and setup
    settings.configure(
        ROOT_URLCONF=__name__, ALLOWED_HOSTS=["*"], SECRET_KEY="x",
        MIDDLEWARE=["django.middleware.common.CommonMiddleware"],
        STAGETRACE={"service": "from-settings"},
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth"],
    )
    django.setup()
    from django.http import JsonResponse
    from django.urls import path
    from django.contrib.auth.models import User
    def view(request):
        return JsonResponse({"users": User.objects.count()})
    urlpatterns = [path("users/", view)]
    from django.core.management import call_command
    call_command("migrate", verbosity=0)
    from django.test import Client
    with stagetrace.capture() as got:
        assert Client().get("/users/").status_code == 200
    tl = got[0]
    print(tl.service, tl.route, [s.kind for s in tl.stages])
    """
)


def test_instrument_before_django_setup_and_without_the_app(tmp_path):
    """instrument() may run before settings exist; STAGETRACE is then read on first use."""
    script = tmp_path / "before_setup.py"
    script.write_text(BEFORE_SETUP)
    out = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=True,
    ).stdout
    service, route, kinds = out.split(" ", 2)
    assert service == "from-settings" and route == "users/"
    for kind in ("gateway", "middleware", "route", "view", "db.query", "serialize"):
        assert kind in kinds


def test_override_settings_of_stagetrace_applies_inside_it(captured):
    """``override_settings(STAGETRACE=...)`` in a test changes stagetrace's options for the
    requests made inside it and puts the project's back after it; a bad value raises
    `ConfigurationError` into the test that set it, as it would at start-up."""
    with override_settings(STAGETRACE={"service": "overridden", "exclude_paths": ["^/books"]}):
        assert stagetrace.settings().service == "overridden"
        Client().get("/books.json")
    assert stagetrace.settings().service == "djapp-tests"
    assert stagetrace.settings().exclude_paths == ()
    Client().get("/books.json")
    assert [tl.path for tl in captured] == ["/books.json"]
    bad = override_settings(STAGETRACE={"sample_rate": 5})
    with pytest.raises(stagetrace.ConfigurationError, match="'sample_rate'"), bad:
        pass  # pragma: no cover - not entered
    assert stagetrace.settings().service == "djapp-tests"
