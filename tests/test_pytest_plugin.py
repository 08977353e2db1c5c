"""The pytest plugin (``stagetrace_capture``), run by pytest itself through ``pytester`` on real
apps: pytest-django's ``client``, Django's ``TestCase``, Starlette's ``TestClient`` and Flask's
test client."""

from __future__ import annotations

import textwrap

import pytest

pytest_plugins = ["pytester"]

INI = """
[pytest]
pythonpath = .
filterwarnings = error
addopts = -p no:cacheprovider
asyncio_default_fixture_loop_scope = function
{extra}
"""

DJANGO_FILES = {
    "djproj/__init__.py": "",
    "djproj/settings.py": """
        SECRET_KEY = "plugin-tests"
        DEBUG = False
        ALLOWED_HOSTS = ["*"]
        USE_TZ = True
        ROOT_URLCONF = "djproj.urls"
        STATIC_URL = "/static/"  # live_server serves static files too
        DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
        INSTALLED_APPS = [
            "django.contrib.contenttypes",
            "django.contrib.auth",
            "shopapp",
            "stagetrace.django",
        ]
        MIDDLEWARE = ["django.middleware.common.CommonMiddleware"]
        DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
        TEMPLATES = [
            {"BACKEND": "django.template.backends.django.DjangoTemplates", "APP_DIRS": True}
        ]
    """,
    "djproj/urls.py": """
        from django.urls import path
        from shopapp import views

        urlpatterns = [
            path("n-plus-one/", views.n_plus_one),
            path("fixed/", views.fixed),
            path("page/", views.page),
            path("hello/", views.hello),
        ]
    """,
    "shopapp/__init__.py": "",
    "shopapp/models.py": """
        from django.db import models

        class Author(models.Model):
            name = models.CharField(max_length=50)

        class Book(models.Model):
            title = models.CharField(max_length=50)
            author = models.ForeignKey(Author, on_delete=models.CASCADE)
    """,
    "shopapp/views.py": """
        from django.http import JsonResponse
        from django.shortcuts import render
        from .models import Book

        def n_plus_one(request):
            names = []
            for book in Book.objects.all():
                names.append(book.author.name)  # one query per book
            return JsonResponse({"authors": names})

        def fixed(request):
            names = [b.author.name for b in Book.objects.select_related("author")]
            return JsonResponse({"authors": names})

        def page(request):
            return render(request, "page.html", {"books": Book.objects.all()})

        def hello(request):
            return JsonResponse({"hello": "world"})
    """,
    "shopapp/templates/page.html": (
        "{% for b in books %}<p>{{ b.title }} by {{ b.author.name }}</p>{% endfor %}"
    ),
    "conftest.py": """
        import pytest

        @pytest.fixture
        def books(db):
            from shopapp.models import Author, Book
            for i in range(6):
                Book.objects.create(title=f"b{i}", author=Author.objects.create(name=f"a{i}"))
    """,
}


def write(pytester: pytest.Pytester, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = pytester.path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text), encoding="utf-8")


@pytest.fixture
def django_project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    pytest.importorskip("django")
    # tests/django sets this for the outer run; the inner run uses its own project's settings.
    monkeypatch.delenv("DJANGO_SETTINGS_MODULE", raising=False)
    pytest.importorskip("pytest_django")
    write(pytester, DJANGO_FILES)
    pytester.makeini(INI.format(extra="DJANGO_SETTINGS_MODULE = djproj.settings"))
    return pytester


