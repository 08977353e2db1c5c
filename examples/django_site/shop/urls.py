from django.urls import path

from . import views

urlpatterns = [
    path("books/", views.book_list, name="book-list"),
    path("authors/<int:pk>/", views.author_detail, name="author-detail"),
    path("api/books/", views.api_books, name="api-books"),
    path("api/books/fast/", views.api_books_fast, name="api-books-fast"),
    path("api/authors/", views.api_authors, name="api-authors"),
    path("api/books/<int:pk>/", views.api_book, name="api-book"),
    path("export.csv", views.export_csv, name="export"),
]
