from django.urls import include, path, re_path
from rest_framework.routers import SimpleRouter

from . import views

router = SimpleRouter()
router.register("api/books", views.BookViewSet, basename="book")

shop = [
    path("books/<int:pk>/", views.BookDetail.as_view(), name="book-detail"),
]

urlpatterns = [
    path("books.json", views.books_json, name="books-json"),
    path("books/", views.books_page, name="books-page"),
    path("books/template-response/", views.books_template_response),
    path("jinja/", views.jinja_page),
    path("async/", views.async_books),
    path("stream/", views.stream),
    path("async-stream/", views.async_stream),
    path("download/", views.file_download),
    path("boom/", views.boom),
    path("boom/handled/", views.boom),
    path("shop/", include((shop, "shop"), namespace="shop")),
    path("exempt/", views.exempt_post),
    path("cache/<str:alias>/", views.cache_view),
    path("session/", views.session_view),
    path("atomic/", views.atomic_view),
    path("raw/", views.raw_view),
    path("pg/books.json", views.pg_books),
    path("api/count/", views.BookCountAPI.as_view()),
    path("request-id/", views.echo_request_id),
    path("outbound/", views.outbound),
    re_path(r"^legacy/(?P<slug>[a-z]+)/$", views.legacy),
    path("unhashable/", views.unhashable),
    path("shared/", views.shared_response),
    path("created/", views.created_with_enum),
    path("api/titles/", views.book_titles),
    path("api/names/", views.author_names),
    path("batch/", views.batch),
    path("similar/", views.similar_statements),
    path("weird-cache/", views.weird_cache),
    path("stream-stage/", views.stream_with_stage),
    path("big/", views.big_page),
    path("missing-holding/", views.not_found_holding),
    path("failing-stream-holding/", views.failing_stream_holding),
    path("api-use/", views.api_use),
    path("concurrent/<str:rid>/", views.concurrent),
    path("aconcurrent/<str:rid>/", views.aconcurrent),
    path("tasks/receipt/<int:order_id>/", views.enqueue_receipt),
    path("tasks/django/<int:order_id>/", views.enqueue_django_task),
    path("", include(router.urls)),
    path("__stagetrace__/", include("stagetrace.django.urls")),
]