def test_with_pytest_django_client(django_project: pytest.Pytester) -> None:
    """With pytest-django's ``client``: the N+1 view fails `assert_no_n_plus_one` and
    `assert_max_queries` with its waterfall and the view or template it came from; the
    select_related view passes both; a stage budget passes and fails as its limit says."""
    django_project.makepyfile(
        test_views="""
        def test_n_plus_one_view(client, books, stagetrace_capture):
            assert client.get("/n-plus-one/").status_code == 200
            stagetrace_capture.assert_no_n_plus_one()

        def test_fixed_view(client, books, stagetrace_capture):
            assert client.get("/fixed/").status_code == 200
            stagetrace_capture.assert_no_n_plus_one()
            stagetrace_capture.assert_max_queries(1)
            assert len(stagetrace_capture) == 1

        def test_too_many_queries(client, books, stagetrace_capture):
            client.get("/n-plus-one/")
            stagetrace_capture.assert_max_queries(3)

        def test_template_n_plus_one(client, books, stagetrace_capture):
            client.get("/page/")
            stagetrace_capture.assert_no_n_plus_one()

        def test_budget_generous(client, books, stagetrace_capture):
            client.get("/fixed/")
            stagetrace_capture.assert_stage_budget("view", max_ms=60_000)

        def test_budget_exceeded(client, books, stagetrace_capture):
            client.get("/fixed/")
            stagetrace_capture.assert_stage_budget("db.query", max_ms=0)

        def test_nothing_recorded(stagetrace_capture):
            stagetrace_capture.assert_max_queries(0)
        """
    )
    result = django_project.runpytest_subprocess("-p", "django")
    result.assert_outcomes(passed=2, failed=5)
    out = result.stdout.str()
    result.stdout.fnmatch_lines(
        [
            "*test_n_plus_one_view*",
            "*1 N+1 query pattern found:",
            "*GET /n-plus-one/ -> 200: N+1: 6× SELECT ... FROM shopapp_author WHERE"
            " shopapp_author.id = ? LIMIT ? * (*ms)",
        ]
    )
    # where: the loop's line once the recorder captures call sites, else the view
    loop = "at shopapp/views.py:9 in n_plus_one (" in out and "call site: " in out
    assert loop or "in view shopapp.views.n_plus_one (" in out
    # the failing request's waterfall is in the message
    assert "GET /n-plus-one/ → 200" in out
    assert "view n_plus_one" in out  # the waterfall row (short name)
    result.stdout.fnmatch_lines(
        [
            "*expected at most 3 SQL queries, 7 ran in 1 request:",
            "*7  GET /n-plus-one/ -> 200",
            "*most repeated statements in GET /n-plus-one/ -> 200:",
            "*6× SELECT ... FROM shopapp_author WHERE shopapp_author.id = ? LIMIT ?",
        ]
    )
    result.stdout.fnmatch_lines(
        ["*/page/ -> 200: N+1: 6×*, rendering page.html (*", "*while rendering: page.html"]
    )
    result.stdout.fnmatch_lines(
        [
            "*stage budget exceeded: at most 0 ms in 'db.query' stages per request",
            "*GET /fixed/ -> 200: * ms in 1 db.query stage(s)",
        ]
    )
    result.stdout.fnmatch_lines(["*no timeline was recorded during this test*"])
    # the plugin's own frames are hidden from the tracebacks: they end at the test's line
    assert "raise AssertionError" not in out


def test_with_django_testcase(django_project: pytest.Pytester) -> None:
    """In a Django ``TestCase`` the fixture is reached through an autouse fixture of the class;
    the `StagetraceCapture` context manager works without any fixture."""
    django_project.makepyfile(
        test_case="""
        import pytest
        from django.test import TestCase
        from stagetrace.pytest_plugin import StagetraceCapture
        from shopapp.models import Author, Book

        class BookTests(TestCase):
            @classmethod
            def setUpTestData(cls):
                for i in range(5):
                    Book.objects.create(title=f"b{i}", author=Author.objects.create(name=f"{i}"))

            @pytest.fixture(autouse=True)
            def _stagetrace(self, stagetrace_capture):
                self.stagetrace = stagetrace_capture

            def test_n_plus_one(self):
                self.client.get("/n-plus-one/")
                self.stagetrace.assert_no_n_plus_one()

            def test_fixed(self):
                self.client.get("/fixed/")
                self.stagetrace.assert_no_n_plus_one()
                self.stagetrace.assert_max_queries(1, route="fixed/")

            def test_context_manager(self):
                with StagetraceCapture() as captured:
                    self.client.get("/n-plus-one/")
                captured.assert_max_queries(1)
        """
    )
    result = django_project.runpytest_subprocess("-p", "django")
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines(
        [
            "*1 N+1 query pattern found:",
            "*N+1: 5× SELECT ... FROM shopapp_author* in *n_plus_one (*",
        ]
    )
    result.stdout.fnmatch_lines(["*expected at most 1 SQL query, 6 ran in 1 request:"])


