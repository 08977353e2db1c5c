"""The frozen data model: `Stage`, `Timeline`, `Finding`, and the stage vocabulary.

These objects are built after a request ends (see `_pipeline.freeze`) and are what analyzers
and sinks receive. `Timeline.to_dict()` is a public contract described in
`docs/schema.md`; changing its shape (a field, or the vocabulary of stage kinds) means
bumping `SCHEMA`, and `Timeline.from_dict` keeps reading every earlier version (`READS`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple, Protocol

SCHEMA = "stagetrace/timeline@3"
SCHEMA_V2 = "stagetrace/timeline@2"
SCHEMA_V1 = "stagetrace/timeline@1"
#: Every schema version `Timeline.from_dict` reads (a @2 document is a @3 one without the
#: parent fields ``parent_span_id``, ``parent_is_remote``, ``trace_flags`` and ``tracestate``;
#: a @1 document is a @2 one without the ``dependency`` stage kind).
READS = (SCHEMA, SCHEMA_V2, SCHEMA_V1)

#: The fixed vocabulary of stage kinds shared by every adapter, in request order.
KINDS: tuple[str, ...] = (
    "gateway",
    "middleware",
    "route",
    "view",
    "dependency",  # new in stagetrace/timeline@2
    "orm.compile",
    "db.connect",
    "db.query",
    "orm.fetch",
    "transaction",
    "template",
    "serialize",
    "cache",
    "session",
    "response.write",
    "task",
    "http.client",
    "custom",
)
KIND_SET = frozenset(KINDS)
#: The stage kinds of each earlier schema version.
_KINDS_V1 = KIND_SET - {"dependency"}

PROTOCOLS = ("http", "websocket", "job")

#: What an attribute value may be once frozen: JSON scalars, or flat lists of them.
AttrValue = str | int | float | bool | None | list[Any]

_EMPTY: Mapping[str, Any] = MappingProxyType({})


_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    z = (x + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


#: ``_splitmix64(i)`` for each stage index seen so far: grown on demand, replaced by a longer
#: list rather than appended to, so a reader holding it never sees it change. No lock (one
#: could be held across a fork): two threads growing it at once compute the same values, and
#: a reader that finds it shorter than it needs grows it again.
_MIX: list[int] = [0]


def span_id_masks(n: int) -> list[int]:
    """At least `n` masks: stage `i`'s span id is the root's XOR ``masks[i]`` (see
    `stage_span_id`)."""
    global _MIX
    mix = _MIX
    if len(mix) < n:
        mix = mix + [_splitmix64(i) for i in range(len(mix), n)]
        if len(mix) > len(_MIX):
            _MIX = mix
    return mix


def stage_span_id(root_span_id: int, index: int) -> int:
    """The span id of stage `index` of a timeline whose root span id is `root_span_id`: the
    root's own for index 0, otherwise the root's XOR a well-mixed 64-bit value of the index
    (splitmix64), so ids need no random draw per stage, differ from each other within the
    timeline, and are the same during the request (for context propagation) and when the
    timeline is exported."""
    if index == 0:
        return root_span_id
    mix = _MIX
    if index >= len(mix):
        mix = span_id_masks(index + 1)
    return (root_span_id ^ mix[index]) or 1


class SchemaError(ValueError):
    """A dictionary does not follow the timeline schema (`stagetrace/timeline@3`, or an earlier
    version that `Timeline.from_dict` reads)."""


@dataclass(frozen=True, slots=True)
class StageError:
    """The exception a stage ended with: qualified type name and message."""

    type: str
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"type": self.type, "message": self.message}


class Stage(NamedTuple):
    """One step of a request, frozen.

    `start_ns` is the offset from the timeline's start on a monotonic clock; `self_ns` is the
    duration minus the time spent in child stages (never below zero). `phases` and
    `short_circuit` are set on `middleware` stages only: `phases["in"]` runs from entering the
    middleware until it calls the next layer, `phases["out"]` from that call's return until the
    middleware returns, and `short_circuit` is true when it answered without calling the next
    layer at all.

    A `Stage` is an immutable named tuple: cheap to build (timelines can hold thousands), and
    its fields are read by name.
    """

    id: int
    parent: int | None
    kind: str
    name: str
    start_ns: int
    duration_ns: int
    self_ns: int
    attrs: Mapping[str, AttrValue] = _EMPTY
    error: StageError | None = None
    phases: Mapping[str, int] | None = None
    short_circuit: bool | None = None

    @property
    def end_ns(self) -> int:
        """Offset of the stage's end from the timeline's start."""
        return self.start_ns + self.duration_ns

    def to_dict(self) -> dict[str, Any]:
        """This stage as plain JSON-serializable data (see docs/schema.md)."""
        d: dict[str, Any] = {
            "id": self.id,
            "parent": self.parent,
            "kind": self.kind,
            "name": self.name,
            "start_ns": self.start_ns,
            "duration_ns": self.duration_ns,
            "self_ns": self.self_ns,
            "attrs": dict(self.attrs),
            "error": self.error.to_dict() if self.error is not None else None,
        }
        if self.kind == "middleware":
            d["phases"] = dict(self.phases) if self.phases is not None else {"in": 0, "out": 0}
            d["short_circuit"] = bool(self.short_circuit)
        return d


@dataclass(frozen=True, slots=True)
class Finding:
    """Something an analyzer noticed about a timeline (an N+1 query pattern, say)."""

    kind: str
    message: str
    stages: tuple[int, ...] = ()
    attrs: Mapping[str, AttrValue] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "message": self.message,
            "stages": list(self.stages),
            "attrs": dict(self.attrs),
        }


@dataclass(frozen=True, slots=True)
class KindSummary:
    """Count, total and self time of the stages of one kind, dropped stages included."""

    count: int
    total_ns: int
    self_ns: int

    def to_dict(self) -> dict[str, int]:
        return {"count": self.count, "total_ns": self.total_ns, "self_ns": self.self_ns}


class ByKind(dict):  # type: ignore[type-arg]
    """Per-kind totals of a timeline: ``{kind: KindSummary}``. A known kind with no stage reads
    as a zero summary (``by_kind["db.query"].count == 0`` on a request without queries) but is not
    listed (``"db.query" in by_kind`` is false); an unknown kind raises `KeyError`."""

    __slots__ = ()

    def __missing__(self, kind: str) -> KindSummary:
        if kind in KIND_SET:
            return _ZERO
        raise KeyError(kind)


_ZERO = KindSummary(0, 0, 0)


class Loader(Protocol):
    """Builds a lazy timeline's stages: all of them (``load()``: stages and per-kind totals),
    or one at a time (``stage(i)``), and finds the positions of one kind (``indexes``)."""

    def load(self) -> tuple[tuple[Stage, ...], Mapping[str, KindSummary]]: ...

    def stage(self, i: int) -> Stage: ...

    def indexes(self, kind: str) -> list[int]: ...

    def count(self, kind: str) -> int: ...

    def rows(self, kind: str) -> list[Row]: ...

    def lineage(self, i: int) -> Iterator[tuple[str, str]]: ...


#: A stage as the built-in analyzers read it, without building its `Stage`: ``(id, name,
#: duration_ns, attrs)``.
Row = tuple[int, str, int, Mapping[str, Any]]


_HEADER = (
    "trace_id",
    "span_id",
    "request_id",
    "service",
    "framework",
    "protocol",
    "method",
    "path",
    "route",
    "status",
    "start_unix_nano",
    "duration_ns",
)


def _field(i: int, doc: str | None = None) -> Any:
    """A read-only property for position `i` of a timeline's header tuple."""
    return property(lambda self: self._h[i], doc=doc)


