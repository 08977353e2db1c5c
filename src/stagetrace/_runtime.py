"""Configuration and lifecycle: `configure`, `settings`, `reset`, `flush`, `shutdown`, `stats`.

Puts the pieces together — resolves options (`_options`), builds the sinks (`sinks`), starts a
`Pipeline` for them, connects the recorder to it — and keeps the result in `_state`. The layers
are read when `configure()` runs, or on first use when it never ran — never at import and never
per request.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from . import _options, _pipeline, _recorder
from ._model import Timeline
from ._options import ConfigurationError, Settings
from ._state import STATE

logger = logging.getLogger("stagetrace")

__all__ = [
    "ConfigurationError",
    "Settings",
    "configure",
    "configure_from_framework",
    "flush",
    "listening",
    "propose_defaults",
    "reset",
    "settings",
    "shutdown",
    "stats",
]


def settings() -> Settings:
    """The current configuration, resolving it from the environment on first use."""
    s = STATE.settings
    if s is None:
        s = _apply()
    return s


_DISABLED = Settings(enabled=False)


def active() -> Settings:
    """The configuration for an adapter inside a request: like `settings`, but never raises.
    A configuration that cannot be resolved (a bad environment variable when nothing was
    configured at start-up) is reported once, and stagetrace records nothing until it is
    fixed — the request itself goes on untouched."""
    s = STATE.settings
    if s is not None:
        return s
    try:
        return _apply()
    except Exception as exc:
        from . import _guard

        _guard.report("configuration", exc)
        with STATE.lock:
            if STATE.settings is None:
                STATE.settings = _DISABLED
        return _DISABLED


def _build(values: Mapping[str, Any]) -> Settings:
    from . import analyzers, sinks

    plan = _options.sink_plan(values)
    built = sinks.build(plan, values)
    if "analyzers" not in values:
        values = {
            **values,
            "analyzers": analyzers.defaults(values.get("n_plus_one_threshold", 5)),
        }
    return _options.settings_from(values, built)


def _apply() -> Settings:
    """Resolve the configuration and put it in force (see `_install`)."""
    new, old = _install()
    _retire(old, new)
    return new


def _install() -> tuple[Settings, _pipeline.Pipeline | None]:
    """Resolve the configuration layers, build the sinks and put them in force; returns the
    new settings and the pipeline they replace, which the caller retires (`_retire`) once it
    released `STATE.lock`: retiring waits for the old sinks, up to seconds."""
    with STATE.lock:
        _pipeline._install_process_hooks()
        values = _options.resolve(
            STATE.explicit, STATE.framework, STATE.framework_source, os.environ, STATE.proposed
        )
        new = _build(values)
        offered = tuple(
            hook
            for hook in (getattr(s, "context_hook", None) for s in new.sinks)
            if hook is not None
        )
        hooks = _context_hooks(new, offered)
        old = STATE.pipeline
        STATE.settings = new
        STATE.context_hooks = hooks
        STATE.propagation = _propagation(hooks)
        if new.enabled and not new.otel_context and len(hooks) < len(offered):
            _warn_if_propagator_ignored(offered)
        STATE.pipeline = (
            _pipeline.Pipeline(new.sinks, new.analyzers, new.queue_size, replaces=old)
            if new.sinks
            else None
        )
        _connect()
    return new, old


def _retire(old: _pipeline.Pipeline | None, new: Settings) -> None:
    """Deliver what the replaced pipeline holds; close the sinks the new one does not use."""
    if old is not None:
        old.retire(keep=new.sinks)


def _propagation(hooks: tuple[Any, ...]) -> Any:
    """The application's propagator as the OpenTelemetry hook sees it (None: W3C)."""
    for hook in hooks:
        current = getattr(hook, "propagation", None)
        if current is not None:
            found = current()
            if found is not None:
                return found
    return None


def _warn_if_propagator_ignored(offered: tuple[Any, ...]) -> None:
    """``otel_context`` is off beside the otel sink: if the application's OpenTelemetry
    propagator is not W3C's (``OTEL_PROPAGATORS=b3``, say), say once that stagetrace reads and
    writes W3C headers only, so its timelines will not join that mesh's traces."""
    try:
        found = _propagation(offered)
    except Exception:
        return
    if found is None:
        return
    textmap = getattr(found, "textmap", found)
    try:
        fields = ", ".join(sorted(str(f) for f in textmap.fields))
    except Exception:
        fields = "?"
    name = f"{type(textmap).__name__}, headers {fields}"
    if name in _warned_propagators:
        return
    _warned_propagators.add(name)
    logger.warning(
        "stagetrace: otel_context is off, so the application's OpenTelemetry propagator "
        "(%s) is not used: incoming requests are joined to their trace only by a W3C "
        "traceparent, and outbound calls carry W3C headers only. Leave otel_context on to "
        "use it.",
        name,
    )


_warned_propagators: set[str] = set()


def _context_hooks(new: Settings, offered: tuple[Any, ...]) -> tuple[Any, ...]:
    """The context hooks in use, of those the sinks offer (the otel sink brings
    OpenTelemetry's): OpenTelemetry's is left out when the ``otel_context`` option turns it
    off."""
    if new.otel_context and new.enabled:
        return offered
    return tuple(h for h in offered if type(h).__module__ != "stagetrace.otel._context")


