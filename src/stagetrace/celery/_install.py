"""Celery: the enqueue as a stage of the request, each execution as a timeline of its own.

In the process that sends tasks (a web app):

* ``Task.apply_async`` (so ``delay`` too) and ``Celery.send_task`` are a ``task`` stage,
  ``apply_async orders.send_receipt`` / ``send_task orders.send_receipt``, covering
  serialization and the publish to the broker.
* Celery's ``before_task_publish`` signal puts the W3C trace context of that stage
  (``traceparent``, ``tracestate``) in the message headers, with the request id and the
  moment of publishing.

In the worker, Celery's ``task_prerun`` / ``task_postrun`` signals (which run in the thread
that executes the task) begin and end one timeline per execution: ``protocol: "job"``,
framework ``celery``, its root a ``task`` stage named after the task, in the trace of the
enqueue (same trace id; its parent span is the enqueue stage's span). ORM and SQL stages come
from the Django adapter when Django is set up in the worker, outbound HTTP from
`stagetrace.httpclients`. A retry is a new execution: its own timeline, linked to the
``apply_async`` stage the retry made inside the failed one.

Eager execution (``task_always_eager``, ``Task.apply``) runs inline: inside a live timeline
(a request) it is a nested ``task`` stage, not a timeline of its own.
"""

from __future__ import annotations

import datetime
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

from .. import _recorder, _runtime, httpclients
from .._http import headers as H
from .._http.gateway import adopt, attach, detach
from .._patching import Patcher, leave

patcher = Patcher("celery")
_lock = threading.RLock()

#: Owner of the enqueue stage, so that ``apply_async`` calling ``send_task`` is one stage.
_ENQUEUE = object()
#: Where the worker keeps a running task's record, on the task's request context.
_KEY = "_stagetrace_record"
#: The requests of the executions `_prerun` began and `_postrun` has not ended (weakly: Celery
#: drops a request when its task is over, whatever became of the signals). While one remains
#: after `uninstrument()`, the receivers that end an execution stay connected for it.
_in_flight: weakref.WeakSet[Any] = weakref.WeakSet()
#: Message headers stagetrace adds besides the W3C ones.
PUBLISHED = "stagetrace_published_ns"
REQUEST_ID = "stagetrace_request_id"

_names: dict[tuple[str, str], str] = {}


def _stage_name(verb: str, task: Any) -> str:
    key = (verb, str(task))
    name = _names.get(key)
    if name is None:
        name = f"{verb} {key[1]}"
        if len(_names) < 4096:
            _names[key] = name
    return name


# --- the sending side ------------------------------------------------------------------------


def _enqueue(verb: str, name_of: Callable[..., Any]) -> Callable[[Any], Any]:
    def make(orig: Callable[..., Any]) -> Callable[..., Any]:
        def enqueue(self: Any, *args: Any, **kwargs: Any) -> Any:
            if _recorder.current() is None or not patcher.applied:
                return orig(self, *args, **kwargs)
            try:
                rec = None
                if not _recorder.is_open_for(_ENQUEUE, "task"):
                    rec = _recorder.enter_owned(
                        "task", _stage_name(verb, name_of(self, args, kwargs)), _ENQUEUE
                    )
            except Exception as exc:
                _recorder.internal_error("celery.enqueue", exc)
                rec = None
            try:
                result = orig(self, *args, **kwargs)
            except BaseException as exc:
                leave("celery.enqueue", rec, exc)
                raise
            if rec is not None:
                try:
                    _recorder.set_attrs(rec, _result_attrs(result))
                except Exception as exc:
                    _recorder.internal_error("celery.enqueue", exc)
            leave("celery.enqueue", rec)
            return result

        return enqueue

    return make


