"""The timeline schema is a tested contract: model, JSON Schema and documentation agree."""

from __future__ import annotations

import json
import re
from importlib import resources

import jsonschema
import pytest

import stagetrace
from stagetrace import SCHEMA, SchemaError, Timeline

from .conftest import begin
from .helpers import SCHEMA_DOC, doc_example


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(resources.files("stagetrace").joinpath("timeline.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def doc_fields(section: str) -> list[str]:
    """Field names listed in the table under '## <section>' of the schema document."""
    text = SCHEMA_DOC.read_text(encoding="utf-8")
    body = text.split(f"\n## {section}\n", 1)[1].split("\n#", 1)[0]
    return re.findall(r"^\| `([a-z_]+)` \|", body, re.M)


def test_documentation_lists_exactly_the_schema_fields(validator):
    """Each table in docs/schema.md names exactly the properties of the JSON Schema."""
    schema = validator.schema
    assert doc_fields("Timeline") == list(schema["properties"])
    assert doc_fields("Stage") == list(schema["$defs"]["stage"]["properties"])
    assert doc_fields("Finding") == list(schema["$defs"]["finding"]["properties"])
    kinds = re.findall(r"^\| `([a-z.]+)` \| [A-Z]", SCHEMA_DOC.read_text(), re.M)
    assert tuple(k for k in kinds if k in stagetrace.KINDS) == stagetrace.KINDS
    assert tuple(schema["$defs"]["kind"]["enum"]) == stagetrace.KINDS


def test_documented_example_is_valid_and_round_trips(validator):
    """The example in the document validates and survives from_dict/to_dict unchanged."""
    data = doc_example()
    validator.validate(data)
    assert Timeline.from_dict(data).to_dict() == data


def test_recorded_timelines_match_the_schema(validator):
    """Timelines from capture(), with middleware, errors, findings and drops, validate."""
    from stagetrace import _recorder

    stagetrace.configure(
        max_stages=6,
        analyzers=[lambda tl: [stagetrace.Finding("demo", "one finding", (1,), {"n": 1})]],
    )
    with stagetrace.capture() as got:
        root = begin("GET /x", framework="test", method="GET", path="/x")
        mw = _recorder.enter_middleware("app.M")
        _recorder.inner_begin(mw)
        with pytest.raises(ValueError), stagetrace.stage("v", kind="view", n=1, f=1.5, l=[1, 2]):
            raise ValueError("bad")
        _recorder.inner_end(mw)
        _recorder.exit(mw)
        for _ in range(10):
            with stagetrace.stage("q", kind="db.query"):
                pass
        _recorder.set_status(500)
        _recorder.end(root)
        with stagetrace.timeline("job"):
            pass
    for tl in got:
        data = tl.to_dict()
        validator.validate(data)
        assert json.loads(json.dumps(data)) == data
        assert data["schema"] == SCHEMA
        assert Timeline.from_dict(data) == tl
    assert got[0].dropped_stages == 7 and got[0].status == 500


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.pop("trace_id"), "missing field 'trace_id'"),
        (lambda d: d.update(schema="stagetrace/timeline@4"), "unsupported schema"),
        (lambda d: d.pop("parent_span_id"), "missing field 'parent_span_id'"),
        (lambda d: d.update(parent_span_id="B7AD6B7169203331"), "not 16 lowercase hex digits"),
        (lambda d: d.update(parent_span_id="b7ad"), "not 16 lowercase hex digits"),
        (lambda d: d.update(parent_is_remote=1), "'parent_is_remote' has the wrong type"),
        (lambda d: d.update(parent_span_id="0" * 16), "not 16 lowercase hex digits"),
        (lambda d: d.update(trace_flags=256), "trace_flags 256 is not a byte"),
        (lambda d: d.update(trace_flags=-1), "trace_flags -1 is not a byte"),
        (lambda d: d.update(trace_flags=True), "'trace_flags' has the wrong type"),
        (lambda d: d.update(tracestate=["a=b"]), "'tracestate' has the wrong type"),
        (lambda d: d.update(tracestate="\x00 not,,valid"), "is not a W3C tracestate"),
        (lambda d: d.update(tracestate=""), "is not a W3C tracestate"),
        (
            lambda d: d.update(parent_span_id=None, tracestate=None),
            "parent_is_remote or tracestate without a parent_span_id",
        ),
        (
            lambda d: d.update(parent_span_id=None, parent_is_remote=False),
            "parent_is_remote or tracestate without a parent_span_id",
        ),
        (
            lambda d: (
                d.update(schema="stagetrace/timeline@1") or d["stages"][4].update(kind="dependency")
            ),
            "unknown stage kind 'dependency'",
        ),
        (lambda d: d["stages"][1].update(kind="sql"), "unknown stage kind 'sql'"),
        (lambda d: d["stages"][2].update(id=9), "id 9 is not its position 2"),
        (lambda d: d["stages"][1].pop("phases"), "missing field 'phases'"),
        (lambda d: d.update(status="200"), "'status' has the wrong type"),
        (lambda d: d.update(duration_ns=True), "'duration_ns' has the wrong type"),
        (lambda d: d["stages"][3].update(parent=5), "parent 5 does not precede it"),
        (
            lambda d: d["summary"]["by_kind"].update(view=True),
            "summary.by_kind.view: expected an object",
        ),
        (
            lambda d: d["summary"]["by_kind"].update(view="count"),
            "summary.by_kind.view: expected an object",
        ),
        (lambda d: d["findings"].append(1), "finding: expected an object"),
        (lambda d: d["findings"].append("kind"), "finding: expected an object"),
    ],
)
def test_from_dict_explains_what_is_wrong(mutate, message):
    """Bad input to from_dict raises SchemaError with a precise reason."""
    data = doc_example()
    mutate(data)
    with pytest.raises(SchemaError, match=re.escape(message)):
        Timeline.from_dict(data)


