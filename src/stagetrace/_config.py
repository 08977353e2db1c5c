"""The global state department: configuration, sinks, capture listeners, counters.

Everything stagetrace keeps at module level lives here, behind `configure()` and `reset()`.
Configuration comes from four layers, highest first: explicit `configure(...)` arguments, the
framework's settings (Django's ``STAGETRACE = {...}``), ``STAGETRACE_<OPTION>`` environment
variables, and defaults. The layers are read when `configure()` runs, or on first use when it
never ran — never at import and never per request.
"""

from __future__ import annotations

import json
import math
import os
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._model import Timeline
    from ._pipeline import Worker
    from .typing import Analyzer, Sink


class ConfigurationError(ValueError):
    """An option has a value stagetrace cannot use; the message names the option and its source."""


@dataclass(frozen=True)
class Settings:
    """The resolved configuration. Read it with `stagetrace.settings()`; change it with
    `stagetrace.configure()`."""

    enabled: bool = True
    sinks: tuple[Sink, ...] = ()
    jsonl: str | None = None
    sample_rate: float = 1.0
    exclude_paths: tuple[str, ...] = ()
    max_stages: int = 2000
    service: str = "unknown_service"
    analyzers: tuple[Analyzer, ...] = ()
    queue_size: int = 1000
    memory_size: int = 100
    color: str = "auto"
    request_id_header: str = "x-request-id"
    echo_request_id: bool = False
    record_sql_params: bool = False
    max_sql_length: int = 4096
    # derived
    exclude_re: re.Pattern[str] | None = field(default=None, repr=False, compare=False)


# --- option parsing ---------------------------------------------------------------------------


class _Bad(Exception):
    """Raised by an option's coercer; carries what the option accepts."""


def _to_bool(value: Any, from_env: bool) -> bool:
    if isinstance(value, bool):
        return value
    if from_env and isinstance(value, str):
        v = value.strip().lower()
        if v in ("1", "true", "yes", "on"):
            return True
        if v in ("0", "false", "no", "off", ""):
            return False
    raise _Bad("true or false")


def _to_rate(value: Any, from_env: bool) -> float:
    accepts = "a number from 0 to 1"
    if isinstance(value, bool):
        raise _Bad(accepts)
    if from_env and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            raise _Bad(accepts) from None
    if not isinstance(value, (int, float)) or math.isnan(value) or not 0.0 <= value <= 1.0:
        raise _Bad(accepts)
    return float(value)


def _positive_int(value: Any, from_env: bool) -> int:
    accepts = "a whole number of at least 1"
    if isinstance(value, bool):
        raise _Bad(accepts)
    if from_env and isinstance(value, str):
        try:
            value = int(value.strip())
        except ValueError:
            raise _Bad(accepts) from None
    if not isinstance(value, int) or value < 1:
        raise _Bad(accepts)
    return value


def _str_list(value: Any, from_env: bool) -> tuple[str, ...]:
    """A list of strings; from the environment a comma list, or a JSON array when a value
    itself needs commas."""
    if from_env and isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except ValueError:
                raise _Bad("a comma-separated list or a JSON array of strings") from None
        else:
            return tuple(p.strip() for p in text.split(",") if p.strip())
    if isinstance(value, str):
        return (value,)
    if isinstance(value, Iterable) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise _Bad("a list of strings")


def _regexes(value: Any, from_env: bool) -> tuple[str, ...]:
    patterns = _str_list(value, from_env)
    for p in patterns:
        try:
            re.compile(p)
        except re.error as exc:
            raise _Bad(f"valid regular expressions ({p!r}: {exc})") from None
    return patterns


def _text(value: Any, from_env: bool) -> str:
    if isinstance(value, str) and value.strip():
        return value.strip()
    raise _Bad("a non-empty string")


def _path_or_none(value: Any, from_env: bool) -> str | None:
    if value is None or (from_env and value == ""):
        return None
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, str) and value:
        return value
    raise _Bad("a file path")


def _color(value: Any, from_env: bool) -> str:
    if isinstance(value, bool):
        return "always" if value else "never"
    if isinstance(value, str) and value.strip().lower() in ("auto", "always", "never"):
        return value.strip().lower()
    raise _Bad("'auto', 'always' or 'never'")


def _header(value: Any, from_env: bool) -> str:
    if isinstance(value, str) and re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+", value.strip()):
        return value.strip().lower()
    raise _Bad("an HTTP header name")


SINK_NAMES = ("console", "jsonl", "memory", "otel")


