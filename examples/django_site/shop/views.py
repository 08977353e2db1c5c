import time

from django.db.models import Count
from django.http import JsonResponse, StreamingHttpResponse
from django.shortcuts import get_object_or_404, render

from .models import Author, Book


def book_list(request):
    """A template page with an include per row (select_related: one query)."""
    books = Book.objects.select_related("author")
    return render(request, "shop/book_list.html", {"books": books})


def author_detail(request, pk):
    author = get_object_or_404(Author.objects.annotate(n_books=Count("books")), pk=pk)
    return render(
        request, "shop/author_detail.html", {"author": author, "books": author.books.all()}
    )


def api_books(request):
    """The classic N+1: one query for the books, then one per book for its author."""
    data = [
        {"id": b.id, "title": b.title, "author": b.author.name, "price": str(b.price)}
        for b in Book.objects.all()
    ]
    return JsonResponse({"books": data})


def api_books_fast(request):
    """The N+1 fixed: the author comes with each book in the same query (select_related)."""
    data = [
        {"id": b.id, "title": b.title, "author": b.author.name, "price": str(b.price)}
        for b in Book.objects.select_related("author")
    ]
    return JsonResponse({"books": data})


def api_authors(request):
    """Each author with their books: one query for the authors and one for all their books
    (prefetch_related), not one per author."""
    data = [
        {"id": a.id, "name": a.name, "books": [b.title for b in a.books.all()]}
        for a in Author.objects.prefetch_related("books")
    ]
    return JsonResponse({"authors": data})


def api_book(request, pk):
    book = get_object_or_404(Book.objects.select_related("author"), pk=pk)
    return JsonResponse({"id": book.id, "title": book.title, "author": book.author.name})


def export_csv(request):
    """A streaming response: the timeline lasts until its last chunk is sent."""

    def rows():
        yield "title,author,year\n"
        for book in Book.objects.select_related("author").iterator(chunk_size=50):
            time.sleep(0.002)  # pretend each row takes some work
            yield f"{book.title},{book.author.name},{book.year}\n"

    return StreamingHttpResponse(rows(), content_type="text/csv")