class Timeline:
    """One request (or websocket connection, or job) as a tree of stages, frozen.

    A timeline recorded in this process builds its `stages` and `by_kind` only when they are
    first read: finishing a request costs the same whether or not any sink ever looks inside
    (the memory sink, sampled-out export, and most timelines in production never do). Both are
    computed once, then cached; a timeline is read-only and safe to share between threads.
    """

    __slots__ = ("_by_kind", "_h", "_load", "_stages", "findings")

    findings: tuple[Finding, ...]
    _h: tuple[Any, ...]
    _stages: tuple[Stage, ...] | None
    _by_kind: ByKind | None
    _load: Loader | None

    def __init__(
        self,
        trace_id: str,
        span_id: str,
        request_id: str,
        service: str,
        framework: str,
        protocol: str,
        method: str | None,
        path: str | None,
        route: str | None,
        status: int | None,
        start_unix_nano: int,
        duration_ns: int,
        stages: Sequence[Stage] | None = None,
        by_kind: Mapping[str, KindSummary] | None = None,
        findings: Sequence[Finding] = (),
        dropped_stages: int = 0,
        *,
        load: Loader | None = None,
        parent_span_id: str | None = None,
        trace_flags: int = 1,
        tracestate: str | None = None,
        parent_is_remote: bool | None = None,
    ) -> None:
        if stages is None and load is None:
            raise TypeError("Timeline needs stages (or a loader)")
        if not parent_span_id:  # the remote flag and the tracestate describe a parent
            parent_span_id, parent_is_remote, tracestate = None, False, None
        if not 0 <= trace_flags <= 0xFF:
            raise ValueError(f"trace_flags {trace_flags!r} is not a byte (0-255)")
        s = _set
        s(
            self,
            "_h",
            (
                trace_id,
                span_id,
                request_id,
                service,
                framework,
                protocol,
                method,
                path,
                route,
                status,
                start_unix_nano,
                duration_ns,
                dropped_stages,
                parent_span_id,
                trace_flags,
                tracestate,
                bool(parent_span_id) if parent_is_remote is None else parent_is_remote,
            ),
        )
        s(self, "findings", tuple(findings))
        s(self, "_stages", tuple(stages) if stages is not None else None)
        s(self, "_by_kind", ByKind(by_kind) if by_kind is not None else None)
        s(self, "_load", load)

    trace_id: str = _field(0, doc="32 hex digits; the OpenTelemetry trace id.")
    span_id: str = _field(1, doc="16 hex digits: the root span.")
    request_id: str = _field(2, doc="The request id (else the trace id).")
    service: str = _field(3, doc="The service name.")
    framework: str = _field(4, doc="The adapter that recorded it.")
    protocol: str = _field(5, doc="http, websocket or job.")
    method: str | None = _field(6, doc="The HTTP method.")
    path: str | None = _field(7, doc="The request path.")
    route: str | None = _field(8, doc="The route template that matched.")
    status: int | None = _field(9, doc="HTTP status or close code.")
    start_unix_nano: int = _field(10, doc="Wall-clock start (ns).")
    duration_ns: int = _field(11, doc="Duration of the root stage (ns).")
    dropped_stages: int = _field(12, doc="Stages not kept (max_stages).")
    parent_span_id: str | None = _field(
        13,
        doc="16 hex digits: the span this timeline's root is a child of — from an incoming "
        "``traceparent``, or an OpenTelemetry span of this process that was current when the "
        "request began — else None.",
    )
    trace_flags: int = _field(14, doc="W3C trace flags (bit 0: sampled).")
    tracestate: str | None = _field(15, doc="The W3C ``tracestate`` that came with the parent.")
    parent_is_remote: bool = _field(
        16, doc="Whether the parent is another service's span (else one of this process)."
    )

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"Timeline is read-only (cannot set {name!r})")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"Timeline is read-only (cannot delete {name!r})")

    def _loaded(self) -> None:
        load = self._load
        if load is None:
            stages = self._stages or ()
            _set(self, "_stages", stages)
            _set(self, "_by_kind", ByKind(_summarize(stages)))
            return
        stages, by_kind = load.load()
        _set(self, "_stages", tuple(stages))
        _set(self, "_by_kind", ByKind(by_kind))
        _set(self, "_load", None)

    @property
    def stages(self) -> tuple[Stage, ...]:
        """Every kept stage in start order; ``stages[i].id == i``; the root first."""
        stages = self._stages
        if stages is None or self._by_kind is None:
            self._loaded()
            stages = self._stages
        assert stages is not None
        return stages

    @property
    def by_kind(self) -> Mapping[str, KindSummary]:
        """Count, total and self time per stage kind, dropped stages included."""
        by_kind = self._by_kind
        if by_kind is None:
            self._loaded()
            by_kind = self._by_kind
        assert by_kind is not None
        return by_kind

    def stage_span_id(self, stage_id: int) -> str:
        """The span id (16 hex digits) of stage `stage_id`, as exported to OpenTelemetry and as
        seen by other instrumentation while the stage ran."""
        return f"{stage_span_id(int(self.span_id, 16), stage_id):016x}"

    def count(self, kind: str) -> int:
        """How many stages of `kind` the request ran (dropped ones included). Cheap: for a
        timeline recorded in this process it does not build the stages."""
        load = self._load
        if load is not None and self._by_kind is None:
            return load.count(kind)
        return self.by_kind[kind].count if kind in self.by_kind else 0

    @property
    def root(self) -> Stage | None:
        """The outermost stage (the gateway, or the job's own stage)."""
        stages = self.stages
        return stages[0] if stages else None

    @property
    def name(self) -> str:
        """A short human label: ``GET /books/{id}`` for requests, the job name for jobs."""
        if self.protocol == "job":
            root = self.root
            return root.name if root is not None else "job"
        target = self.route or self.path or ""
        return f"{self.method} {target}" if self.method else target

    def of_kind(self, kind: str) -> list[Stage]:
        """The stages of one kind, in start order (for a timeline not read yet, only these are
        built)."""
        load = self._load
        if load is not None and self._stages is None:
            return [load.stage(i) for i in load.indexes(kind)]
        return [s for s in self.stages if s.kind == kind]

    def stage(self, stage_id: int) -> Stage:
        """The stage with id `stage_id` (its position in `stages`)."""
        load = self._load
        if load is not None and self._stages is None:
            return load.stage(stage_id)
        return self.stages[stage_id]

    def rows(self, kind: str) -> list[Row]:
        """The stages of one kind as ``(id, name, duration_ns, attrs)``, in start order — what
        the query analyzers read. For a timeline not read yet, no `Stage` object is built:
        analysis then allocates a few objects per timeline instead of several per stage."""
        load = self._load
        if load is not None and self._stages is None:
            return load.rows(kind)
        return [(s.id, s.name, s.duration_ns, s.attrs) for s in self.stages if s.kind == kind]

    def lineage(self, stage_id: int) -> Iterator[tuple[str, str]]:
        """``(kind, name)`` of the stage's parent, grandparent, ... up to the root (without
        building the stages of a timeline not read yet)."""
        load = self._load
        if load is not None and self._stages is None:
            yield from load.lineage(stage_id)
            return
        for st in self.ancestors(self.stage(stage_id)):
            yield st.kind, st.name

    def children(self, stage_id: int | None) -> list[Stage]:
        """The direct children of a stage (or the top-level stages for ``None``)."""
        return [s for s in self.stages if s.parent == stage_id]

    def ancestors(self, stage: Stage) -> Iterator[Stage]:
        """The stage's parent, grandparent, ... up to the root."""
        parent = stage.parent
        while parent is not None:
            st = self.stage(parent)
            yield st
            parent = st.parent

    def with_findings(self, findings: Sequence[Finding]) -> Timeline:
        """This timeline with `findings` added to its own (a copy; stages are shared, and a
        timeline not yet built stays lazy)."""
        if not findings:
            return self
        new = object.__new__(Timeline)
        _set(new, "_h", self._h)
        _set(new, "_stages", self._stages)
        _set(new, "_by_kind", self._by_kind)
        _set(new, "_load", self._load)
        _set(new, "findings", self.findings + tuple(findings))
        return new

    def to_dict(self) -> dict[str, Any]:
        """The timeline as plain JSON-serializable data, schema `stagetrace/timeline@3`."""
        return {
            "schema": SCHEMA,
            "trace_id": self.trace_id,
            "span_id": self.span_id,
            "parent_span_id": self.parent_span_id,
            "parent_is_remote": self.parent_is_remote,
            "trace_flags": self.trace_flags,
            "tracestate": self.tracestate,
            "request_id": self.request_id,
            "service": self.service,
            "framework": self.framework,
            "protocol": self.protocol,
            "method": self.method,
            "path": self.path,
            "route": self.route,
            "status": self.status,
            "start_unix_nano": self.start_unix_nano,
            "duration_ns": self.duration_ns,
            "stages": [s.to_dict() for s in self.stages],
            "summary": {"by_kind": {k: v.to_dict() for k, v in self.by_kind.items()}},
            "findings": [f.to_dict() for f in self.findings],
            "dropped_stages": self.dropped_stages,
        }

    @classmethod
    def from_dict(cls, data: Any) -> Timeline:
        """Rebuild a timeline from `to_dict()` output, of this version or an earlier one
        (``stagetrace/timeline@2``, ``@1``); `SchemaError` says what is wrong."""
        return _timeline_from_dict(data)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Timeline):
            return NotImplemented
        return self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"<Timeline {self.name!r} {self.framework}/{self.protocol} status={self.status} "
            f"{self.duration_ns / 1e6:.2f} ms trace={self.trace_id}>"
        )


