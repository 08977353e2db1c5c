"""The Celery adapter end to end: a Django view enqueues a task on the Redis broker, a real
Celery worker process runs it, and both processes' timelines reach one JSON lines file,
linked through the W3C trace context carried in the message."""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("celery")
pytest.importorskip("redis")

from django.test import Client

import stagetrace
import stagetrace.celery
from stagetrace import _recorder
from tests.servers import ROOT, read_timelines

from ..conftest import begin, need_service

DB = 14  # a Redis database of its own (the cache tests use 15); keys under a private prefix


class _Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def http_target() -> Iterator[str]:
    """A loopback HTTP server for the task's outbound call."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/ping"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def broker() -> Iterator[dict[str, str]]:
    """A private Redis database and key prefix and queue for this run; every key under the
    prefix is deleted afterwards."""
    need_service("Redis", "127.0.0.1", 6379)
    import redis

    run = uuid.uuid4().hex[:12]
    env = {
        "STAGETRACE_TEST_BROKER": f"redis://127.0.0.1:6379/{DB}",
        "STAGETRACE_TEST_PREFIX": f"stagetrace-test-{run}:",
        "STAGETRACE_TEST_QUEUE": f"stagetrace-test-{run}",
    }
    yield env
    client = redis.Redis(host="127.0.0.1", port=6379, db=DB)
    keys = list(client.scan_iter(match=env["STAGETRACE_TEST_PREFIX"] + "*"))
    keys += list(client.scan_iter(match="*" + env["STAGETRACE_TEST_QUEUE"] + "*"))
    if keys:
        client.delete(*keys)
    client.close()


def _start_worker(broker: dict[str, str], tmp: Path, **extra_env: str) -> Iterator[Path]:
    """A real Celery worker (prefork pool, one child) running tests/celeryapp.py with Django
    set up on a SQLite file; its timelines go to the returned JSON lines file."""
    out = tmp / "timelines.jsonl"
    db = tmp / "worker.sqlite3"
    env = {
        **os.environ,
        **broker,
        "DJANGO_SETTINGS_MODULE": "tests.djapp.worker_settings",
        "STAGETRACE_TEST_DB": str(db),
        "STAGETRACE_TEST_WORKER": "1",
        "STAGETRACE_JSONL": str(out),
        **extra_env,
    }
    subprocess.run(
        [sys.executable, "-m", "django", "migrate", "-v", "0"], env=env, cwd=ROOT, check=True
    )
    log = tmp / "worker.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "tests.celeryapp",
                "worker",
                "--pool=prefork",
                "--concurrency=1",
                "--without-gossip",
                "--without-mingle",
                "--without-heartbeat",
                "-Q",
                broker["STAGETRACE_TEST_QUEUE"],
                "--loglevel=INFO",
            ],
            env=env,
            cwd=ROOT,
            stdout=f,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while "ready." not in log.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the Celery worker did not start:\n{log.read_text()}")
            time.sleep(0.1)
        yield out
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@pytest.fixture(scope="module")
def worker(broker, tmp_path_factory) -> Iterator[Path]:
    """The worker, recording into JSON lines only."""
    yield from _start_worker(broker, tmp_path_factory.mktemp("celery"))


@pytest.fixture
def celery_app(broker) -> Iterator[object]:
    """The test process's side: tests/celeryapp.py's app on the private broker, instrumented."""
    from tests import celeryapp

    celeryapp.app.conf.update(
        broker_url=broker["STAGETRACE_TEST_BROKER"],
        broker_transport_options={"global_keyprefix": broker["STAGETRACE_TEST_PREFIX"]},
        task_default_queue=broker["STAGETRACE_TEST_QUEUE"],
    )
    stagetrace.celery.instrument()
    yield celeryapp.app
    stagetrace.celery.uninstrument()
    celeryapp.app.conf.task_always_eager = False
    from tests.djapp.models import Author

    Author.objects.filter(name__startswith="receipt ").delete()  # eager runs wrote here


def _stage(tl: dict, kind: str, name: str | None = None) -> dict:
    found = [s for s in tl["stages"] if s["kind"] == kind and (name is None or s["name"] == name)]
    assert len(found) == 1, (kind, name, [(s["kind"], s["name"]) for s in tl["stages"]])
    return found[0]


def _jobs(path: Path, count: int) -> list[dict]:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if path.exists():
            found = read_timelines(path, 1)
            jobs = [t for t in found if t["protocol"] == "job"]
            if len(jobs) >= count:
                return jobs
        time.sleep(0.1)
    raise AssertionError(f"expected {count} job timelines in {path}")


def test_a_task_enqueued_by_a_view_runs_as_a_linked_timeline(worker, celery_app, http_target):
    """The view's timeline has an `apply_async orders.send_receipt` task stage; the worker's
    execution is a job timeline in the same trace whose parent span is that stage, with the
    ORM, SQL and outbound HTTP stages of the task, and the time it waited in the queue."""
    stagetrace.configure(jsonl=str(worker))
    r = Client().get(f"/tasks/receipt/7/?url={http_target}", HTTP_X_REQUEST_ID="order-7")
    assert r.status_code == 200
    task_id = r.json()["task_id"]
    stagetrace.flush()
    web = next(t for t in read_timelines(worker, 1) if t["path"] == "/tasks/receipt/7/")
    enqueue = _stage(web, "task", "apply_async orders.send_receipt")
    assert enqueue["parent"] == _stage(web, "view")["id"]
    assert enqueue["attrs"]["messaging.message.id"] == task_id
    assert enqueue["attrs"]["messaging.destination.name"] == celery_app.conf.task_default_queue

    jobs = [
        j for j in _jobs(worker, 1) if j["stages"][0]["attrs"]["messaging.message.id"] == task_id
    ]
    job = jobs[0]
    assert (job["protocol"], job["framework"], job["method"], job["path"]) == (
        "job",
        "celery",
        None,
        None,
    )
    root = job["stages"][0]
    assert (root["kind"], root["name"]) == ("task", "orders.send_receipt")
    assert job["trace_id"] == web["trace_id"]
    enqueue_span = stagetrace.Timeline.from_dict(web).stage_span_id(enqueue["id"])
    assert root["attrs"]["stagetrace.parent_span_id"] == enqueue_span
    assert job["request_id"] == "order-7"
    attrs = root["attrs"]
    assert attrs["celery.task.state"] == "SUCCESS" and attrs["celery.task.retries"] == 0
    assert attrs["process.pid"] != os.getpid()
    assert 0 <= attrs["stagetrace.queue_time_ns"] < 60_000_000_000
    kinds = {s["kind"] for s in job["stages"]}
    assert {"db.connect", "db.query", "orm.compile", "http.client"} <= kinds, kinds
    insert = next(
        s for s in job["stages"] if s["kind"] == "db.query" and s["name"].startswith("INSERT")
    )
    assert "receipt" not in str(insert["attrs"])  # parameter values are never recorded
    call = _stage(job, "http.client")
    assert call["attrs"]["http.response.status_code"] == 204
    assert all("unfinished" not in s["attrs"] for s in job["stages"])


def _executions(path: Path, task_id: str, count: int) -> list[dict[str, Any]]:
    """The job timelines of the executions of task `task_id` in the worker's file, once there
    are `count` of them (or 30 s passed: what there is)."""
    deadline = time.monotonic() + 30
    while True:
        mine = [
            j
            for j in _jobs(path, 1)
            if j["stages"][0]["attrs"].get("messaging.message.id") == task_id
        ]
        if len(mine) >= count or time.monotonic() > deadline:
            return mine
        time.sleep(0.1)


def test_a_retry_is_a_new_execution_linked_to_the_retry(worker, celery_app):
    """A task that fails once and retries: the first execution (state RETRY, its error) has
    an apply_async stage of its own; the second execution's parent span is that stage."""
    stagetrace.configure(jsonl=str(worker))
    task_id = Client().get("/tasks/receipt/8/?fail=1").json()["task_id"]
    stagetrace.flush()
    mine = _executions(worker, task_id, 2)
    first, second = sorted(mine, key=lambda j: j["stages"][0]["attrs"]["celery.task.retries"])
    assert first["stages"][0]["attrs"]["celery.task.state"] == "RETRY"
    assert "attempt 0 failed" in first["stages"][0]["attrs"]["celery.task.retry_reason"]
    retry = _stage(first, "task", "apply_async orders.send_receipt")
    assert second["stages"][0]["attrs"]["celery.task.state"] == "SUCCESS"
    assert second["trace_id"] == first["trace_id"]
    retry_span = stagetrace.Timeline.from_dict(first).stage_span_id(retry["id"])
    assert second["stages"][0]["attrs"]["stagetrace.parent_span_id"] == retry_span


