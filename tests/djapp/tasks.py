"""Tasks for Django's tasks framework (``django.tasks`` on Django 6.0+, else the
``django-tasks`` backport), enqueued by the ``tasks/django/`` view."""

try:
    from django.tasks import task
except ImportError:
    from django_tasks import task

from .models import Author


@task()
def record_order(order_id: int, fail: bool = False) -> int:
    """Write and count through the ORM; fail when asked."""
    Author.objects.create(name=f"order {order_id}")
    count = Author.objects.filter(name__startswith="order ").count()
    Author.objects.filter(name__startswith="order ").delete()
    if fail:
        raise ValueError(f"order {order_id} failed")
    return count
