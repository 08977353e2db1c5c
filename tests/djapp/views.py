import asyncio
import time

from django.core.cache import caches
from django.db import connection, transaction
from django.http import FileResponse, HttpResponse, JsonResponse, StreamingHttpResponse
from django.shortcuts import render
from django.template.response import TemplateResponse
from django.views import View
from django.views.decorators.csrf import csrf_exempt
from rest_framework import viewsets
from rest_framework.decorators import api_view
from rest_framework.response import Response
from rest_framework.views import APIView

from .models import Author, Book
from .serializers import BookSerializer


def books_json(request):
    """The N+1 view: one query for books, one per book for its author."""
    data = [{"title": b.title, "author": b.author.name} for b in Book.objects.order_by("id")]
    return JsonResponse({"books": data})


def books_page(request):
    books = Book.objects.select_related("author").order_by("id")
    return render(request, "books/list.html", {"books": books})


def books_template_response(request):
    return TemplateResponse(request, "books/list.html", {"books": Book.objects.none()})


def jinja_page(request):
    return render(request, "page.jinja", {"items": [1, 2, 3]}, using="jinja2")


async def async_books(request):
    count = await Book.objects.acount()
    titles = [b.title async for b in Book.objects.order_by("id")[:2]]
    return JsonResponse({"count": count, "titles": titles})


def stream(request):
    def chunks():
        for i in range(3):
            time.sleep(0.02)
            yield f"chunk {i} {Book.objects.count()}\n"

    return StreamingHttpResponse(chunks())


def async_stream(request):
    async def chunks():
        for i in range(3):
            await asyncio.sleep(0.02)
            yield f"chunk {i}\n"

    return StreamingHttpResponse(chunks())


def file_download(request):
    return FileResponse(open(__file__, "rb"), filename="views.py")


class ViewError(Exception):
    pass


RAISED: list = []


def boom(request):
    exc = ViewError("the view failed")
    RAISED.append(exc)
    raise exc


class BookDetail(View):
    def get(self, request, pk):
        book = Book.objects.select_related("author").get(pk=pk)
        return JsonResponse({"title": book.title, "author": book.author.name})


@csrf_exempt
def exempt_post(request):
    return HttpResponse("ok")


def cache_view(request, alias):
    cache = caches[alias]
    hit_before = cache.get("answer")
    cache.set("answer", 42)
    hit_after = cache.get("answer")
    cache.get_many(["answer", "missing"])
    return JsonResponse({"before": hit_before, "after": hit_after})


def session_view(request):
    request.session["visits"] = request.session.get("visits", 0) + 1
    return JsonResponse({"visits": request.session["visits"]})


def atomic_view(request):
    with transaction.atomic():
        author = Author.objects.create(name="Atomic Author")
        Book.objects.create(title="Atomic Book", author=author)
    author.delete()  # leave the shared test data as it was
    return JsonResponse({"ok": True})


def raw_view(request):
    with connection.cursor() as cursor:
        cursor.execute("SELECT COUNT(*) FROM djapp_book WHERE title <> %s", ["secret-value"])
        (count,) = cursor.fetchone()
    names = [a.name for a in Author.objects.raw("SELECT id, name FROM djapp_author")]
    return JsonResponse({"count": count, "authors": len(names)})


def pg_books(request):
    data = [
        {"title": b.title, "author": b.author.name} for b in Book.objects.using("pg").order_by("id")
    ]
    Book.objects.using("pg").filter(title="nothing").update(title="still nothing")
    return JsonResponse({"books": data})


class BookViewSet(viewsets.ReadOnlyModelViewSet):
    queryset = Book.objects.select_related("author").order_by("id")
    serializer_class = BookSerializer


class BookCountAPI(APIView):
    def get(self, request):
        return Response({"count": Book.objects.count()})


def echo_request_id(request):
    import stagetrace

    return JsonResponse({"request_id": stagetrace.current_timeline().request_id})


def legacy(request, slug):
    return HttpResponse(slug)


def outbound(request):
    import httpx
    import requests

    url = request.GET["url"]
    a = httpx.get(url).status_code
    b = requests.get(url, timeout=5).status_code
    return JsonResponse({"statuses": [a, b]})


class ComparableResponse(HttpResponse):
    """A response class defining __eq__ (and so, unhashable)."""

    def __eq__(self, other):
        return isinstance(other, HttpResponse) and self.content == other.content


def unhashable(request):
    return ComparableResponse("compared by content")


def weird_cache(request):
    cache = caches["weird"]
    cache.set("k", 1)
    return JsonResponse({"many": cache.get_many(["k"]), "has": cache.has_key("k")})


def stream_with_stage(request):
    import stagetrace

    def rows():
        with stagetrace.stage("produce rows"):
            for i in range(3):
                yield f"row {i} {Book.objects.count()}\n"
        with stagetrace.stage("footer"):
            yield "done\n"

    return StreamingHttpResponse(rows())


RESPONSES: list = []
HELD: list = []