def test_the_queue_time_of_a_task_with_a_countdown_starts_at_its_eta(worker, celery_app):
    """A task sent with ``countdown=`` (or ``eta=``) is not due before that moment: its queue
    time is from then to its start, not from the publish (an idle worker reported the whole
    countdown as time waiting in the queue, 1993 ms for ``countdown=2``)."""
    from tests.celeryapp import send_receipt

    stagetrace.configure(jsonl=str(worker))
    with stagetrace.timeline("enqueue"):
        task_id = send_receipt.apply_async((11,), countdown=1.5).id
    stagetrace.flush()
    mine = _executions(worker, task_id, 1)
    (job,) = mine
    enqueued = next(
        t
        for t in read_timelines(worker, 1)
        if t["protocol"] == "job" and t["stages"][0]["name"] == "enqueue"
    )
    assert job["start_unix_nano"] - enqueued["start_unix_nano"] >= 1_500_000_000  # it waited
    assert 0 <= job["stages"][0]["attrs"]["stagetrace.queue_time_ns"] < 1_000_000_000


def test_a_task_sent_outside_any_timeline_has_its_queue_time(worker, celery_app):
    """A task sent from a script, a cron job or a shell — no timeline recording — waits in the
    queue like any other: the worker's timeline says how long. The send time travelled only
    with tasks sent inside a timeline, so these executions had no queue time at all."""
    from tests.celeryapp import send_receipt

    stagetrace.configure(jsonl=str(worker))
    assert _recorder.current() is None
    task_id = send_receipt.apply_async((12,)).id
    mine = _executions(worker, task_id, 1)
    (job,) = mine
    attrs = job["stages"][0]["attrs"]
    assert attrs["celery.task.state"] == "SUCCESS"
    assert 0 <= attrs["stagetrace.queue_time_ns"] < 60_000_000_000
    assert "stagetrace.parent_span_id" not in attrs  # no parent: it was sent from no stage


