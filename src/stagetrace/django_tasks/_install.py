"""Django's tasks framework: the enqueue as a stage, the execution as a job (or nested stage).

The framework gives a backend no place to carry anything besides the task's own arguments,
and the backends it ships (immediate, dummy) run tasks in the enqueuing process or not at
all. So the execution joins the enqueue's trace by running inside it: the immediate backend
executes inline, within the ``enqueue`` stage. A backend that runs tasks in another process
would need to carry the trace context itself (see `stagetrace.celery` for how Celery does).
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
from typing import Any

from .. import _recorder, _runtime
from .._patching import Patcher, leave

patcher = Patcher("django tasks")
_lock = threading.RLock()
#: Executions in progress: id(record) -> (task result id, record, position before it). Found
#: again by the task result's id, never by the object: it is a frozen dataclass, and a backend
#: that updates it with `dataclasses.replace` reports the end with another object. While one
#: remains after `uninstrument()`, `_finished` stays connected to end it.
_running: dict[int, tuple[Any, Any, Any]] = {}
_module: list[Any] = []


def _framework() -> Any:
    """``django.tasks`` where Django has it, else the ``django_tasks`` backport."""
    for name in ("django.tasks", "django_tasks"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    raise ImportError(
        "stagetrace.django_tasks needs Django 6.0+ or the backport: pip install django-tasks"
    )


def _task_path(task: Any) -> str:
    return str(getattr(task, "module_path", None) or getattr(task, "name", task))


def _enqueue_name(task: Any) -> str:
    return f"enqueue {_task_path(task)}"


def _enqueue_attrs(result: Any) -> dict[str, Any]:
    attrs: dict[str, Any] = {}
    task_id = getattr(result, "id", None)
    if isinstance(task_id, str):
        attrs["messaging.message.id"] = task_id
    backend = getattr(result, "backend", None)
    if isinstance(backend, str):
        attrs["django.task.backend"] = backend
    return attrs


def _enqueue(orig: Any) -> Any:
    def enqueue(self: Any, *args: Any, **kwargs: Any) -> Any:
        if _recorder.current() is None or not patcher.applied:
            return orig(self, *args, **kwargs)
        try:
            rec = _recorder.enter("task", _enqueue_name(self))
        except Exception as exc:
            _recorder.internal_error("django_tasks.enqueue", exc)
            rec = None
        try:
            result = orig(self, *args, **kwargs)
        except BaseException as exc:
            leave("django_tasks.enqueue", rec, exc)
            raise
        if rec is not None:
            try:
                _recorder.set_attrs(rec, _enqueue_attrs(result))
            except Exception as exc:
                _recorder.internal_error("django_tasks.enqueue", exc)
        leave("django_tasks.enqueue", rec)
        return result

    return enqueue


def _aenqueue(orig: Any) -> Any:
    async def aenqueue(self: Any, *args: Any, **kwargs: Any) -> Any:
        if _recorder.current() is None or not patcher.applied:
            return await orig(self, *args, **kwargs)
        try:
            rec = _recorder.enter("task", _enqueue_name(self))
        except Exception as exc:
            _recorder.internal_error("django_tasks.enqueue", exc)
            rec = None
        try:
            result = await orig(self, *args, **kwargs)
        except BaseException as exc:
            leave("django_tasks.enqueue", rec, exc)
            raise
        if rec is not None:
            try:
                _recorder.set_attrs(rec, _enqueue_attrs(result))
            except Exception as exc:
                _recorder.internal_error("django_tasks.enqueue", exc)
        leave("django_tasks.enqueue", rec)
        return result

    return aenqueue


def _started(sender: Any = None, task_result: Any = None, **kwargs: Any) -> None:
    if not patcher.applied or task_result is None:
        return
    with _lock:  # uninstrument() sees every execution begun before it returns
        if patcher.applied:
            _begin(task_result)


def _begin(task_result: Any) -> None:
    """An execution starts in this context: a job timeline of its own, or a nested stage when
    it runs inline inside a live timeline (the immediate backend, in a request or a task)."""
    prev = _recorder.current()
    try:
        name = _task_path(task_result.task)
        attrs = _enqueue_attrs(task_result)
        if _recorder.live() is not None:
            rec = _recorder.enter("task", name, attrs)
        else:
            cfg = _runtime.active()
            if not cfg.enabled:
                return
            attrs["process.pid"] = os.getpid()
            attrs["thread.id"] = threading.get_ident()
            rec = _recorder.begin(
                cfg,
                name,
                kind="task",
                framework="django",
                protocol="job",
                attrs=attrs,
                request_id=getattr(task_result, "id", None),
            )
        if rec is not None:
            _running[id(rec)] = (getattr(task_result, "id", None), rec, prev)
    except Exception as exc:
        _recorder.internal_error("django_tasks.started", exc)
        _recorder.restore(prev)


#: How far up from the current stage `_claim` looks for an open execution.
_MAX_DEPTH = 64


def _claim(task_result: Any) -> tuple[Any, Any, Any] | None:
    """Take the execution whose end `task_result` reports out of `_running`: the one begun for
    its id; if several are (a task run inline inside itself) or none (a backend that reports
    the end with another id), the innermost execution open in this context."""
    task_id = getattr(task_result, "id", None)
    same = [k for k, entry in _running.items() if entry[0] == task_id] if task_id else []
    if len(same) == 1:
        return _running.pop(same[0])
    keys = set(same or _running)
    rec = _recorder.current()
    for _ in range(_MAX_DEPTH):
        if rec is None:
            break
        if id(rec) in keys:
            return _running.pop(id(rec))
        rec = _recorder.parent_of(rec)
    return _running.pop(same[-1]) if same else None


def _finished(sender: Any = None, task_result: Any = None, **kwargs: Any) -> None:
    if task_result is None:
        return
    with _lock:
        try:
            entry = _claim(task_result)
        except Exception as e:
            _recorder.internal_error("django_tasks.finished", e)
            entry = None
        if not patcher.applied and not _running:
            _disconnect_finished()  # the last execution uninstrument() left it connected for
    if entry is None:
        return
    _task_id, rec, prev = entry
    try:
        status = str(getattr(getattr(task_result, "status", None), "value", "") or "")
        if status:
            _recorder.set_attrs(rec, {"django.task.status": status})
        # A failed task is reported from inside the backend's `except` block.
        exc = sys.exc_info()[1] if status == "FAILED" else None
        if _recorder.parent_of(rec) is None:
            _recorder.end(rec, exc)
        else:
            _recorder.finish(rec, exc)
    except Exception as e:
        _recorder.internal_error("django_tasks.finished", e)
        _recorder.restore(prev)


def instrument() -> None:
    """Instrument Django's tasks framework. Idempotent; raises ImportError when neither
    ``django.tasks`` nor the ``django-tasks`` backport is installed, and
    `stagetrace.ConfigurationError` when the configuration is bad."""
    with _lock:
        if patcher.applied:
            return
        _runtime.settings()
        module = _framework()
        from importlib import import_module

        signals = import_module(module.__name__ + ".signals")
        task_class = import_module(module.__name__ + ".base").Task
        patcher.start()
        patcher.wrap(task_class, "enqueue", _enqueue)
        if hasattr(task_class, "aenqueue"):
            patcher.wrap(task_class, "aenqueue", _aenqueue)
        signals.task_started.connect(_started, dispatch_uid="stagetrace.task_started")
        signals.task_finished.connect(_finished, dispatch_uid="stagetrace.task_finished")
        _module[:] = [signals]


def uninstrument() -> None:
    """Undo `instrument()`. Executions already running are still ended when they finish (else
    their threads would stay inside timelines that never end): ``task_finished``'s receiver
    goes with the last of them."""
    with _lock:
        if not patcher.applied:
            return
        patcher.undo()
        for signals in _module:
            signals.task_started.disconnect(_started, dispatch_uid="stagetrace.task_started")
        if not _running:
            _disconnect_finished()


def _disconnect_finished() -> None:
    for signals in _module:
        signals.task_finished.disconnect(_finished, dispatch_uid="stagetrace.task_finished")
    _module.clear()


def is_instrumented() -> bool:
    """Whether Django's tasks framework is instrumented."""
    return patcher.applied