_set = object.__setattr__


def _summarize(stages: Sequence[Stage]) -> dict[str, KindSummary]:
    acc: dict[str, list[int]] = {}
    for s in stages:
        a = acc.get(s.kind)
        if a is None:
            a = acc[s.kind] = [0, 0, 0]
        a[0] += 1
        a[1] += s.duration_ns
        a[2] += s.self_ns
    return {k: KindSummary(*v) for k, v in acc.items()}


# --- parsing --------------------------------------------------------------------------------


def _need(d: Mapping[str, Any], key: str, types: type | tuple[type, ...], where: str) -> Any:
    if not isinstance(d, Mapping):  # a corrupted file: `true` where an object belongs
        raise SchemaError(f"{where}: expected an object")
    if key not in d:
        raise SchemaError(f"{where}: missing field {key!r}")
    value = d[key]
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in _as_tuple(types)):
        raise SchemaError(f"{where}: field {key!r} has the wrong type ({type(value).__name__})")
    return value


def _as_tuple(types: type | tuple[type, ...]) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)


_NONE = type(None)


def _stage_from_dict(d: Any, index: int, kinds: frozenset[str] = KIND_SET) -> Stage:
    where = f"stages[{index}]"
    if not isinstance(d, Mapping):
        raise SchemaError(f"{where}: expected an object")
    kind = _need(d, "kind", str, where)
    if kind not in kinds:
        raise SchemaError(f"{where}: unknown stage kind {kind!r}")
    err = _need(d, "error", (Mapping, _NONE), where)
    error = None
    if err is not None:
        error = StageError(
            type=_need(err, "type", str, where + ".error"),
            message=_need(err, "message", str, where + ".error"),
        )
    phases = short_circuit = None
    if kind == "middleware":
        ph = _need(d, "phases", Mapping, where)
        phases = {
            "in": _need(ph, "in", int, where + ".phases"),
            "out": _need(ph, "out", int, where + ".phases"),
        }
        short_circuit = _need(d, "short_circuit", bool, where)
    return Stage(
        id=_need(d, "id", int, where),
        parent=_need(d, "parent", (int, _NONE), where),
        kind=kind,
        name=_need(d, "name", str, where),
        start_ns=_need(d, "start_ns", int, where),
        duration_ns=_need(d, "duration_ns", int, where),
        self_ns=_need(d, "self_ns", int, where),
        attrs=dict(_need(d, "attrs", Mapping, where)),
        error=error,
        phases=phases,
        short_circuit=short_circuit,
    )