def test_eager_tasks_run_as_a_nested_stage_of_the_request(celery_app, captured):
    """task_always_eager: the task runs inline, as a task stage nested in the enqueue stage,
    with its ORM stages inside; no timeline of its own."""
    celery_app.conf.task_always_eager = True
    r = Client().get("/tasks/receipt/9/")
    assert r.status_code == 200
    assert len(captured) == 1
    tl = captured[0]
    enqueue = next(s for s in tl.stages if s.name == "apply_async orders.send_receipt")
    run = next(s for s in tl.stages if s.name == "orders.send_receipt")
    assert run.kind == "task" and run.parent == enqueue.id
    assert run.attrs["celery.eager"] is True and run.attrs["celery.task.state"] == "SUCCESS"
    queries = [s for s in tl.stages if s.kind == "db.query"]
    assert queries and all(_descends(tl, q, run) for q in queries)


def test_a_failing_eager_task_records_its_error(celery_app, captured):
    """Outside a request an eager task is a job timeline of its own; its exception is
    recorded on the root and reaches the caller unchanged."""
    from tests.celeryapp import send_receipt

    celery_app.conf.task_always_eager = True
    celery_app.conf.task_eager_propagates = True
    try:
        with pytest.raises(RuntimeError, match="attempt"):
            send_receipt.apply(args=(10,), kwargs={"fail_times": 5}, retries=3, throw=True)
    finally:
        celery_app.conf.task_eager_propagates = False
    job = captured[-1]
    assert job.protocol == "job" and job.framework == "celery"
    assert job.stages[0].error is not None