def _sinks(value: Any, from_env: bool) -> tuple[Any, ...]:
    accepts = f"a list of sink names ({', '.join(SINK_NAMES)}) or sink objects"
    if from_env or isinstance(value, str):
        names = _str_list(value, from_env)
        items: tuple[Any, ...] = names
    elif isinstance(value, Iterable):
        items = tuple(value)
    else:
        raise _Bad(accepts)
    for item in items:
        if isinstance(item, str):
            if item not in SINK_NAMES:
                raise _Bad(f"{accepts}; {item!r} is not one")
        elif not callable(getattr(item, "emit", None)):
            raise _Bad(f"{accepts}; {item!r} has no emit() method")
    return items


def _analyzers(value: Any, from_env: bool) -> tuple[Any, ...]:
    if from_env:
        raise _Bad("analyzer objects (set them with configure(), not the environment)")
    if isinstance(value, Iterable) and all(callable(a) for a in value):
        return tuple(value)
    raise _Bad("a list of callables taking a Timeline")


@dataclass(frozen=True)
class _Option:
    coerce: Callable[[Any, bool], Any]
    doc: str


OPTIONS: dict[str, _Option] = {
    "enabled": _Option(_to_bool, "record timelines at all"),
    "sinks": _Option(_sinks, "where finished timelines go: console, jsonl, memory, otel"),
    "jsonl": _Option(_path_or_none, "path of the JSON lines file (adds the jsonl sink)"),
    "sample_rate": _Option(_to_rate, "fraction of requests recorded"),
    "exclude_paths": _Option(_regexes, "regexes; matching request paths are not recorded"),
    "max_stages": _Option(_positive_int, "stages kept per timeline; later ones are counted"),
    "service": _Option(_text, "service name (default: OTEL_SERVICE_NAME)"),
    "analyzers": _Option(_analyzers, "callables that add findings to finished timelines"),
    "queue_size": _Option(_positive_int, "timelines waiting for background sinks"),
    "memory_size": _Option(_positive_int, "timelines the memory sink keeps"),
    "color": _Option(_color, "console colours: auto (only on a terminal), always, never"),
    "request_id_header": _Option(_header, "incoming header holding the request id"),
    "echo_request_id": _Option(_to_bool, "add the request id header to responses"),
    "record_sql_params": _Option(_to_bool, "record SQL parameter values (off: placeholders)"),
    "max_sql_length": _Option(_positive_int, "characters of SQL text kept per query"),
}


def _default_service(environ: Mapping[str, str]) -> str:
    name = environ.get("OTEL_SERVICE_NAME", "").strip()
    if name:
        return name
    for part in environ.get("OTEL_RESOURCE_ATTRIBUTES", "").split(","):
        key, _, value = part.partition("=")
        if key.strip() == "service.name" and value.strip():
            return value.strip()
    return "unknown_service"


def _coerce(name: str, value: Any, source: str, from_env: bool) -> Any:
    try:
        return OPTIONS[name].coerce(value, from_env)
    except _Bad as bad:
        raise ConfigurationError(
            f"stagetrace option {name!r} ({source}): expected {bad}, got {value!r}"
        ) from None


def resolve(
    explicit: Mapping[str, Any],
    framework: Mapping[str, Any],
    framework_source: str,
    environ: Mapping[str, str],
) -> Settings:
    """Merge the four layers into `Settings`, validating each value where it came from."""
    values: dict[str, Any] = {}
    for name in OPTIONS:
        env_name = "STAGETRACE_" + name.upper()
        if env_name in environ:
            values[name] = _coerce(name, environ[env_name], f"environment {env_name}", True)
    for layer, source in ((framework, framework_source), (explicit, "configure()")):
        for name, value in layer.items():
            if name not in OPTIONS:
                known = ", ".join(OPTIONS)
                raise ConfigurationError(
                    f"unknown stagetrace option {name!r} ({source}); known options: {known}"
                )
            values[name] = _coerce(name, value, source, False)
    if "service" not in values:
        values["service"] = _default_service(environ)
    values["sinks"] = _build_sinks(values)
    patterns = values.get("exclude_paths", ())
    if patterns:
        values["exclude_re"] = re.compile("|".join(f"(?:{p})" for p in patterns))
    return Settings(**values)


