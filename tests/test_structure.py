"""The package's structure keeps its promises: data flows one way (no import cycles), and only
the recorder knows the layout of a record."""

from __future__ import annotations

import ast
from pathlib import Path

import stagetrace

SRC = Path(stagetrace.__file__).parent


def _module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in SRC.rglob("*.py")}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every stagetrace module `name` imports, at module level or inside functions (imports
    under ``if TYPE_CHECKING:`` don't run and don't count)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for sub in child.orelse:
                    visit(sub)
                continue
            if isinstance(child, ast.Import):
                for alias in child.names:
                    if alias.name.startswith("stagetrace"):
                        found.add(_closest(alias.name, known))
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")
                    base = base[: len(base) - (child.level - 1)]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                if target.startswith("stagetrace"):
                    for alias in child.names:
                        sub = f"{target}.{alias.name}"
                        found.add(sub if sub in known else _closest(target, known))
            visit(child)

    visit(tree)
    found.discard(name)
    return found


def _closest(target: str, known: set[str]) -> str:
    while target not in known and "." in target:
        target = target.rpartition(".")[0]
    return target


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    WHITE, GREY, BLACK = 0, 1, 2
    color = dict.fromkeys(graph, WHITE)
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        color[node] = GREY
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in color:
                continue
            if color[nxt] == GREY:
                return [*stack[stack.index(nxt) :], nxt]
            if color[nxt] == WHITE:
                found = dfs(nxt)
                if found:
                    return found
        stack.pop()
        color[node] = BLACK
        return None

    for node in sorted(graph):
        if color[node] == WHITE:
            found = dfs(node)
            if found:
                return found
    return None


def test_the_import_graph_of_the_package_has_no_cycle():
    """Data flows one way: adapters → recorder → pipeline → sinks, with options and state below
    them all. A cycle anywhere (function-level imports included) fails with its path."""
    graph = _graph()
    # The facade imports its own submodules; submodules importing the facade would be a cycle
    # the facade hides, so they are checked too (nothing may import the package `stagetrace`).
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_the_core_does_not_import_the_adapters_or_sinks():
    """The recorder, pipeline and model know nothing about frameworks or output formats."""
    graph = _graph()
    core = ["stagetrace._recorder", "stagetrace._pipeline", "stagetrace._model"]
    for name in core:
        bad = {
            m for m in graph[name] if m.split(".")[1] in ("django", "starlette", "asgi", "sinks")
        }
        assert not bad, f"{name} imports {bad}"


_SLOTS = {
    "TL",
    "PARENT",
    "KIND",
    "NAME",
    "START",
    "END",
    "ATTRS",
    "ERROR",
    "OWNER",
    "AUX",
    "M_IN",
    "M_OUT",
    "M_SHORT",
    "M_SPLIT",
}


def test_only_the_recorder_touches_record_slots():
    """No module outside the recorder indexes a record or reads its slot constants
    (`_recorder.ATTRS`, `rec[5]`, ...): the record API is the only way in."""
    offenders = []
    for name, path in _modules().items():
        if name == "stagetrace._recorder":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and node.attr in _SLOTS | {"_OVERFLOW", "_MARKS"}
                and isinstance(node.value, ast.Name)
                and node.value.id in ("_recorder", "R")
            ):
                offenders.append(f"{name}:{node.lineno} {node.value.id}.{node.attr}")
            if isinstance(node, ast.ImportFrom) and (node.module or "").endswith("_recorder"):
                names = {a.name for a in node.names}
                if names & (_SLOTS | {"_get", "_set", "_OVERFLOW", "_MARKS"}):
                    offenders.append(f"{name}:{node.lineno} imports {names & _SLOTS}")
            if (
                isinstance(node, ast.Attribute)
                and node.attr in ("_get", "_set", "_current")
                and isinstance(node.value, ast.Name)
                and node.value.id == "_recorder"
            ):
                offenders.append(f"{name}:{node.lineno} _recorder.{node.attr}")
    assert offenders == []


def test_one_parser_per_protocol_and_one_qualname_helper():
    """The ASGI scope, the WSGI environ and request headers are parsed in one place each; the
    adapters share one helper for naming the application's objects."""
    defs: dict[str, list[str]] = {}
    for name, path in _modules().items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                defs.setdefault(node.name, []).append(name)
    assert defs["qualname"] == ["stagetrace._names"]
    assert defs.get("_qualname") is None
    assert defs["queue_time_ns"] == ["stagetrace._http.headers"]
    assert defs["traceparent"] == ["stagetrace._http.headers"]
    assert [m for m in defs.get("_FactoryProxy", [])] == []