def test_instrument_is_idempotent_and_reversible():
    """Patches and signal receivers come and go exactly once."""
    import celery
    from celery import signals
    from celery.app import task as task_module

    before = (
        dict(vars(task_module.Task)),
        dict(vars(celery.Celery)),
        len(signals.task_prerun.receivers),
    )
    stagetrace.celery.instrument()
    stagetrace.celery.instrument()
    assert len(signals.task_prerun.receivers) == before[2] + 1
    stagetrace.celery.uninstrument()
    stagetrace.celery.uninstrument()
    after = (
        dict(vars(task_module.Task)),
        dict(vars(celery.Celery)),
        len(signals.task_prerun.receivers),
    )
    assert after == before


@pytest.fixture
def inline_app() -> Iterator[Any]:
    """A Celery app of its own on kombu's in-memory transport, instrumented. Its tasks run with
    `Task.apply`: Celery's own tracer and signals, in the test's threads."""
    from celery import Celery

    app = Celery("stagetrace_inline", broker="memory://", set_as_current=False)
    stagetrace.celery.instrument()
    yield app
    stagetrace.celery.uninstrument()


def _connected(signal: Any, name: str) -> bool:
    return any(key[0] == f"stagetrace.{name}" for key, _ in signal.receivers)


def test_a_discarded_timeline_sends_no_trace_context(inline_app, captured):
    """A task enqueued from a timeline left out with `stagetrace.discard()` carries neither
    trace context nor request id, as from an excluded path: nothing may point at stages no
    sink ever receives (the worker's job, and OpenTelemetry spans under it, would hang from
    them). Only the time it was sent, as every message does, for the worker's queue time."""
    from celery.signals import before_task_publish

    from stagetrace.celery._install import PUBLISHED, REQUEST_ID

    @inline_app.task(name="inline.noop")
    def noop() -> None:
        pass

    sent: list[dict[str, Any]] = []

    def seen(headers: Any = None, **kwargs: Any) -> None:
        sent.append(dict(headers))  # connected after stagetrace's: what it added

    before_task_publish.connect(seen, weak=False)
    try:
        for name in ("kept", "dropped"):
            root = begin(name, request_id=f"{name}-1", tracestate="vendor=1")
            if name == "dropped":
                stagetrace.discard()
            noop.delay()
            _recorder.end(root)
    finally:
        before_task_publish.disconnect(seen)
    kept, dropped = sent
    assert {"traceparent", "tracestate", REQUEST_ID, PUBLISHED} <= set(kept)
    assert not {"traceparent", "tracestate", REQUEST_ID} & set(dropped), dropped
    assert PUBLISHED in dropped
    assert [tl.stages[0].name for tl in captured] == ["kept"]


def test_a_traceparent_already_in_the_message_is_kept(inline_app, captured):
    """A message that carries a ``traceparent`` already (the application's, or the one
    OpenTelemetry's Celery instrumentation injects for its producer span when its receiver
    runs first) keeps it: overwriting it would leave that span without the worker's spans
    under it. stagetrace's own headers (request id, publish time) are still added."""
    from celery.signals import before_task_publish

    from stagetrace.celery._install import REQUEST_ID

    @inline_app.task(name="inline.noop2")
    def noop() -> None:
        pass

    theirs = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    sent: list[dict[str, Any]] = []

    def seen(headers: Any = None, **kwargs: Any) -> None:
        sent.append(dict(headers))

    before_task_publish.connect(seen, weak=False)
    try:
        root = begin("enqueue", request_id="r-1")
        noop.apply_async(headers={"traceparent": theirs})
        noop.apply_async()
        _recorder.end(root)
    finally:
        before_task_publish.disconnect(seen)
    kept, ours = sent
    assert kept["traceparent"] == theirs and kept[REQUEST_ID] == "r-1"
    assert ours["traceparent"] != theirs and ours["traceparent"].startswith("00-")


