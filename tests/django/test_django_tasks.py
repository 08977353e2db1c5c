"""Django's tasks framework (the django-tasks backport on Django < 6.0), immediate backend:
the enqueue is a task stage, the execution nests inside it in a request, and is a job timeline
of its own outside one."""

from __future__ import annotations

import dataclasses
import importlib
import threading
from collections.abc import Iterator
from typing import Any

import pytest

try:
    import django.tasks  # noqa: F401
except ImportError:
    pytest.importorskip("django_tasks")

from django.test import Client, override_settings
from django.utils import timezone

import stagetrace
import stagetrace.django_tasks
from stagetrace.django_tasks._install import _framework

try:
    from django.tasks import task
except ImportError:
    from django_tasks import task

PATH = "tests.djapp.tasks.record_order"
FRAMEWORK = _framework().__name__
signals = importlib.import_module(FRAMEWORK + ".signals")
TaskResultStatus = importlib.import_module(FRAMEWORK + ".base").TaskResultStatus
ImmediateBackend = importlib.import_module(FRAMEWORK + ".backends.immediate").ImmediateBackend


class ReplacingBackend(ImmediateBackend):  # type: ignore[misc]
    """Runs tasks inline, updating the task result as the frozen dataclass it is declared as
    (`dataclasses.replace`, as a published thread-worker backend does): each signal gets a new
    object, with the same id."""

    def _execute_task(self, task_result: Any) -> None:
        task_result = dataclasses.replace(
            task_result, status=TaskResultStatus.RUNNING, started_at=timezone.now()
        )
        signals.task_started.send(type(self), task_result=task_result)
        task_result.task.call(*task_result.args, **task_result.kwargs)
        task_result = dataclasses.replace(
            task_result, status=TaskResultStatus.SUCCESSFUL, finished_at=timezone.now()
        )
        signals.task_finished.send(type(self), task_result=task_result)


class RenamingBackend(ReplacingBackend):
    """Reports the end with a task result of another id (one reloaded under a new key, say)."""

    def _execute_task(self, task_result: Any) -> None:
        signals.task_started.send(type(self), task_result=task_result)
        task_result.task.call(*task_result.args, **task_result.kwargs)
        task_result = dataclasses.replace(
            task_result, id=f"{task_result.id}-reloaded", status=TaskResultStatus.SUCCESSFUL
        )
        signals.task_finished.send(type(self), task_result=task_result)


#: Set by `wait_for_gate` once it runs; it returns when `GATE` is set.
RUNNING = threading.Event()
GATE = threading.Event()


@task()
def wait_for_gate() -> None:
    RUNNING.set()
    GATE.wait(10)


def _connected(signal: Any, uid: str) -> bool:
    return any(receiver[0][0] == uid for receiver in signal.receivers)


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


def test_a_task_result_replaced_between_the_signals_ends_its_own_execution(captured):
    """The task result that reports the end is another object than the one that reported the
    start: the execution is still found by the result's id, so each task is a job timeline of
    its own and the thread is outside any timeline between them (not left in the first, where
    the second's enqueue and execution would be recorded)."""
    from tests.djapp.tasks import record_order

    backend = f"{ReplacingBackend.__module__}.ReplacingBackend"
    with override_settings(TASKS={"default": {"BACKEND": backend}}):
        first = record_order.enqueue(11)
        assert stagetrace.current_timeline() is None
        second = record_order.enqueue(12)
        assert stagetrace.current_timeline() is None
    assert [tl.request_id for tl in captured] == [first.id, second.id]
    for tl in captured:
        assert [s.name for s in tl.stages if s.kind == "task"] == [PATH]
        assert tl.stages[0].attrs["django.task.status"] == "SUCCESSFUL"


def test_an_end_reported_under_another_id_ends_the_execution_open_here(captured):
    """No execution was begun for the id the end is reported with: the innermost execution
    open in this context is the one that ends, inline in a request as outside one."""
    from tests.djapp.tasks import record_order

    backend = f"{RenamingBackend.__module__}.RenamingBackend"
    with override_settings(TASKS={"default": {"BACKEND": backend}}):
        record_order.enqueue(14)
        assert stagetrace.current_timeline() is None
        with stagetrace.timeline("script"):
            record_order.enqueue(15)
            with stagetrace.stage("after"):
                pass
        assert stagetrace.current_timeline() is None
    job, script = captured
    assert [s.name for s in job.stages if s.kind == "task"] == [PATH]
    assert job.stages[0].attrs["django.task.status"] == "SUCCESSFUL"
    run = next(s for s in script.stages if s.name == PATH)
    assert run.attrs["django.task.status"] == "SUCCESSFUL" and "unfinished" not in run.attrs
    after = next(s for s in script.stages if s.name == "after")
    assert after.parent == 0 and after.start_ns >= run.start_ns + run.duration_ns


def test_uninstrument_while_a_task_runs_still_ends_its_timeline(captured):
    """uninstrument() while a task runs in another thread: that execution's timeline still ends
    when the task does, and is delivered; the receiver left connected for it goes with it; the
    next task that thread runs, after instrument() again, is a timeline of its own."""
    from tests.djapp.tasks import record_order

    RUNNING.clear()
    GATE.clear()
    first_done, again = threading.Event(), threading.Event()
    seen: list[Any] = []

    def worker() -> None:
        try:
            seen.append(wait_for_gate.enqueue().status.value)
            seen.append(stagetrace.current_timeline())
            first_done.set()
            again.wait(10)
            seen.append(record_order.enqueue(13).status.value)
            seen.append(stagetrace.current_timeline())
        finally:
            first_done.set()

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        assert RUNNING.wait(10)
        stagetrace.django_tasks.uninstrument()
        assert not _connected(signals.task_started, "stagetrace.task_started")
        assert _connected(signals.task_finished, "stagetrace.task_finished")
        GATE.set()
        assert first_done.wait(10)
        assert not _connected(signals.task_finished, "stagetrace.task_finished")
        stagetrace.django_tasks.instrument()
    finally:
        GATE.set()
        again.set()
        thread.join(10)
    assert seen == ["SUCCESSFUL", None, "SUCCESSFUL", None]
    first, second = captured
    assert first.stages[0].name == f"{__name__}.wait_for_gate"
    assert first.stages[0].attrs["django.task.status"] == "SUCCESSFUL"
    assert [s.name for s in first.stages if s.kind == "task"] == [first.stages[0].name]
    assert [s.name for s in second.stages if s.kind == "task"] == [PATH]


def test_instrument_is_idempotent_and_reversible():
    """Instrumenting twice connects once; uninstrument restores the Task class."""
    task_class = importlib.import_module(FRAMEWORK + ".base").Task
    stagetrace.django_tasks.uninstrument()
    before = dict(vars(task_class))
    stagetrace.django_tasks.instrument()
    stagetrace.django_tasks.instrument()
    assert dict(vars(task_class)) != before
    stagetrace.django_tasks.uninstrument()
    stagetrace.django_tasks.uninstrument()
    assert dict(vars(task_class)) == before
    assert not stagetrace.django_tasks.is_instrumented()
