"""The views the benchmark serves. Each is a pattern real apps are full of."""

from decimal import Decimal

from django.db import connection
from django.http import HttpResponse, JsonResponse, StreamingHttpResponse
from django.shortcuts import render

from .models import Brand, Product


def ping(request):
    """Trivial: no database, no template — the fixed cost of the stack."""
    return HttpResponse("ok", content_type="text/plain")


def api_products(request):
    """The classic N+1: one query for ten products, then one per product for its brand."""
    data = [
        {"id": p.id, "name": p.name, "brand": p.brand.name, "price": str(p.price)}
        for p in Product.objects.order_by("id")[:10]
    ]
    return JsonResponse({"products": data})


def products_page(request):
    """A template page: one query (select_related) for ten rows, a base template and one include."""
    products = Product.objects.select_related("brand").order_by("id")[:10]
    return render(request, "shop/products.html", {"products": products})


def export_csv(request):
    """A streaming response: one query, rows produced while the body is sent."""

    def rows():
        yield "id,name,brand,price\n"
        for p in Product.objects.select_related("brand").order_by("id")[:20].iterator():
            yield f"{p.id},{p.name},{p.brand.name},{p.price}\n"

    return StreamingHttpResponse(rows(), content_type="text/csv")


def scale(request, n):
    """`n` SQL queries in one request on a raw cursor: one ``db.query`` stage each, cheap
    enough that 10,000 of them take well under a second untraced."""
    found = 0
    with connection.cursor() as cursor:
        for i in range(n):
            cursor.execute("SELECT id, name FROM benchshop_brand WHERE id = %s", [i % 10 + 1])
            found += cursor.fetchone() is not None
    return HttpResponse(str(found), content_type="text/plain")


def seed():
    """Ten brands, two hundred products."""
    if Brand.objects.exists():
        return
    brands = Brand.objects.bulk_create(
        Brand(name=f"Brand {i}", country="NL" if i % 2 else "DE") for i in range(1, 11)
    )
    Product.objects.bulk_create(
        Product(
            name=f"Product {i}",
            brand=brands[i % 10],
            price=Decimal("9.50") + i,
            stock=i * 3 % 17,
            description="A fine product. " * 4,
        )
        for i in range(1, 201)
    )