def test_uninstrument_while_a_task_runs_still_ends_its_timeline(inline_app, captured):
    """uninstrument() while a task runs in another thread: its job timeline still ends when
    the task does, and is delivered; the receivers left connected for it go with it; the next
    task that thread runs, after instrument() again, is a timeline of its own."""
    from celery import signals

    running, gate = threading.Event(), threading.Event()

    @inline_app.task(name="inline.first")
    def first() -> None:
        running.set()
        gate.wait(10)
        with stagetrace.stage("first's work"):
            pass

    @inline_app.task(name="inline.second")
    def second() -> None:
        with stagetrace.stage("second's work"):
            pass

    first_done, again = threading.Event(), threading.Event()
    seen: list[Any] = []

    def worker() -> None:
        try:
            seen.append(first.apply().state)
            seen.append(stagetrace.current_timeline())
            first_done.set()
            again.wait(10)
            seen.append(second.apply().state)
            seen.append(stagetrace.current_timeline())
        finally:
            first_done.set()

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        assert running.wait(10)
        stagetrace.celery.uninstrument()
        assert not _connected(signals.task_prerun, "task_prerun")
        assert _connected(signals.task_postrun, "task_postrun")
        gate.set()
        assert first_done.wait(10)
        assert not _connected(signals.task_postrun, "task_postrun")
        assert not _connected(signals.task_failure, "task_failure")
        stagetrace.celery.instrument()
    finally:
        gate.set()
        again.set()
        thread.join(10)
    assert seen == ["SUCCESS", None, "SUCCESS", None]
    assert [[s.name for s in tl.stages] for tl in captured] == [
        ["inline.first", "first's work"],
        ["inline.second", "second's work"],
    ]
    assert captured[0].stages[0].attrs["celery.task.state"] == "SUCCESS"


def test_a_job_whose_end_never_came_is_ended_not_extended(inline_app, captured):
    """A task whose task_postrun never reached stagetrace (its receiver disconnected by
    someone else) leaves its thread inside its job timeline: the next task there ends that
    timeline — delivered, counted as an internal error — instead of recording into it."""
    from celery import signals

    from stagetrace.celery._install import _postrun

    @inline_app.task(name="inline.lost")
    def lost() -> None:
        pass

    @inline_app.task(name="inline.next")
    def next_one() -> None:
        with stagetrace.stage("next's work"):
            pass

    signals.task_postrun.disconnect(dispatch_uid="stagetrace.task_postrun")
    try:
        lost.apply()
    finally:
        signals.task_postrun.connect(_postrun, weak=False, dispatch_uid="stagetrace.task_postrun")
    assert stagetrace.current_timeline() is not None  # what the missing signal leaves behind
    next_one.apply()
    assert stagetrace.current_timeline() is None
    assert [[s.name for s in tl.stages] for tl in captured] == [
        ["inline.lost"],
        ["inline.next", "next's work"],
    ]
    assert captured[0].stages[0].attrs["stagetrace.internal_errors"] == 1
    assert stagetrace.stats()["internal_errors_by_site"] == {"celery.unended": 1}


def test_a_task_applied_inside_a_running_task_nests_in_its_job(inline_app, captured):
    """Outside a request, a task that runs another inline (`apply`, itself included) is one
    job timeline: the inner executions are nested task stages, not mistaken for a job left
    behind."""

    @inline_app.task(name="inline.inner")
    def inner() -> None:
        with stagetrace.stage("inner's work"):
            pass

    @inline_app.task(name="inline.outer", bind=True)
    def outer(self: Any, depth: int) -> None:
        inner.apply()
        if depth:
            self.apply(args=(depth - 1,))

    outer.apply(args=(1,))
    (job,) = captured
    names = [s.name for s in job.stages]
    assert names == [
        "inline.outer",
        "inline.inner",
        "inner's work",
        "inline.outer",
        "inline.inner",
        "inner's work",
    ]
    assert [s.parent for s in job.stages] == [None, 0, 1, 0, 3, 4]
    assert all(s.attrs["celery.eager"] is True for s in job.stages[1:] if s.kind == "task")
    assert stagetrace.current_timeline() is None


@pytest.mark.parametrize(("raised", "state"), [("Ignore", "IGNORED"), ("Reject", "REJECTED")])
def test_a_task_ending_without_failure_keeps_no_error_of_its_caller(
    inline_app, captured, raised, state
):
    """A task applied inline inside the application's own ``except`` block that ends with
    ``Ignore`` or ``Reject`` (IGNORED, REJECTED: no failure) has no error: the exception the
    caller is handling is not the task's (it was recorded as the job's error)."""
    from celery import exceptions

    @inline_app.task(name=f"inline.{raised.lower()}")
    def ends() -> None:
        raise getattr(exceptions, raised)()

    try:
        raise KeyError("the caller's own, being handled")
    except KeyError:
        ends.apply()
    (job,) = captured
    assert job.stages[0].error is None
    assert job.stages[0].attrs["celery.task.state"] == state


