from decimal import Decimal

from django.core.management.base import BaseCommand

from shop.models import Author, Book

AUTHORS = [
    ("Ursula K. Le Guin", "US"),
    ("Stanisław Lem", "PL"),
    ("Octavia E. Butler", "US"),
    ("Italo Calvino", "IT"),
    ("Liu Cixin", "CN"),
]


class Command(BaseCommand):
    help = "Fill the bookshop with a few authors and books (idempotent)."

    def handle(self, *args, **options):
        if Book.objects.exists():
            return
        for i, (name, country) in enumerate(AUTHORS):
            author = Author.objects.create(name=name, country=country)
            for j in range(4):
                Book.objects.create(
                    title=f"{name.split()[-1]} volume {j + 1}",
                    author=author,
                    year=1960 + 5 * i + j,
                    price=Decimal("9.90") + j,
                )
        self.stdout.write(f"seeded {Author.objects.count()} authors, {Book.objects.count()} books")