def test_version_one_documents_are_read_and_written_back_as_the_current_version(validator):
    """A stagetrace/timeline@1 document (no `dependency` stages) reads unchanged, and to_dict()
    writes it as the current version, which validates against the shipped JSON Schema."""
    data = doc_example()
    for key in PARENT_FIELDS:
        del data[key]
    data["schema"] = "stagetrace/timeline@1"
    tl = Timeline.from_dict(data)
    out = tl.to_dict()
    assert out["schema"] == SCHEMA == "stagetrace/timeline@3"
    validator.validate(out)
    assert {**out, "schema": "stagetrace/timeline@1"} == {**data, **NO_PARENT}


#: The fields new in @3, and what a document of an earlier version is read with.
PARENT_FIELDS = ("parent_span_id", "parent_is_remote", "trace_flags", "tracestate")
NO_PARENT = {
    "parent_span_id": None,
    "parent_is_remote": False,
    "trace_flags": 1,
    "tracestate": None,
}


def test_version_two_documents_are_read_without_a_parent(validator):
    """A @2 document has no parent fields: it reads as a timeline that started its own trace,
    and the parent fields of a @2 document that happens to carry them are ignored (readers of a
    version read only its fields)."""
    data = doc_example()
    data["schema"] = "stagetrace/timeline@2"
    tl = Timeline.from_dict(data)
    assert (tl.parent_span_id, tl.parent_is_remote, tl.trace_flags, tl.tracestate) == (
        None,
        False,
        1,
        None,
    )
    out = tl.to_dict()
    validator.validate(out)
    assert {**out, "schema": "stagetrace/timeline@2"} == {**data, **NO_PARENT}


def test_the_parent_fields_round_trip(validator):
    """@3's parent fields survive from_dict/to_dict: a remote parent, a local one with the
    sampled flag off and no tracestate, and none; the JSON Schema accepts each and refuses a
    remote flag without a parent, as from_dict does."""
    data = doc_example()
    tl = Timeline.from_dict(data)
    assert (tl.parent_span_id, tl.parent_is_remote, tl.trace_flags, tl.tracestate) == (
        "b7ad6b7169203331",
        True,
        1,
        "congo=t61rcWkgMzE",
    )
    data.update(parent_is_remote=False, trace_flags=0, tracestate=None)
    validator.validate(data)
    assert Timeline.from_dict(data).to_dict() == data
    data.update(parent_span_id=None, trace_flags=1)
    validator.validate(data)
    assert Timeline.from_dict(data).to_dict() == data
    data.update(parent_is_remote=True)
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(data)


def test_what_a_timeline_writes_reads_back(validator):
    """A timeline built by hand (a custom adapter, a test) never writes parent fields that
    from_dict would refuse: without a parent span the remote flag and tracestate are dropped;
    a valid tracestate with optional white space reads back normalized."""
    tl = Timeline.from_dict(doc_example())
    orphan = Timeline(
        tl.trace_id, tl.span_id, tl.request_id, tl.service, tl.framework, tl.protocol,
        tl.method, tl.path, tl.route, tl.status, tl.start_unix_nano, tl.duration_ns,
        tl.stages, tl.by_kind, tl.findings, tl.dropped_stages,
        parent_is_remote=True, tracestate="a=1",
    )  # fmt: skip
    data = orphan.to_dict()
    validator.validate(data)
    assert (data["parent_is_remote"], data["tracestate"]) == (False, None)
    assert Timeline.from_dict(data) == orphan
    spaced = {**doc_example(), "tracestate": "a=1 , b=2"}
    assert Timeline.from_dict(spaced).tracestate == "a=1,b=2"
    with pytest.raises(ValueError, match="trace_flags 300 is not a byte"):
        Timeline(**{**_args(tl), "trace_flags": 300})


def _args(tl: Timeline) -> dict[str, object]:
    names = "trace_id span_id request_id service framework protocol method path route status"
    out: dict[str, object] = {n: getattr(tl, n) for n in names.split()}
    out.update(start_unix_nano=tl.start_unix_nano, duration_ns=tl.duration_ns, stages=tl.stages)
    return out


def test_the_dependency_kind_is_new_in_version_two(validator):
    """A `dependency` stage is valid in @2 (model and JSON Schema) and in no earlier version."""
    data = doc_example()
    data["stages"][5]["kind"] = "dependency"
    data["summary"]["by_kind"]["dependency"] = data["summary"]["by_kind"].pop("orm.compile")
    validator.validate(data)
    assert Timeline.from_dict(data).stages[5].kind == "dependency"
    data["schema"] = "stagetrace/timeline@1"
    with pytest.raises(SchemaError, match="unknown stage kind 'dependency'"):
        Timeline.from_dict(data)