def _build_sinks(values: Mapping[str, Any]) -> tuple[Sink, ...]:
    from . import sinks as _sinks_mod

    requested = values.get("sinks")
    if requested is None:
        requested = ("jsonl",) if values.get("jsonl") else ()
    built: list[Sink] = []
    for item in requested:
        if not isinstance(item, str):
            built.append(item)
        elif item == "jsonl":
            path = values.get("jsonl")
            if not path:
                raise ConfigurationError(
                    "stagetrace option 'sinks' lists 'jsonl' but no file is set: "
                    "set 'jsonl' (STAGETRACE_JSONL) to a path"
                )
            built.append(_sinks_mod.JsonlSink(path))
        elif item == "console":
            built.append(_sinks_mod.ConsoleSink(color=values.get("color", "auto")))
        elif item == "memory":
            built.append(_sinks_mod.MemorySink(values.get("memory_size", 100)))
        elif item == "otel":
            raise ConfigurationError(
                "stagetrace option 'sinks': the 'otel' sink is not available in this version "
                "of stagetrace yet; use console, jsonl or memory"
            )
    return tuple(built)


# --- the state ------------------------------------------------------------------------------


class _State:
    """All module-level state, in one object so `reset()` can put it back."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.explicit: dict[str, Any] = {}
        self.framework: dict[str, Any] = {}
        self.framework_source = "framework settings"
        self.settings: Settings | None = None
        self.worker: Worker | None = None
        self.listeners: tuple[list[Timeline], ...] = ()
        self.counters: Counter[str] = Counter()
        # Timelines of requests being served right now, by every adapter (set.add and
        # set.discard are atomic; _http.begin_http bounds the size).
        self.in_flight: set[Any] = set()


_state = _State()


def state() -> _State:
    return _state


def settings() -> Settings:
    """The current configuration, resolving it from the environment on first use."""
    s = _state.settings
    if s is None:
        s = _apply()
    return s


def _apply() -> Settings:
    with _state.lock:
        new = resolve(_state.explicit, _state.framework, _state.framework_source, os.environ)
        old_worker = _state.worker
        _state.settings = new
        from ._pipeline import Worker

        _state.worker = Worker(new.sinks, new.queue_size) if new.sinks else None
    if old_worker is not None:
        old_worker.retire()
    return new


def configure(**options: Any) -> Settings:
    """Set options explicitly (highest precedence); returns the resolved configuration.

    Calls are cumulative: options not named keep their earlier explicit value. A bad value
    raises `ConfigurationError` naming the option, where it came from, and what it accepts;
    the previous configuration then stays in force.
    """
    with _state.lock:
        for name, value in options.items():
            if name not in OPTIONS:
                known = ", ".join(OPTIONS)
                raise ConfigurationError(
                    f"unknown stagetrace option {name!r} (configure()); known options: {known}"
                )
            _coerce(name, value, "configure()", False)
        previous = dict(_state.explicit)
        _state.explicit.update(options)
        try:
            return _apply()
        except ConfigurationError:
            _state.explicit = previous
            raise


def configure_from_framework(options: Mapping[str, Any], source: str) -> Settings:
    """Install the framework-settings layer (Django's ``STAGETRACE``) and re-resolve."""
    if not isinstance(options, Mapping):
        raise ConfigurationError(
            f"{source} must be a dict of stagetrace options, got {type(options).__name__}"
        )
    with _state.lock:
        previous, previous_source = _state.framework, _state.framework_source
        _state.framework, _state.framework_source = dict(options), source
        try:
            return _apply()
        except ConfigurationError:
            _state.framework, _state.framework_source = previous, previous_source
            raise


def reset() -> None:
    """Forget all configuration and captures, stop the background worker, zero the counters."""
    with _state.lock:
        worker = _state.worker
        _state.explicit = {}
        _state.framework = {}
        _state.framework_source = "framework settings"
        _state.settings = None
        _state.worker = None
        _state.listeners = ()
        _state.counters.clear()
    if worker is not None:
        worker.retire()


def add_listener(target: list[Timeline]) -> None:
    with _state.lock:
        _state.listeners = (*_state.listeners, target)


def remove_listener(target: list[Timeline]) -> None:
    with _state.lock:
        _state.listeners = tuple(t for t in _state.listeners if t is not target)


def count(name: str, n: int = 1) -> None:
    """Add to one of the internal counters reported by `stagetrace.stats()`."""
    _state.counters[name] += n


def stats() -> dict[str, int]:
    """A snapshot of the internal counters (timelines recorded and dropped, sink and internal
    errors, ...). Counters only ever go up until `reset()`."""
    out = dict(_state.counters)
    worker = _state.worker
    if worker is not None:
        out["queue_depth"] = worker.depth()
    return out


def known_options() -> Sequence[tuple[str, str]]:
    """(name, description) of every option, for documentation and error messages."""
    return [(name, opt.doc) for name, opt in OPTIONS.items()]
