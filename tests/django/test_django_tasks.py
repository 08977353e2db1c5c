"""Django's tasks framework (the django-tasks backport on Django < 6.0), immediate backend:
the enqueue is a task stage, the execution nests inside it in a request, and is a job timeline
of its own outside one."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

try:
    import django.tasks  # noqa: F401
except ImportError:
    pytest.importorskip("django_tasks")

from django.test import Client

import stagetrace
import stagetrace.django_tasks

PATH = "tests.djapp.tasks.record_order"


@pytest.fixture(autouse=True)
def instrumented() -> Iterator[None]:
    stagetrace.django_tasks.instrument()
    yield
    stagetrace.django_tasks.uninstrument()


def test_enqueued_in_a_view_the_execution_nests_in_the_enqueue(captured):
    """In a request: an `enqueue <task>` stage under the view, the immediate execution a task
    stage inside it, with the task's ORM stages inside that."""
    r = Client().get("/tasks/django/5/")
    assert r.json() == {"status": "SUCCESSFUL"}
    tl = captured[0]
    enqueue = next(s for s in tl.stages if s.name == f"enqueue {PATH}")
    assert enqueue.kind == "task" and tl.stages[enqueue.parent].kind == "view"
    run = next(s for s in tl.stages if s.name == PATH)
    assert run.kind == "task" and run.parent == enqueue.id
    assert run.attrs["django.task.status"] == "SUCCESSFUL"
    assert run.attrs["messaging.message.id"] == enqueue.attrs["messaging.message.id"]
    queries = [s for s in tl.stages if s.kind == "db.query"]
    assert len(queries) >= 3 and all(q.start_ns >= run.start_ns for q in queries)


def test_outside_a_request_the_execution_is_a_job_timeline(captured):
    """Enqueued from a script: the execution is its own job timeline with its stages; a
    failure is recorded on its root and the task result says FAILED, as without stagetrace."""
    from tests.djapp.tasks import record_order

    ok = record_order.enqueue(6)
    failed = record_order.enqueue(7, fail=True)
    assert (ok.status.value, failed.status.value) == ("SUCCESSFUL", "FAILED")
    first, second = captured
    assert (first.protocol, first.framework, first.stages[0].name) == ("job", "django", PATH)
    assert first.request_id == ok.id
    assert any(s.kind == "db.query" for s in first.stages)
    assert second.stages[0].error.type == "ValueError"
    assert second.stages[0].attrs["django.task.status"] == "FAILED"


def test_instrument_is_idempotent_and_reversible():
    """Instrumenting twice connects once; uninstrument restores the Task class."""
    import importlib

    from stagetrace.django_tasks._install import _framework

    task_class = importlib.import_module(_framework().__name__ + ".base").Task
    stagetrace.django_tasks.uninstrument()
    before = dict(vars(task_class))
    stagetrace.django_tasks.instrument()
    stagetrace.django_tasks.instrument()
    assert dict(vars(task_class)) != before
    stagetrace.django_tasks.uninstrument()
    stagetrace.django_tasks.uninstrument()
    assert dict(vars(task_class)) == before
    assert not stagetrace.django_tasks.is_instrumented()