def _timeline_from_dict(data: Any) -> Timeline:
    if not isinstance(data, Mapping):
        raise SchemaError("expected a JSON object")
    schema = data.get("schema")
    if schema not in READS:
        readers = ", ".join(repr(v) for v in READS[:-1]) + f" and {READS[-1]!r}"
        raise SchemaError(f"unsupported schema {schema!r} (this version reads {readers})")
    kinds = _KINDS_V1 if schema == SCHEMA_V1 else KIND_SET
    where = "timeline"
    parent = _parent_from_dict(data) if schema == SCHEMA else (None, False, 1, None)
    stages_raw = _need(data, "stages", list, where)
    stages = tuple(_stage_from_dict(s, i, kinds) for i, s in enumerate(stages_raw))
    for i, st in enumerate(stages):
        if st.id != i:
            raise SchemaError(f"stages[{i}]: id {st.id} is not its position {i}")
        if st.parent is not None and not 0 <= st.parent < i:
            raise SchemaError(f"stages[{i}]: parent {st.parent} does not precede it")
    summary = _need(data, "summary", Mapping, where)
    by_kind_raw = _need(summary, "by_kind", Mapping, "summary")
    by_kind = {
        k: KindSummary(
            count=_need(v, "count", int, f"summary.by_kind.{k}"),
            total_ns=_need(v, "total_ns", int, f"summary.by_kind.{k}"),
            self_ns=_need(v, "self_ns", int, f"summary.by_kind.{k}"),
        )
        for k, v in by_kind_raw.items()
    }
    findings = tuple(
        Finding(
            kind=_need(f, "kind", str, "finding"),
            message=_need(f, "message", str, "finding"),
            stages=tuple(_need(f, "stages", list, "finding")),
            attrs=dict(_need(f, "attrs", Mapping, "finding")),
        )
        for f in _need(data, "findings", list, where)
    )
    protocol = _need(data, "protocol", str, where)
    if protocol not in PROTOCOLS:
        raise SchemaError(f"timeline: unknown protocol {protocol!r}")
    return Timeline(
        trace_id=_need(data, "trace_id", str, where),
        span_id=_need(data, "span_id", str, where),
        request_id=_need(data, "request_id", str, where),
        service=_need(data, "service", str, where),
        framework=_need(data, "framework", str, where),
        protocol=protocol,
        method=_need(data, "method", (str, _NONE), where),
        path=_need(data, "path", (str, _NONE), where),
        route=_need(data, "route", (str, _NONE), where),
        status=_need(data, "status", (int, _NONE), where),
        start_unix_nano=_need(data, "start_unix_nano", int, where),
        duration_ns=_need(data, "duration_ns", int, where),
        stages=stages,
        by_kind=by_kind,
        findings=findings,
        dropped_stages=_need(data, "dropped_stages", int, where),
        parent_span_id=parent[0],
        parent_is_remote=parent[1],
        trace_flags=parent[2],
        tracestate=parent[3],
    )


