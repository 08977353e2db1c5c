from django.apps import AppConfig


class DjappConfig(AppConfig):
    name = "tests.djapp"
    label = "djapp"
