from django.apps import AppConfig


class ShopConfig(AppConfig):
    name = "benchmarks.overhead.djangoshop"
    label = "benchshop"
    default_auto_field = "django.db.models.BigAutoField"