_HEX = frozenset("0123456789abcdef")


def _parent_from_dict(data: Mapping[str, Any]) -> tuple[str | None, bool, int, str | None]:
    """The parent fields of a @3 document: (span id, remote, flags, tracestate), checked as
    the recorder writes them — an id that is 16 lowercase hex digits and not all zero (W3C's
    invalid id), a valid tracestate (normalized as an incoming header's), neither a remote
    flag nor a tracestate without a parent — so a timeline read from a file never exports as
    something it could not be."""
    where = "timeline"
    span = _need(data, "parent_span_id", (str, _NONE), where)
    remote = _need(data, "parent_is_remote", bool, where)
    flags = _need(data, "trace_flags", int, where)
    state = _need(data, "tracestate", (str, _NONE), where)
    if span is not None and (len(span) != 16 or not _HEX.issuperset(span) or not span.strip("0")):
        raise SchemaError(
            f"timeline: parent_span_id {span[:40]!r} is not 16 lowercase hex digits (not all zero)"
        )
    if not 0 <= flags <= 0xFF:
        raise SchemaError(f"timeline: trace_flags {flags} is not a byte (0-255)")
    if span is None and (remote or state is not None):
        raise SchemaError("timeline: parent_is_remote or tracestate without a parent_span_id")
    if state is not None:
        from ._http.headers import tracestate

        valid = tracestate(state)
        if valid is None:
            raise SchemaError(f"timeline: tracestate {state[:40]!r} is not a W3C tracestate")
        state = valid  # normalized, as the recorder writes it
    return span, remote, flags, state
