"""The public recording API for the user's own code: `stage`, `timeline`, `annotate`,
`current_timeline`, `capture`."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any, TypeVar, overload

from . import _recorder, _runtime
from ._model import KIND_SET, KINDS, Timeline
from ._recorder import leave

F = TypeVar("F", bound=Callable[..., Any])


class StageScope:
    """A stage definition, usable as a context manager (sync or async) and as a decorator.

    It holds no per-use state: the open stage lives in the recorder's ContextVar, so one scope
    may be used concurrently from many tasks and threads, and nested in itself."""

    __slots__ = ("attrs", "kind", "name")

    def __init__(self, name: str, kind: str, attrs: dict[str, Any] | None) -> None:
        self.name = name
        self.kind = kind
        self.attrs = _plain(attrs) if attrs else None

    def __enter__(self) -> StageScope:
        try:
            _recorder.enter_owned(self.kind, self.name, self, self.attrs)
        except Exception as exc:
            _recorder.internal_error("api.stage", exc)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            _recorder.exit_owned(self, exc)
        except Exception as e:
            _recorder.internal_error("api.stage", e)

    async def __aenter__(self) -> StageScope:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    def __call__(self, func: F) -> F:
        """Decorate a function (sync or async) so that each call is recorded as this stage."""
        if isinstance(func, (staticmethod, classmethod)):  # above @staticmethod/@classmethod
            return type(func)(self(func.__func__))
        if inspect.isgeneratorfunction(func) or inspect.isasyncgenfunction(func):
            raise TypeError(
                f"stagetrace.stage() cannot decorate the generator function {func.__qualname__}:"
                " use `with stagetrace.stage(...):` inside it around the work to time"
            )
        kind, name, attrs = self.kind, self.name, self.attrs
        R = _recorder

        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                if R.current() is None:
                    return await func(*args, **kwargs)
                try:
                    rec = R.enter(kind, name, attrs)
                except Exception as e:
                    R.internal_error("api.stage", e)
                    rec = None
                try:
                    result = await func(*args, **kwargs)
                except BaseException as exc:
                    leave("api.stage", rec, exc)
                    raise
                leave("api.stage", rec)
                return result

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if R.current() is None:
                return func(*args, **kwargs)
            try:
                rec = R.enter(kind, name, attrs)
            except Exception as e:
                R.internal_error("api.stage", e)
                rec = None
            try:
                result = func(*args, **kwargs)
            except BaseException as exc:
                leave("api.stage", rec, exc)
                raise
            leave("api.stage", rec)
            return result

        return wrapper  # type: ignore[return-value]

    def __repr__(self) -> str:
        return f"stage({self.name!r}, kind={self.kind!r})"


def _plain(attrs: dict[str, Any]) -> dict[str, Any] | None:
    """The application's attributes as plain data (see `_recorder.plain_attrs`), or None if
    that failed (reported)."""
    try:
        return _recorder.plain_attrs(attrs)
    except Exception as exc:
        _recorder.internal_error("api.attrs", exc)
        return None


_scopes: dict[tuple[str, str], StageScope] = {}
_MAX_CACHED_SCOPES = 4096


def _check_kind(kind: str) -> None:
    if kind not in KIND_SET:
        raise ValueError(f"unknown stage kind {kind!r}; use one of: {', '.join(KINDS)}")


@overload
def stage(name: str, kind: str = "custom", **attrs: Any) -> StageScope: ...
@overload
def stage(name: F) -> F: ...
def stage(name: Any, kind: str = "custom", **attrs: Any) -> Any:
    """Record a stage of your own code in the current timeline.

    As a context manager (``with`` or ``async with``)::

        with stagetrace.stage("price basket", items=len(basket)):
            ...

    or as a decorator of a sync or async function (``@stagetrace.stage("load rates")``, or bare
    ``@stagetrace.stage`` to name it after the function). `kind` is one of `stagetrace.KINDS`
    (default ``"custom"``); `attrs` become the stage's attributes. Outside a timeline it does
    nothing and costs next to nothing.
    """
    # Fast paths first: this runs for every `with stage(...)`.
    if attrs:
        if type(name) is str and kind in KIND_SET:
            return StageScope(name, kind, attrs)
        return _make_stage(name, kind, attrs)
    try:
        return _scopes[name, kind]
    except (KeyError, TypeError):
        return _make_stage(name, kind, None)


def _make_stage(name: Any, kind: str, attrs: dict[str, Any] | None) -> Any:
    if callable(name) and not isinstance(name, str):
        func = name
        return stage(getattr(func, "__qualname__", repr(func)), kind, **(attrs or {}))(func)
    _check_kind(kind)
    scope = StageScope(str(name), kind, attrs)
    if attrs is None and type(name) is str and len(_scopes) < _MAX_CACHED_SCOPES:
        _scopes[name, kind] = scope
    return scope


def annotate(**attrs: Any) -> None:
    """Add attributes to the current stage (the innermost open one). No-op outside a timeline."""
    if attrs:
        try:
            _recorder.annotate(_plain(attrs) or {})
        except Exception as exc:
            _recorder.internal_error("api.annotate", exc)


def discard() -> bool:
    """Leave the request (or job) being recorded in this context out of every sink: it is
    dropped when it ends, like a path in ``exclude_paths``, but decided while it runs (a health
    check recognised in the view, a page of your own tooling). Returns whether a timeline was
    being recorded; outside one it does nothing."""
    try:
        return _recorder.discard()
    except Exception as exc:
        _recorder.internal_error("api.discard", exc)
        return False


class TimelineScope:
    """Context manager (sync or async) and decorator starting a root timeline; see `timeline`.

    It keeps no per-use state: what a use opened is found again in the recorder's context
    variable (each thread and task has its own), so one scope may be shared by many threads
    and tasks at once, and nested in itself."""

    __slots__ = ("_attrs", "_name")

    def __init__(self, name: str, attrs: dict[str, Any]) -> None:
        self._name = name
        self._attrs = (_plain(attrs) or {}) if attrs else {}

    def __enter__(self) -> CurrentTimeline | None:
        try:
            cfg = _runtime.settings()
            _recorder.begin_owned_job(cfg, self._name, self, dict(self._attrs) or None)
        except Exception as exc:
            _recorder.internal_error("api.timeline", exc)
        return current_timeline()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            _recorder.end_owned_job(self, exc)
        except Exception as e:
            _recorder.internal_error("api.timeline", e)
            try:
                _recorder.abandon_job(self)
            except Exception:  # pragma: no cover - nothing more can be done
                pass

    async def __aenter__(self) -> CurrentTimeline | None:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    def __call__(self, func: F) -> F:
        """Decorate a function (sync or async): each call is one timeline."""
        if isinstance(func, (staticmethod, classmethod)):  # above @staticmethod/@classmethod
            return type(func)(self(func.__func__))
        scope = self
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                async with scope:
                    return await func(*args, **kwargs)

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with scope:
                return func(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    def __repr__(self) -> str:
        return f"timeline({self._name!r})"


def timeline(name: str, **attrs: Any) -> TimelineScope:
    """Start a root timeline outside any web framework: a job, a script, a test.

    ::

        with stagetrace.timeline("nightly-report", tenant="acme"):
            build_report()

    The timeline's protocol is ``"job"``; its root stage (kind ``task``) carries `attrs`. Inside
    a timeline that is already recording (a request, say) it records a ``task`` stage of that
    timeline instead of starting a second one. Also usable as a decorator.
    """
    return TimelineScope(str(name), attrs)


class CurrentTimeline:
    """A read-only view of the timeline being recorded in the current context."""

    __slots__ = ("_tl",)

    def __init__(self, tl: _recorder.Live) -> None:
        self._tl = tl

    @property
    def trace_id(self) -> str:
        """32 hex digits, as in the finished timeline and its OpenTelemetry spans."""
        return f"{self._tl.trace_id:032x}"

    @property
    def span_id(self) -> str:
        """16 hex digits: the root span of the timeline."""
        return f"{self._tl.span_id:016x}"

    @property
    def request_id(self) -> str:
        """The incoming request id, or the trace id when the request brought none."""
        return self._tl.request_id or self.trace_id

    @property
    def framework(self) -> str:
        return str(self._tl.framework)

    @property
    def protocol(self) -> str:
        return str(self._tl.protocol)

    @property
    def method(self) -> str | None:
        return self._tl.method

    @property
    def path(self) -> str | None:
        return self._tl.path

    @property
    def route(self) -> str | None:
        return self._tl.route

    @property
    def elapsed_ns(self) -> int:
        """Nanoseconds since the timeline started."""
        return int(_recorder.now() - _recorder.start_of(_recorder.root_of(self._tl)))

    @property
    def stage_count(self) -> int:
        """Stages recorded so far (kept ones; see `dropped_stages` for the rest)."""
        return len(self._tl)

    @property
    def dropped_stages(self) -> int:
        return int(self._tl.dropped)

    def __repr__(self) -> str:
        return f"<CurrentTimeline {self.trace_id} {self.protocol} {self.path or ''}>"


def current_timeline() -> CurrentTimeline | None:
    """The timeline being recorded in this context (request, task, thread), or None."""
    try:
        tl = _recorder.live()
    except Exception as exc:
        _recorder.internal_error("api.current_timeline", exc)
        return None
    return None if tl is None else CurrentTimeline(tl)


@contextmanager
def capture() -> Iterator[list[Timeline]]:
    """Collect every timeline that finishes anywhere in the process while the block runs.

    ::

        with stagetrace.capture() as timelines:
            client.get("/books/")
        assert timelines[0].route == "books/"

    Timelines are appended synchronously when they end — in whatever thread ends them, so a
    test client that runs the app in another thread works — already analyzed, before any sink
    sees them.
    """
    with _runtime.listening() as collected:
        yield collected