def _task_name(task: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    return str(task.name)


def _sent_name(app: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    return str(args[0] if args else kwargs.get("name"))


def _result_attrs(result: Any) -> dict[str, Any]:
    task_id = getattr(result, "id", None)
    return {"messaging.message.id": task_id} if isinstance(task_id, str) else {}


def _set_elsewhere(value: Any, tl: Any) -> bool:
    """Whether a message's `traceparent` was set by someone else — the application, or
    OpenTelemetry's Celery instrumentation for its producer span (itself a child of the
    enqueue stage) — rather than inherited: a retry's message copies the headers of the
    execution retried, whose traceparent names that execution's own parent."""
    if not isinstance(value, str) or not value:
        return False
    parent = tl.parent_span_id
    return not (
        parent is not None
        and value[3:35] == f"{tl.trace_id:032x}"
        and value[36:52] == f"{parent:016x}"
    )


def _before_publish(
    sender: Any = None, headers: Any = None, routing_key: Any = None, **kwargs: Any
) -> None:
    """Carry the current stage's trace context (the enqueue stage) in the message, unless it
    carries one already (set by the application, or by OpenTelemetry's Celery instrumentation
    for its producer span, which the worker's spans then continue). Not from a discarded
    timeline: no sink receives its stages, so nothing may name them as a parent (the
    message goes as from an excluded path). The time it is sent goes with every message,
    whoever sends it (a script, a cron job): the worker's queue time."""
    if not patcher.applied or not isinstance(headers, dict):
        return
    try:
        headers[PUBLISHED] = time.time_ns()
        tl = _recorder.live()
        if tl is None or tl.discarded:
            return
        span = _recorder.current_span()
        if span is None:
            return
        if not _set_elsewhere(headers.get("traceparent"), tl):
            trace_id, span_id, flags = span
            headers["traceparent"] = f"00-{trace_id:032x}-{span_id:016x}-{flags:02x}"
            if tl.tracestate:
                headers["tracestate"] = tl.tracestate
        if tl.request_id:
            headers[REQUEST_ID] = tl.request_id
        if isinstance(routing_key, str) and routing_key:
            _recorder.set_attrs(
                _recorder.nearest_open("task", 2), {"messaging.destination.name": routing_key}
            )
    except Exception as exc:
        _recorder.internal_error("celery.publish", exc)


# --- the executing side ----------------------------------------------------------------------


def _header(request: Any, name: str) -> Any:
    value = getattr(request, name, None)
    if value is None:
        headers = getattr(request, "headers", None)
        if isinstance(headers, dict):
            value = headers.get(name)
    return value


def _job_attrs(task: Any, task_id: Any, request: Any) -> dict[str, Any]:
    attrs: dict[str, Any] = {"celery.task.name": str(task.name)}
    if isinstance(task_id, str):
        attrs["messaging.message.id"] = task_id
    retries = getattr(request, "retries", None)
    if isinstance(retries, int):
        attrs["celery.task.retries"] = retries
    delivery = getattr(request, "delivery_info", None)
    if isinstance(delivery, dict):
        key = delivery.get("routing_key")
        if isinstance(key, str) and key:
            attrs["messaging.destination.name"] = key
    hostname = getattr(request, "hostname", None)
    if isinstance(hostname, str):
        attrs["celery.worker.hostname"] = hostname
    published = _header(request, PUBLISHED)
    if isinstance(published, int) and published > 0:
        # A task sent with a countdown or an ETA is not due before it: it queues from then.
        due = max(published, _eta_ns(getattr(request, "eta", None)))
        attrs["stagetrace.queue_time_ns"] = max(0, time.time_ns() - due)
    return attrs


def _eta_ns(eta: Any) -> int:
    """A task's ETA (an ISO 8601 string in the message, or a datetime) in Unix nanoseconds; 0
    when there is none, or none that names its time zone."""
    try:
        if isinstance(eta, str):
            eta = datetime.datetime.fromisoformat(eta)
        if isinstance(eta, datetime.datetime) and eta.tzinfo is not None:
            return int(eta.timestamp() * 1e6) * 1000
    except (ValueError, OverflowError, OSError):
        pass
    return 0


def _prerun(sender: Any = None, task_id: Any = None, task: Any = None, **kwargs: Any) -> None:
    """A task starts in this thread: its own timeline, or a nested stage when it runs inline
    inside a live one (eager)."""
    if not patcher.applied or task is None:
        return
    with _lock:  # uninstrument() sees every execution begun before it returns
        if patcher.applied:
            _begin(task_id, task)


def _begin(task_id: Any, task: Any) -> None:
    """`_prerun`'s work, under the lock."""
    prev = _recorder.current()
    try:
        tl = _recorder.live()
        if tl is not None and tl.framework == "celery" and tl.protocol == "job":
            root = _recorder.root_of(tl)
            if not _running_here(root):
                # Its task is over but its end never reached us (no task_postrun): recording
                # this execution inside it would mix two executions' stages.
                _recorder.internal_error("celery.unended")
                _recorder.end(root)
                prev = _recorder.current()
                tl = _recorder.live()
        request = task.request
        attrs = _job_attrs(task, task_id, request)
        if tl is not None:
            attrs["celery.eager"] = True
            rec = _recorder.enter("task", str(task.name), attrs)
        else:
            cfg = _runtime.active()
            if not cfg.enabled:
                return
            parent = H.traceparent(_header(request, "traceparent"))
            if parent:
                # The link, readable in every sink (the timeline schema has no field for it).
                attrs["stagetrace.parent_span_id"] = f"{parent[1]:016x}"
            attrs["process.pid"] = os.getpid()
            attrs["thread.id"] = threading.get_ident()
            rid = _header(request, REQUEST_ID)
            rec = _recorder.begin(
                cfg,
                str(task.name),
                kind="task",
                framework="celery",
                protocol="job",
                attrs=attrs,
                request_id=H.request_id(rid) if rid else (task_id or None),
                trace_id=parent[0] if parent else None,
                parent_span_id=parent[1] if parent else None,
                trace_flags=parent[2] if parent else 1,
                tracestate=H.tracestate(_header(request, "tracestate")) if parent else None,
            )
        if rec is not None:
            # A job of its own: the OpenTelemetry context (with the otel sink) is the running
            # stage, as during a web request, so spans of OpenTelemetry's instrumentations
            # (redis, httpx, a tracer of your own) nest under the task's stages.
            tokens = None
            if _recorder.parent_of(rec) is None:
                if not _otel_celery_instrumented():
                    tokens = attach(rec, None)
                else:
                    # Its task span is current if its receiver ran first: that span is the
                    # job's entry and this timeline its child (else see _postrun).
                    _adopted(rec)
            setattr(request, _KEY, (rec, prev, tokens))
            _in_flight.add(request)
    except Exception as exc:
        _recorder.internal_error("celery.prerun", exc)
        _recorder.restore(prev)


def _running_here(root: Any) -> bool:
    """Whether `root` is the job timeline of a task still running in this thread: the record
    of a request on the request stack of a task on Celery's stack of the tasks running here
    (Celery pops both when a task is over, whether or not task_postrun was received). A task
    run inline inside another (eager) finds the outer one there."""
    from celery._state import _task_stack

    for running in _task_stack.stack:
        for request in getattr(getattr(running, "request_stack", None), "stack", ()):
            entry = getattr(request, _KEY, None)
            if entry is not None and entry[0] is root:
                return True
    return False


def _adopted(rec: Any) -> None:
    """Beside OpenTelemetry's Celery instrumentation: its task span, if current, becomes the
    job timeline's parent; the root's ``stagetrace.parent_span_id`` says so."""
    if adopt(rec):
        tl = _recorder.timeline_of(rec)
        if tl is not None and tl.parent_span_id:
            _recorder.set_attrs(rec, {"stagetrace.parent_span_id": f"{tl.parent_span_id:016x}"})


def _otel_celery_instrumented() -> bool:
    """Whether OpenTelemetry's Celery instrumentation runs in this process. It attaches its
    task span's context in ``task_prerun`` and detaches it in ``task_postrun``, as stagetrace
    would: Celery calls both signals' receivers in the same order, so two such pairs detach out
    of order and leave a stale context current in the worker thread. Its task span is then
    the one current during the task (in the same trace as the job's timeline)."""
    module = sys.modules.get("opentelemetry.instrumentation.celery")
    if module is None:
        return False
    try:
        return bool(module.CeleryInstrumentor().is_instrumented_by_opentelemetry)
    except Exception:
        return False


def _record_of(task: Any) -> Any:
    request = getattr(task, "request", None)
    entry = getattr(request, _KEY, None) if request is not None else None
    return entry[0] if entry is not None else None


# The receivers that end an execution act on the record `_prerun` left on the request, if any:
# they also end the executions in flight when `uninstrument()` ran (see `_in_flight`).
def _failure(sender: Any = None, exception: Any = None, **kwargs: Any) -> None:
    if not isinstance(exception, BaseException):
        return
    try:
        _recorder.set_error(_record_of(sender), exception)
    except Exception as exc:
        _recorder.internal_error("celery.failure", exc)


def _retry(sender: Any = None, reason: Any = None, **kwargs: Any) -> None:
    try:
        rec = _record_of(sender)
        if rec is not None:
            _recorder.set_attrs(rec, {"celery.task.retry_reason": str(reason)[:200]})
    except Exception as exc:
        _recorder.internal_error("celery.retry", exc)


def _postrun(sender: Any = None, task: Any = None, state: Any = None, **kwargs: Any) -> None:
    if task is None:
        return
    _end(task, state)
    if not patcher.applied:
        _release()


#: Task states that are no failure: a task that raised ``Ignore`` or ``Reject``, or was
#: revoked, ended without an error of its own.
_NOT_FAILED = frozenset(("SUCCESS", "RETRY", "IGNORED", "REJECTED", "REVOKED"))


def _end(task: Any, state: Any) -> None:
    prev: Any = _ENQUEUE  # a marker: nothing taken from the request yet
    try:
        request = task.request
        entry = getattr(request, _KEY, None)
        if entry is None:
            return
        rec, prev, tokens = entry
        delattr(request, _KEY)
        with _lock:
            _in_flight.discard(request)
        if tokens:
            detach(tokens)
        elif _recorder.parent_of(rec) is None and _otel_celery_instrumented():
            _adopted(rec)  # receivers run in the same order: its task span is still current
        if state not in _NOT_FAILED:
            # An eager task whose exception propagates (task_eager_propagates) sends no
            # task_failure; postrun runs while that exception is on its way out. (Any other
            # exception being handled here is the caller's: an eager task applied inside an
            # application's except block.)
            exc = sys.exc_info()[1]
            if exc is not None:
                _recorder.set_error(rec, exc)
                if not isinstance(state, str):
                    state = "FAILURE"
        if isinstance(state, str):
            _recorder.set_attrs(rec, {"celery.task.state": state})
        if _recorder.parent_of(rec) is None:
            _recorder.end(rec)
        else:
            _recorder.finish(rec)
    except Exception as exc:
        _recorder.internal_error("celery.postrun", exc)
        if prev is not _ENQUEUE:
            _recorder.restore(prev)  # whatever failed, the thread goes back to where it was


def _process_shutdown(**kwargs: Any) -> None:
    """A pool process exits (maybe without running exit handlers): deliver what it recorded."""
    try:
        _runtime.flush(timeout=5)
    except Exception as exc:
        _recorder.internal_error("celery.shutdown", exc)


# --- installation ----------------------------------------------------------------------------

_INSTRUMENTING = (
    ("before_task_publish", _before_publish),
    ("task_prerun", _prerun),
    ("worker_process_shutdown", _process_shutdown),
)
#: Connected until the executions in flight when `uninstrument()` ran have ended.
_ENDING = (
    ("task_failure", _failure),
    ("task_retry", _retry),
    ("task_postrun", _postrun),
)
_SIGNALS = _INSTRUMENTING + _ENDING


def instrument() -> None:
    """Instrument Celery, in the process that sends tasks and in the worker: the enqueue is a
    stage of the current timeline, each execution a linked timeline of its own. Idempotent;
    raises `stagetrace.ConfigurationError` when the configuration is bad."""
    with _lock:
        if patcher.applied:
            return
        _runtime.settings()
        import celery
        from celery import signals
        from celery.app import task as task_module

        patcher.start()
        try:
            patcher.wrap(task_module.Task, "apply_async", _enqueue("apply_async", _task_name))
            patcher.wrap(celery.Celery, "send_task", _enqueue("send_task", _sent_name))
            for name, receiver in _SIGNALS:
                getattr(signals, name).connect(
                    receiver, weak=False, dispatch_uid=f"stagetrace.{name}"
                )
        except Exception:
            patcher.undo()
            _disconnect(_SIGNALS)
            raise
        httpclients.install()


def _disconnect(receivers: tuple[tuple[str, Callable[..., None]], ...]) -> None:
    from celery import signals

    for name, receiver in receivers:
        getattr(signals, name).disconnect(receiver, dispatch_uid=f"stagetrace.{name}")


def _release() -> None:
    """After `uninstrument()`: disconnect the receivers that end an execution once no execution
    they were left connected for is in flight."""
    try:
        with _lock:
            if not patcher.applied and not _in_flight:
                _disconnect(_ENDING)
    except Exception as exc:
        _recorder.internal_error("celery.uninstrument", exc)


def uninstrument() -> None:
    """Undo `instrument()`: patches removed, signal receivers disconnected. Tasks already
    running are still ended when they finish (else their threads would stay inside timelines
    that never end): the receivers that end them go with the last of them."""
    with _lock:
        if not patcher.applied:
            return
        patcher.undo()
        _disconnect(_INSTRUMENTING)
        if not _in_flight:
            _disconnect(_ENDING)
        httpclients.uninstall()


def is_instrumented() -> bool:
    """Whether Celery is instrumented."""
    return patcher.applied