def _connect() -> None:
    """Connect the recorder to the pipeline only while something receives timelines (sinks or
    a `capture()`): recording alone then skips sealing finished timelines."""
    wanted = STATE.pipeline is not None or bool(STATE.listeners)
    _recorder.connect(_pipeline.submit if wanted else None)


def configure(**options: Any) -> Settings:
    """Set options explicitly (highest precedence); returns the resolved configuration.

    Calls are cumulative: options not named keep their earlier explicit value. A bad value
    raises `ConfigurationError` naming the option, where it came from, and what it accepts;
    the previous configuration then stays in force.
    """
    with STATE.lock:
        _options.check_names(options, "configure()")
        for name, value in options.items():
            _options.coerce(name, value, "configure()")
        previous = dict(STATE.explicit)
        STATE.explicit.update(options)
        try:
            new, old = _install()
        except ConfigurationError:
            STATE.explicit = previous
            raise
    _retire(old, new)
    return new


def configure_from_framework(options: Any, source: str) -> Settings:
    """Install the framework-settings layer (Django's ``STAGETRACE``) and re-resolve."""
    if not isinstance(options, Mapping):
        raise ConfigurationError(
            f"{source} must be a dict of stagetrace options, got {type(options).__name__}"
        )
    with STATE.lock:
        previous, previous_source = STATE.framework, STATE.framework_source
        STATE.framework, STATE.framework_source = dict(options), source
        try:
            new, old = _install()
        except ConfigurationError:
            STATE.framework, STATE.framework_source = previous, previous_source
            raise
    _retire(old, new)
    return new


def propose_defaults(options: Mapping[str, Any]) -> Settings:
    """Defaults an adapter proposes for its framework (below the environment and every explicit
    layer): Django under ``DEBUG`` proposes the console sink, say."""
    with STATE.lock:
        previous = STATE.proposed
        STATE.proposed = dict(options)
        try:
            new, old = _install()
        except ConfigurationError:
            STATE.proposed = previous
            raise
    _retire(old, new)
    return new


def framework_source() -> str:
    """Where the framework-settings layer came from (empty layer: ``framework settings``)."""
    return STATE.framework_source


def reset() -> None:
    """Forget all configuration and captures, stop the background worker, zero the counters."""
    with STATE.lock:
        pipeline = STATE.pipeline
        STATE.clear()
        _recorder.connect(None)
    if pipeline is not None:
        pipeline.retire()


def flush(timeout: float | None = 5.0) -> bool:
    """Deliver every finished timeline to the sinks, waiting at most `timeout` seconds. True
    when everything got through: False when the deadline passed first, or a sink could not
    deliver what it held (the OTLP export with the collector unreachable). Called from a sink
    or an analyzer — on the worker that is delivering — it returns at once, False while
    anything is still queued: delivery goes on after it, in order."""
    pipeline = STATE.pipeline
    return True if pipeline is None else pipeline.flush(timeout)


def delivered(timeout: float) -> bool:
    """Wait at most `timeout` seconds for the timelines finished so far to reach the sinks,
    without flushing the sinks. True when they did."""
    pipeline = STATE.pipeline
    return True if pipeline is None else pipeline.delivered(timeout)


def shutdown(timeout: float = 5.0) -> bool:
    """Flush, then stop the background worker. Recording continues: the next timeline starts
    a fresh worker with the same configuration, delivering to the same sinks — which are
    therefore left open (`reset()`, or a ``configure()`` that no longer uses one, closes
    them)."""
    with STATE.lock:
        pipeline = STATE.pipeline
        if pipeline is None:
            return True
        STATE.pipeline = _pipeline.Pipeline(
            pipeline.sinks, pipeline.analyzers, pipeline.maxsize, replaces=pipeline
        )
        _connect()
    return pipeline.retire(timeout, keep=pipeline.sinks)


def stats() -> dict[str, Any]:
    """A snapshot of the internal counters: ``timelines`` recorded, ``timelines_dropped`` (queue
    full), ``timelines_sampled_out``, ``timelines_excluded``, ``stages_dropped`` (past
    `max_stages`), ``sink_errors``, ``analyzer_errors``, ``internal_errors`` and
    ``internal_errors_by_site``, ``queue_depth``. Counters only go up until `reset()`."""
    out: dict[str, Any] = {
        "timelines": 0,
        "timelines_dropped": 0,
        "timelines_sampled_out": 0,
        "timelines_excluded": 0,
        "stages_dropped": 0,
        "sink_errors": 0,
        "analyzer_errors": 0,
        "internal_errors": 0,
    }
    out.update(STATE.counters)
    out["internal_errors_by_site"] = dict(STATE.errors_by_site)
    pipeline = STATE.pipeline
    out["queue_depth"] = pipeline.depth() if pipeline is not None else 0
    return out


@contextmanager
def listening() -> Iterator[list[Timeline]]:
    """Collect every timeline that finishes anywhere in the process while the block runs."""
    collected: list[Timeline] = []
    settings()  # resolve now: the recorder must be connected before the first timeline ends
    with STATE.lock:
        STATE.listeners = (*STATE.listeners, collected)
        _connect()
    try:
        yield collected
    finally:
        with STATE.lock:
            STATE.listeners = tuple(t for t in STATE.listeners if t is not collected)
            _connect()