class _Held:
    """Something big a view holds in a local variable."""


def not_found_holding(request):
    """A 404 raised by the view while a local holds an object (remembered weakly)."""
    import weakref

    from django.http import Http404

    held = _Held()
    HELD.append(weakref.ref(held))
    raise Http404("no such thing")


def failing_stream_holding(request):
    """A streamed body that raises after its first chunk while its frame holds an object
    (remembered weakly)."""
    import weakref

    held = _Held()
    HELD.append(weakref.ref(held))

    def rows():
        keep = held
        yield b"first\n"
        raise RuntimeError(f"the stream failed ({type(keep).__name__})")

    return StreamingHttpResponse(rows())


def big_page(request):
    """A 1 MB page rendered by a TemplateResponse; the response is remembered weakly."""
    import weakref

    response = TemplateResponse(request, "books/list.html", {"books": [], "pad": "x" * 1_000_000})
    RESPONSES.append(weakref.ref(response))
    return response


def api_use(request):
    """The public recording API used inside a view: annotate, a nested job, a decorated call."""
    import stagetrace

    @stagetrace.stage("helper")
    def helper():
        return 2

    stagetrace.annotate(customer="c-1")
    with stagetrace.timeline("nested job"):
        value = helper()
    stagetrace.current_timeline()
    return JsonResponse({"value": value})


def concurrent(request, rid):
    """Stages from this request's thread and from a pool it hands work to (with its context):
    every one must land in this request's timeline."""
    import contextvars
    from concurrent.futures import ThreadPoolExecutor

    import stagetrace

    def child(i):
        with stagetrace.stage(f"{rid} pool {i}"):
            time.sleep(0.001 * (i % 3))
        return i

    with ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(contextvars.copy_context().run, child, i) for i in range(4)]
        total = sum(f.result() for f in futures)
    with stagetrace.stage(f"{rid} own"):
        pass
    return JsonResponse({"rid": rid, "total": total})


async def aconcurrent(request, rid):
    """The same under ASGI: gather children, a TaskGroup, and sync code via sync_to_async."""
    from asgiref.sync import sync_to_async

    import stagetrace

    async def child(i):
        with stagetrace.stage(f"{rid} task {i}"):
            await asyncio.sleep(0.001 * (i % 3))

    def blocking():
        with stagetrace.stage(f"{rid} sync"):
            time.sleep(0.001)

    await asyncio.gather(*(child(i) for i in range(3)))
    await sync_to_async(blocking)()
    return JsonResponse({"rid": rid})


def enqueue_receipt(request, order_id):
    """Send a Celery task (tests/celeryapp.py) from a view."""
    from tests.celeryapp import send_receipt

    result = send_receipt.delay(
        order_id, url=request.GET.get("url"), fail_times=int(request.GET.get("fail", 0))
    )
    return JsonResponse({"task_id": result.id})


def enqueue_django_task(request, order_id):
    """Enqueue a task of Django's tasks framework (tests/djapp/tasks.py) from a view."""
    from .tasks import record_order

    result = record_order.enqueue(order_id, fail=bool(request.GET.get("fail")))
    return JsonResponse({"status": str(result.status.value)})


#: One response object served to every request of ``shared/`` (a module-level response).
SHARED_RESPONSE = HttpResponse("the same object every time")


def shared_response(request):
    return SHARED_RESPONSE


def created_with_enum(request):
    """A status set as an ``http.HTTPStatus`` member (an int subclass), as views often do."""
    from http import HTTPStatus

    response = HttpResponse("made")
    response.status_code = HTTPStatus.CREATED
    return response


@api_view(["GET"])
def book_titles(request):
    """A function-based DRF view (``@api_view`` builds a class around it)."""
    return Response({"titles": list(Book.objects.values_list("title", flat=True))})


@api_view(["GET", "POST"])
def author_names(request):
    return Response({"names": list(Author.objects.values_list("name", flat=True))})


def batch(request):
    """Serves sub-requests inside this one (as batch-request views do): one through a handler
    of its own, one through the test client. Returns what each answered."""
    from django.core.handlers.base import BaseHandler
    from django.test import Client, RequestFactory

    handler = BaseHandler()
    handler.load_middleware()
    first = handler.get_response(RequestFactory().get("/created/"))
    second = Client().get("/created/")
    answers = [
        {"status": sub.status_code, "server_timing": sub.has_header("Server-Timing")}
        for sub in (first, second)
    ]
    return JsonResponse({"answers": answers})


def similar_statements(request):
    """Two different statements on one table that differ only after Django's long column list
    (one by ``id``, one by ``author_id``): the first five times with five ids and once more
    with the first id again, the second three times."""
    ids = list(Book.objects.order_by("id").values_list("id", flat=True)[:5])
    for pk in ids:
        list(Book.objects.filter(pk=pk))
    for pk in ids[:3]:
        list(Book.objects.filter(author_id=pk))
    list(Book.objects.filter(pk=ids[0]))
    return JsonResponse({"ids": ids})