def test_n_plus_one_threshold_is_the_assertions(django_project: pytest.Pytester) -> None:
    """`assert_no_n_plus_one(threshold=N)` judges by N, not by the threshold the analyzers ran
    with when the request was recorded (5 by default, or the project's
    ``n_plus_one_threshold``): 6 repeats of one query pass ``threshold=7`` and fail
    ``threshold=6``."""
    django_project.makepyfile(
        test_threshold="""
        def test_above_the_repeats(client, books, stagetrace_capture):
            client.get("/n-plus-one/")
            stagetrace_capture.assert_no_n_plus_one(threshold=7)

        def test_at_the_repeats(client, books, stagetrace_capture):
            client.get("/n-plus-one/")
            stagetrace_capture.assert_no_n_plus_one(threshold=6)
        """
    )
    result = django_project.runpytest_subprocess("-p", "django")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*test_at_the_repeats*", "*1 N+1 query pattern found:"])


def test_a_live_servers_request_is_captured_although_it_ends_after_the_response(
    django_project: pytest.Pytester,
) -> None:
    """pytest-django's ``live_server`` runs the app on a thread of its own, which ends the
    request's timeline when it closes the response — after the client has read all of it.
    An assertion right after the request found no timeline (or, among several, missed the
    last one and its queries); it now waits for the requests still finishing."""
    django_project.makepyfile(
        test_live="""
        import time
        from urllib.request import urlopen

        from django.core.signals import request_finished

        def slow_to_finish(**kwargs):
            time.sleep(0.3)  # the timeline ends after this, the client has its response

        request_finished.connect(slow_to_finish, weak=False)

        def test_live(live_server, stagetrace_capture):
            assert urlopen(live_server.url + "/hello/").read() == b'{"hello": "world"}'
            assert len(stagetrace_capture) == 1
            assert stagetrace_capture[0].route == "hello/"
        """
    )
    result = django_project.runpytest_subprocess("-p", "django")
    result.assert_outcomes(passed=1)


def test_route_ignores_a_leading_or_trailing_slash(django_project: pytest.Pytester) -> None:
    """``route=`` names a route as ``stagetrace show --route`` does: with or without the
    slashes Django's templates (``fixed/``) and Starlette's (``/books``) differ by — it used
    to need the exact template and failed with "no timeline of route 'fixed' ... (recorded:
    fixed/)"."""
    django_project.makepyfile(
        test_route="""
        def test_route_spelled_three_ways(client, books, stagetrace_capture):
            client.get("/fixed/")
            for route in ("fixed", "/fixed/", "/fixed"):
                stagetrace_capture.assert_max_queries(1, route=route)
        """
    )
    result = django_project.runpytest_subprocess("-p", "django")
    result.assert_outcomes(passed=1)


