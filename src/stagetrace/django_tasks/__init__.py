"""Django's tasks framework (``django.tasks``, Django 6.0+; the ``django-tasks`` backport on
earlier versions).

::

    import stagetrace.django_tasks
    stagetrace.django_tasks.instrument()

``Task.enqueue`` / ``aenqueue`` is a ``task`` stage of the current timeline
(``enqueue shop.tasks.send_receipt``). A task's execution — reported by the framework's
``task_started`` / ``task_finished`` signals — is a ``job`` timeline of its own, or a nested
``task`` stage when it runs inline inside a live timeline, as the immediate backend does
inside a request. `uninstrument()` undoes it.
"""

from __future__ import annotations

from ._install import instrument, is_instrumented, uninstrument

__all__ = ["instrument", "is_instrumented", "uninstrument"]