def _descends(tl, stage, ancestor) -> bool:
    by_id = {s.id: s for s in tl.stages}
    while stage.parent is not None:
        if stage.parent == ancestor.id:
            return True
        stage = by_id[stage.parent]
    return False


def _exporting_worker(
    broker: dict[str, str], tmp: Path, name: str, **extra_env: str
) -> tuple[str, Iterator[Path]]:
    """A worker of its own (on a queue of its own: the module's worker listens on the first)
    exporting with the otel sink to a collector that is not there (a closed port: the export
    fails quietly) besides the JSON lines file; its queue and the worker's generator."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    queue = f"{broker['STAGETRACE_TEST_QUEUE']}-{name}"
    worker = _start_worker(
        {**broker, "STAGETRACE_TEST_QUEUE": queue},
        tmp,
        STAGETRACE_SINKS="jsonl,otel",
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{port}",
        OTEL_EXPORTER_OTLP_TIMEOUT="1000",
        **extra_env,
    )
    return queue, worker


def test_with_the_otel_sink_a_task_runs_in_its_stages_opentelemetry_context(
    broker, celery_app, tmp_path
):
    """A worker exporting with the otel sink (to a collector that is not there: the export
    fails quietly) makes the running task stage OpenTelemetry's current span, in the trace of
    the enqueue — so spans of OpenTelemetry's own instrumentations in a task nest under it, as
    they do in a web request. The task reports what it saw as attributes of its stage."""
    from tests import celeryapp

    queue, jobs_file = _exporting_worker(broker, tmp_path, "otel")
    out = next(jobs_file)
    try:
        stagetrace.configure(sinks=[])
        with stagetrace.capture() as got, stagetrace.timeline("enqueue"):
            celeryapp.otel_probe.apply_async(queue=queue)
        stagetrace.flush()
        (job,) = _jobs(out, 1)
    finally:
        jobs_file.close()
    attrs = job["stages"][0]["attrs"]
    assert attrs["probe.valid"] is True
    assert attrs["probe.trace_id"] == job["trace_id"] == got[0].trace_id
    assert attrs["probe.span_id"] == job["span_id"]


def test_beside_opentelemetrys_celery_instrumentation_no_context_is_left_behind(
    broker, celery_app, tmp_path
):
    """With OpenTelemetry's Celery instrumentation also in the worker, its task span is the
    current span during the task (in the job's trace) and the job timeline's parent (stagetrace
    instruments first in this worker, so it adopts that span when the task ends), and once a
    task is over no context is left current in the worker thread. (stagetrace attaching its
    own too would detach out of order — Celery runs both signals' receivers in the same order
    — and leave one behind.)"""
    pytest.importorskip("opentelemetry.instrumentation.celery")
    from tests import celeryapp

    after = tmp_path / "after.jsonl"
    queue, jobs_file = _exporting_worker(
        broker,
        tmp_path,
        "otelcelery",
        STAGETRACE_TEST_OTEL_CELERY="1",
        STAGETRACE_TEST_AFTER_TASK=str(after),
    )
    out = next(jobs_file)
    try:
        stagetrace.configure(sinks=[])
        for _ in range(2):
            with stagetrace.timeline("enqueue"):
                celeryapp.otel_probe.apply_async(queue=queue)
        jobs = _jobs(out, 2)
    finally:
        jobs_file.close()
    for job in jobs:
        attrs = job["stages"][0]["attrs"]
        assert attrs["probe.valid"] is True
        assert attrs["probe.trace_id"] == job["trace_id"]  # OpenTelemetry's span, same trace
        # Its task span (current during the task) is the job's entry, the timeline its child:
        # exported as an INTERNAL span under it, not a second CONSUMER span beside it.
        assert attrs["stagetrace.parent_span_id"] == attrs["probe.span_id"]
    seen = [json.loads(line) for line in after.read_text().splitlines()]
    assert seen == [{"valid": False}, {"valid": False}]