def test_with_starlette_testclient(pytester: pytest.Pytester) -> None:
    """With Starlette's ``TestClient`` (the app runs in another thread) and raw sqlite3
    queries (recorded by the adapter's DB-API instrumentation): N+1, query count and budgets
    are checked."""
    pytest.importorskip("starlette")
    pytest.importorskip("httpx")
    pytester.makeini(INI.format(extra=""))
    pytester.makepyfile(
        test_app="""
        import sqlite3
        import pytest
        import stagetrace
        import stagetrace.starlette
        from starlette.applications import Starlette
        from starlette.responses import JSONResponse
        from starlette.routing import Route
        from starlette.testclient import TestClient

        def db():
            conn = sqlite3.connect(":memory:", check_same_thread=False)
            conn.execute("CREATE TABLE author (id INTEGER PRIMARY KEY, name TEXT)")
            conn.execute("CREATE TABLE book (id INTEGER PRIMARY KEY, author_id INTEGER)")
            for i in range(8):
                conn.execute("INSERT INTO author VALUES (?, ?)", (i, f"a{i}"))
                conn.execute("INSERT INTO book VALUES (?, ?)", (i, i))
            return conn

        def books(request):
            rows = CONN.execute("SELECT id, author_id FROM book").fetchall()
            names = [
                CONN.execute("SELECT name FROM author WHERE id = ?", (a,)).fetchall()
                for _, a in rows
            ]
            return JSONResponse({"n": len(names)})

        app = Starlette(routes=[Route("/books", books)])
        stagetrace.starlette.instrument_app(app)
        CONN = db()  # made outside any request: its queries are not recorded

        @pytest.fixture
        def client():
            with TestClient(app) as c:
                yield c

        def test_n_plus_one(client, stagetrace_capture):
            assert client.get("/books").status_code == 200
            stagetrace_capture.assert_no_n_plus_one()

        def test_queries(client, stagetrace_capture):
            client.get("/books")
            stagetrace_capture.assert_max_queries(9)
            stagetrace_capture.assert_max_queries(8, route="/books")

        def test_budget(client, stagetrace_capture):
            client.get("/books")
            stagetrace_capture.assert_stage_budget("view", max_ms=60_000)
            stagetrace_capture.assert_stage_budget("db.query", max_ms=0)
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:django")
    result.assert_outcomes(failed=3)
    result.stdout.fnmatch_lines(
        [
            "*GET /books -> 200: N+1: 8× SELECT name FROM author WHERE id = ? at test_app.py:* in *books*"
        ]
    )
    result.stdout.fnmatch_lines(["*expected at most 8 SQL queries, 9 ran in 1 request:"])
    result.stdout.fnmatch_lines(["*GET /books -> 200: * ms in 9 db.query stage(s)"])


def test_with_flask_test_client(pytester: pytest.Pytester) -> None:
    """With Flask's test client and SQLAlchemy, the way a Flask test is written: the test
    holds the response (``r = client.get(...)``) and checks its status before asserting on the
    timelines. The N+1 is found; a test whose app is not instrumented is told how a Flask app
    is (``stagetrace.flask.instrument()``)."""
    pytest.importorskip("flask")
    pytest.importorskip("sqlalchemy")
    pytester.makeini(INI.format(extra=""))
    pytester.makepyfile(
        test_app="""
        import flask
        import sqlalchemy as sa
        import stagetrace.flask

        engine = sa.create_engine("sqlite://")
        with engine.begin() as conn:
            conn.execute(sa.text("CREATE TABLE author (id INTEGER PRIMARY KEY, name TEXT)"))
            for i in range(6):
                conn.execute(sa.text("INSERT INTO author VALUES (:i, 'a')"), {"i": i})

        def make_app(instrument):
            app = flask.Flask(__name__)
            if instrument:
                stagetrace.flask.instrument(app)

            @app.get("/authors")
            def authors():
                with engine.connect() as conn:
                    names = [
                        conn.execute(
                            sa.text("SELECT name FROM author WHERE id = :i"), {"i": i}
                        ).scalar()
                        for i in range(6)
                    ]
                return {"names": names}

            return app

        def test_n_plus_one(stagetrace_capture):
            r = make_app(True).test_client().get("/authors")
            assert r.status_code == 200
            stagetrace_capture.assert_no_n_plus_one()

        def test_queries(stagetrace_capture):
            r = make_app(True).test_client().get("/authors")
            assert r.status_code == 200
            stagetrace_capture.assert_max_queries(6, route="/authors")
            assert [t.status for t in stagetrace_capture] == [200]

        def test_not_instrumented(stagetrace_capture):
            r = make_app(False).test_client().get("/authors")
            assert r.status_code == 200
            stagetrace_capture.assert_max_queries(6)
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:django")
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines(
        ["*GET /authors -> 200: N+1: 6× SELECT name FROM author WHERE id = ? at test_app.py:*"]
    )
    result.stdout.fnmatch_lines(["*no timeline was recorded*stagetrace.flask.instrument()*"])


def test_route_names_a_job(pytester: pytest.Pytester) -> None:
    """A job (a Celery task, `stagetrace.timeline()`) is chosen by its name with ``route=``,
    as ``stagetrace show --route`` does and as the "recorded: ..." list of the failure names
    it, where the assertion used to say no timeline of that name was recorded."""
    pytester.makeini(INI.format(extra=""))
    pytester.makepyfile(
        test_job="""
        import sqlite3
        import stagetrace
        import stagetrace.dbapi

        stagetrace.dbapi.instrument()

        def nightly_report():
            with stagetrace.timeline("nightly-report"):
                db = sqlite3.connect(":memory:")
                for i in range(6):
                    db.execute("SELECT ?", (i,)).fetchall()

        def test_job_within_budget(stagetrace_capture):
            nightly_report()
            stagetrace_capture.assert_max_queries(6, route="nightly-report")

        def test_job_over_budget(stagetrace_capture):
            nightly_report()
            stagetrace_capture.assert_max_queries(5, route="nightly-report")
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:django")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*expected at most 5 SQL queries, 6 ran in 1 request:"])


def test_nothing_recorded_names_the_settings_that_left_requests_out(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An instrumented app whose requests went unrecorded because of the configuration —
    production's ``STAGETRACE_SAMPLE_RATE`` inherited by the test run, ``exclude_paths`` —
    is told which setting did it, not only asked whether the app is instrumented."""
    monkeypatch.setenv("STAGETRACE_SAMPLE_RATE", "0")
    monkeypatch.setenv("STAGETRACE_EXCLUDE_PATHS", "^/health$")
    pytester.makeini(INI.format(extra=""))
    pytester.makepyfile(
        test_app="""
        import io
        from wsgiref.util import setup_testing_defaults
        from stagetrace.wsgi import StagetraceMiddleware

        def hello(environ, start_response):
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"hello"]

        app = StagetraceMiddleware(hello)

        def test_sampled_out(stagetrace_capture):
            environ = {}
            setup_testing_defaults(environ)
            body = b"".join(app(environ, lambda status, headers: None))
            assert body == b"hello"
            stagetrace_capture.assert_max_queries(0)
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:django")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            "E * no timeline was recorded during this test, * and recording enabled? "
            "Only some requests are recorded: the sample_rate option (STAGETRACE_SAMPLE_RATE) "
            "is 0. Requests whose path matches the exclude_paths option "
            "(STAGETRACE_EXCLUDE_PATHS) are not recorded: ^/health$."
        ]
    )


def test_plugin_loads_without_side_effects(pytester: pytest.Pytester) -> None:
    """A project that never asks for the fixture gets the plugin loaded and nothing else: no
    autouse fixture, no framework imported, no capture listening, nothing printed."""
    pytester.makeini(INI.format(extra=""))
    pytester.makepyfile(
        test_plain="""
        import sys

        def test_plain(request):
            assert request.config.pluginmanager.hasplugin("stagetrace")
            assert "stagetrace_capture" not in request.fixturenames
            loaded = {m.split(".")[0] for m in sys.modules}
            assert not loaded & {"django", "starlette", "fastapi"}, loaded
            assert "stagetrace.django" not in sys.modules

        def test_plugin_has_no_hooks(request):
            plugin = request.config.pluginmanager.get_plugin("stagetrace")
            assert plugin.__name__ == "stagetrace.pytest_plugin"
            assert [name for name in dir(plugin) if name.startswith("pytest_")] == []
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:django")
    result.assert_outcomes(passed=2)
    assert "stagetrace" not in result.stderr.str()


@pytest.mark.parametrize("n", ["3", 2.5, -1, True, None])
def test_assert_max_queries_refuses_a_count_that_is_not_one(n: object) -> None:
    """`assert_max_queries` takes a whole number from 0 up, and says so as
    `assert_stage_budget` does for its ``max_ms``: ``"3"`` raised a TypeError from inside the
    plugin ('<=' not supported between 'int' and 'str') and ``-1`` failed every request."""
    from stagetrace.pytest_plugin import StagetraceCapture

    with StagetraceCapture() as captured:
        pass
    with pytest.raises(ValueError, match=r"^n must be a whole number of SQL queries >= 0, not "):
        captured.assert_max_queries(n)  # type: ignore[arg-type]
