"""The console waterfall: `render_waterfall` and the `ConsoleSink` that prints it.

Written for people reading a terminal, from 40 columns up (80 is the design width):

* every line fits the width; an error marker is never cut away, names are shortened to their
  class or function first, indentation is capped, the bar shrinks before names do;
* consecutive sibling subtrees of the same shape (an N+1) collapse into one row per stage of
  the shape, with the repeat count and totals over the repeats, unless ``verbose``;
* details (rows, cache hit or miss, outbound status, middleware in/out) go on the row when there
  is room; ``verbose`` adds detail lines (SQL text, URLs, error messages), ``sql`` the SQL only.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import sys
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import IO

from .._model import AttrValue, Stage, Timeline

#: Narrowest rendering; a smaller width is raised to this.
MIN_WIDTH = 40
#: The width used when there is no terminal to follow and none was given.
DEFAULT_WIDTH = 120

_RESET = "\x1b[0m"
_DIM = "\x1b[2m"
_BOLD = "\x1b[1m"
_RED = "\x1b[31m"
_YELLOW = "\x1b[33m"
_KIND_COLOR = {
    "gateway": "\x1b[37m",
    "middleware": "\x1b[35m",
    "route": "\x1b[36m",
    "view": "\x1b[32m",
    "dependency": "\x1b[32m",
    "orm.compile": "\x1b[33m",
    "db.connect": "\x1b[34m",
    "db.query": "\x1b[34m",
    "orm.fetch": "\x1b[33m",
    "transaction": "\x1b[34m",
    "template": "\x1b[36m",
    "serialize": "\x1b[32m",
    "cache": "\x1b[31m",
    "session": "\x1b[35m",
    "response.write": "\x1b[37m",
    "task": "\x1b[32m",
    "http.client": "\x1b[31m",
    "custom": "\x1b[37m",
}

#: Short kind tags, used when the full kind names would crowd out the stage names.
_SHORT_KIND = {
    "gateway": "gateway",
    "middleware": "mw",
    "route": "route",
    "view": "view",
    "dependency": "dep",
    "orm.compile": "compile",
    "db.connect": "connect",
    "db.query": "sql",
    "orm.fetch": "fetch",
    "transaction": "tx",
    "template": "tpl",
    "serialize": "ser",
    "cache": "cache",
    "session": "session",
    "response.write": "write",
    "task": "task",
    "http.client": "http",
    "custom": "custom",
}

#: Kinds whose names are code paths, shown as their class or function (``SessionMiddleware``)
#: unless ``verbose``.
_CODE_KINDS = frozenset({"middleware", "view", "dependency", "task", "serialize", "custom"})
#: Kinds whose names hold a model (``shop.Book``): shortened only when there is no room.
_MODEL_KINDS = frozenset({"orm.fetch", "orm.compile"})
#: Kinds whose names are paths read from their end (``…/_book_row.html``).
_TAIL_KINDS = frozenset({"template"})

#: Attribute names, current first, then the names recorded by earlier versions.
_SQL_TEXT = ("db.query.text", "db.statement")
_DB_ROWS = ("db.response.returned_rows", "db.rows")
_BATCH = ("db.operation.batch.size", "db.batch_size")

_MAX_PERIOD = 4  # longest repeating unit of siblings that collapses (A B A B ... -> 2 rows)


@dataclass(frozen=True, slots=True)
class _Glyphs:
    full: str
    thin: str
    tiny: str
    light: str
    arrow: str
    cross: str
    times: str
    ellipsis: str
    dot: str


_UNICODE = _Glyphs("█", "─", "▏", "░", "→", "✗", "×", "…", "·")
_ASCII = _Glyphs("#", "-", "|", ":", "->", "!", "x", "~", "|")

#: Unicode bidi controls: embeddings, overrides, isolates and marks. Raw on a terminal, one in
#: a path (``/invoice-\u202efdp.exe``) shows the rest of the line reversed (``exe.pdf``).
BIDI_CONTROLS = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c"

# Control characters in names, paths and messages come from requests; never let them reach a
# terminal (an ESC in a URL path would otherwise be an escape sequence, a bidi override would
# reorder what is shown). Lone surrogates (a file name from os.fsdecode) too: no stream can
# encode them.
_CONTROL = {
    c: "?"
    for c in (
        *range(0x20),
        *range(0x7F, 0xA0),
        *range(0xD800, 0xE000),
        *map(ord, BIDI_CONTROLS),
    )
}


def _clean(text: str) -> str:
    """`text` safe to print on a terminal: each control character, bidi control and lone
    surrogate as ``?`` (one character for one, so widths hold). `show` and `summary` too."""
    return text.translate(_CONTROL)


def _num(ns: int) -> str:
    """Milliseconds in at most 5 characters: ``0.05``, ``12.40``, ``123.4``, ``5321``, then
    seconds (``812s``), minutes (``95m``) and hours (``26h``)."""
    ms = ns / 1e6
    if ms < 99.995:
        return f"{ms:.2f}"
    if ms < 999.95:
        return f"{ms:.1f}"
    if ms < 99999.5:
        return f"{ms:.0f}"
    for unit, size in (("s", 1e3), ("m", 6e4), ("h", 3.6e6)):
        if ms / size < 9999.5:
            return f"{ms / size:.0f}{unit}"
    return "long"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _first(attrs: Mapping[str, AttrValue], names: Sequence[str]) -> AttrValue:
    for name in names:
        if name in attrs:
            return attrs[name]
    return None


def _int(value: AttrValue) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


_MODULE_PATH = re.compile(r"(?<![\w./])[a-z_]\w*(?:\.[\w<>]+)+(?![\w/])")


def _short_path(path: str) -> str:
    """``django.contrib.sessions.middleware.SessionMiddleware`` -> ``SessionMiddleware``,
    ``shop.views.BookDetail.get`` -> ``BookDetail.get``, ``shop.views.book_list`` ->
    ``book_list``: from the first capitalized part (a class) on, else the last part."""
    parts = path.split(".")
    for i, part in enumerate(parts):
        if part[:1].isupper():
            return ".".join(parts[i:])
    return parts[-1]


def _short_name(name: str) -> str:
    """Every module path inside a name shortened (``Response rest_framework.renderers.X``)."""
    return _MODULE_PATH.sub(lambda m: _short_path(m.group(0)), name)


def _cut(text: str, room: int, ellipsis: str, *, tail: bool = False) -> str:
    """`text` in at most `room` characters, marked with `ellipsis` where it was cut."""
    if len(text) <= room:
        return text
    if room <= len(ellipsis):
        return ellipsis[:room] if room > 0 else ""
    keep = room - len(ellipsis)
    return ellipsis + text[len(text) - keep :] if tail else text[:keep] + ellipsis


_QUOTED_IDENT = re.compile(r'"([A-Za-z_][A-Za-z0-9_$]*)"')
_SELECT_LIST = re.compile(r"^(SELECT\s+(?:DISTINCT\s+)?)(.+?)(\s+FROM\s)", re.I)


@functools.lru_cache(maxsize=128)  # an N+1 repeats one text; texts have no values
def short_sql(text: str) -> str:
    """SQL for one line: whitespace collapsed, identifier quotes dropped, a long select list
    shown as ``…`` (``SELECT … FROM shop_publisher WHERE shop_publisher.id = %s LIMIT 21``).
    Only the recorded text is used, which has placeholders, never parameter values."""
    sql = " ".join(text.split())
    sql = _QUOTED_IDENT.sub(r"\1", sql)
    m = _SELECT_LIST.match(sql)
    if m and len(m.group(2)) > 24 and "select" not in m.group(2).lower():
        sql = m.group(1) + "…" + m.group(3) + sql[m.end() :]
    return sql


# --- the rows: a tree walk that collapses repeated sibling subtrees ---------------------------


def _shapes(stages: Sequence[Stage], children: list[list[int]]) -> list[int]:
    """An id per stage, equal for subtrees of the same shape: kind, name, error type and the
    shapes of the children, in order. Parents precede children, so one backward pass does."""
    interned: dict[tuple[object, ...], int] = {}
    shape = [0] * len(stages)
    for i in range(len(stages) - 1, -1, -1):
        st = stages[i]
        key = (
            st.kind,
            st.name,
            None if st.error is None else st.error.type,
            tuple(shape[c] for c in children[i]),
        )
        shape[i] = interned.setdefault(key, len(interned))
    return shape


def _runs(
    positions: list[list[int]], shape: list[int], depth: int, collapse: bool
) -> list[tuple[int, list[int]]]:
    """Sibling positions (each a list of stages of one shape) as rows: a run of a repeating
    unit of up to `_MAX_PERIOD` positions becomes one row per position of the unit."""
    n = len(positions)
    if not collapse or n < 2:
        return [(depth, p) for p in positions]
    s = [shape[p[0]] for p in positions]
    rows: list[tuple[int, list[int]]] = []
    i = 0
    while i < n:
        best_k, best_r = 1, 1
        for k in range(1, _MAX_PERIOD + 1):
            if i + 2 * k > n:
                break
            unit = s[i : i + k]
            r = 1
            while i + (r + 1) * k <= n and s[i + r * k : i + (r + 1) * k] == unit:
                r += 1
            # a longer unit must repeat three times: two alternations are clearer unfolded
            if (r >= 2 if k == 1 else r >= 3) and r * k > best_r * best_k:
                best_k, best_r = k, r
        if best_r >= 2:
            for j in range(best_k):
                members = [m for q in range(best_r) for m in positions[i + q * best_k + j]]
                rows.append((depth, members))
            i += best_k * best_r
        else:
            rows.append((depth, positions[i]))
            i += 1
    return rows


def _tree_rows(timeline: Timeline, collapse: bool) -> list[tuple[int, list[int]]]:
    """(depth, member stage ids) in depth-first order; one member unless collapsed."""
    stages = timeline.stages
    n = len(stages)
    children: list[list[int]] = [[] for _ in range(n)]
    roots: list[int] = []
    for st in stages:
        p = st.parent
        if p is not None and 0 <= p < n and p != st.id:
            children[p].append(st.id)
        else:
            roots.append(st.id)
    shape = _shapes(stages, children) if collapse else []
    out: list[tuple[int, list[int]]] = []
    stack = list(reversed(_runs([[r] for r in roots], shape, 0, collapse)))
    while stack:  # iterative: a deep tree must not hit the recursion limit
        depth, members = stack.pop()
        out.append((depth, members))
        first = children[members[0]]
        if first:
            positions = [[children[m][p] for m in members] for p in range(len(first))]
            # A middleware whose only child is the next middleware is one layer of a chain:
            # the chain is listed at one indentation, so eight layers don't eat eight columns.
            chain = (
                len(first) == 1
                and stages[members[0]].kind == "middleware"
                and stages[first[0]].kind == "middleware"
            )
            stack.extend(reversed(_runs(positions, shape, depth + (not chain), collapse)))
    return out


@dataclass(slots=True)
class _Row:
    depth: int
    members: list[Stage]
    first: Stage
    start: int
    dur: int
    self_ns: int
    end: int
    forms: list[str]  # names to try, longest first
    err: str  # the error marker and type, or ""


def _make_row(
    timeline: Timeline,
    depth: int,
    ids: list[int],
    g: _Glyphs,
    verbose: bool,
    names: dict[tuple[str, str], list[str]],
) -> _Row:
    members = [timeline.stages[i] for i in ids]
    st = members[0]
    key = (st.kind, st.name)
    forms = names.get(key)
    if forms is None:  # an N+1 repeats its names: work each out once
        forms = names[key] = _name_forms(st, verbose)
    err = "" if st.error is None else f" {g.cross} {_clean(st.error.type).rpartition('.')[2]}"
    if len(members) == 1:
        return _Row(
            depth, members, st, st.start_ns, st.duration_ns, st.self_ns, st.end_ns, forms, err
        )
    return _Row(
        depth,
        members,
        st,
        min(s.start_ns for s in members),
        sum(s.duration_ns for s in members),
        sum(s.self_ns for s in members),
        max(s.end_ns for s in members),
        forms,
        err,
    )


# --- what a row says -----------------------------------------------------------------------


def _details(row: _Row, g: _Glyphs, finding_of: Mapping[int, str]) -> list[str]:
    """Short facts for the row, most useful first; shown while there is room."""
    st, members = row.first, row.members
    kind, n = st.kind, len(row.members)
    out: list[str] = []
    if kind == "middleware" and n == 1 and st.phases is not None:
        if st.short_circuit:
            out.append("short-circuit")
        elif st.phases["out"]:  # hooks such as process_view have no inner call to split at
            out.append(f"in {_num(st.phases['in'])} out {_num(st.phases['out'])}")
    if kind == "http.client":
        codes = sorted(
            {c for s in members if (c := _int(s.attrs.get("http.response.status_code")))}
        )
        if codes:
            out.append(f"{g.arrow} " + ",".join(str(c) for c in codes[:3]))
    found = sorted({finding_of[s.id] for s in members if s.id in finding_of})
    out.extend(f"! {_clean(k)}" for k in found)
    if kind in ("db.query", "orm.fetch"):
        names = _DB_ROWS if kind == "db.query" else ("rows", *_DB_ROWS)
        counts = [_int(_first(s.attrs, names)) for s in members]
        if any(c is not None for c in counts):
            out.append(_plural(sum(c or 0 for c in counts), "row"))
    if kind == "db.query":
        batch = [b for s in members if (b := _int(_first(s.attrs, _BATCH)))]
        if batch:
            out.append(f"batch {sum(batch)}")
        dups = sum(1 for s in members if "stagetrace.duplicate_of" in s.attrs)
        if dups:
            out.append("duplicate" if n == 1 else f"{dups} duplicates")
    if kind == "cache":
        out.extend(_cache_detail(members))
    wait = sum(_int(s.attrs.get("asgi.thread_wait_ns")) or 0 for s in members)
    if wait >= 50_000:
        out.append(f"thread wait {_num(wait)}")
    if any(s.attrs.get("unfinished") is True for s in members):
        out.append("unfinished")
    return out


def _cache_detail(members: list[Stage]) -> list[str]:
    hits = keys = 0
    for s in members:
        many_hits, many_keys = _int(s.attrs.get("cache.hits")), _int(s.attrs.get("cache.keys"))
        if many_hits is not None and many_keys is not None:
            hits, keys = hits + many_hits, keys + many_keys
        elif isinstance(s.attrs.get("cache.hit"), bool):
            hits, keys = hits + bool(s.attrs["cache.hit"]), keys + 1
    if not keys:
        return []
    if keys == 1:
        return ["hit" if hits else "miss"]
    return [f"{hits}/{keys} hits"]


def _detail_lines(
    row: _Row, details: list[str], label: str, sql: bool, verbose: bool, origin: bool
) -> list[tuple[list[str], str]]:
    """Detail lines under a row, as parts to wrap and their separator: with `verbose`, the full
    name and the details that did not fit on the row, the outbound URL, the error where it was
    raised (`origin`); with `sql` or `verbose`, the SQL text and, with `verbose`, where the
    first repeat of that text came from."""
    st = row.first
    out: list[tuple[list[str], str]] = []
    if verbose:
        name = _clean(st.name)
        facts = [name] if name not in label else []
        facts += [d for d in details if d not in label]
        if facts:
            out.append((facts, "  "))
    if st.kind == "db.query" and (sql or verbose):
        texts = {t for s in row.members if isinstance(t := _first(s.attrs, _SQL_TEXT), str)}
        text = _first(st.attrs, _SQL_TEXT)
        if isinstance(text, str):
            more = [f"(+{len(texts) - 1} other texts)"] if len(texts) > 1 else []
            out.append((_clean(short_sql(text)).split(" ") + more, " "))
        where = st.attrs.get("code.file.path")
        if verbose and isinstance(where, str):
            line = st.attrs.get("code.line.number", "?")
            out.append((["first", "repeat", "at", _clean(f"{where}:{line}")], " "))
    if not verbose:
        return out
    a = st.attrs
    if st.kind == "http.client" and isinstance(a.get("server.address"), str):
        port = a.get("server.port")
        url = f"{a.get('url.scheme', 'http')}://{a['server.address']}"
        url += f":{port}" if port not in (None, 80, 443) else ""
        url += str(a.get("url.path") or "")
        url += f"?{a['url.query']}" if a.get("url.query") else ""
        out.append(([_clean(url)] + (["(query names only)"] if a.get("url.query") else []), " "))
    if st.error is not None and origin:
        out.append(([_clean(w) for w in f"{st.error.type}: {st.error.message}".split()], " "))
    return out


# --- layout --------------------------------------------------------------------------------


@dataclass(slots=True)
class _Layout:
    width: int
    show_start: bool
    num_w: int  # the numbers block, without the two spaces after it
    label_w: int
    bar_w: int
    short_kinds: bool
    step: int  # indentation per level
    cap: int  # most columns of indentation


def _numbers_width(show_start: bool) -> int:
    return 17 if show_start else 11


def _name_forms(st: Stage, verbose: bool) -> list[str]:
    """Names to try, longest first."""
    full = _clean(st.name)
    if st.kind not in _CODE_KINDS and st.kind not in _MODEL_KINDS:
        return [full]
    short = _short_name(full)
    if st.kind in _CODE_KINDS and not verbose:
        return [short]
    return [full, short] if short != full else [full]


def _head(row: _Row, lay: _Layout, g: _Glyphs) -> str:
    """Indentation, repeat count and kind tag of a row."""
    indent = " " * min(row.depth * lay.step, lay.cap)
    count = f"{len(row.members)}{g.times} " if len(row.members) > 1 else ""
    tag = _SHORT_KIND.get(row.first.kind, row.first.kind) if lay.short_kinds else row.first.kind
    return f"{indent}{count}{tag} "


def _label(row: _Row, lay: _Layout, g: _Glyphs, details: list[str], verbose: bool) -> str:
    """The row's label in exactly `lay.label_w` characters. The error marker is never dropped:
    details, then the name, then the error type's text give way first (indentation is capped
    for all rows alike by the layout, so the tree keeps its shape)."""
    room = lay.label_w
    st = row.first
    head = _head(row, lay, g)
    err = row.err
    forms = row.forms
    min_name = min(len(forms[-1]), 6)
    if err and len(head) + min_name + len(err) > room:  # the type's text goes, not the ✗
        err = _cut(err, max(len(g.cross) + 1, room - len(head) - min_name), g.ellipsis)
    if len(head) + len(err) > room - 1:  # a head too long for any name: cut it, keep the ✗
        head = _cut(head, max(0, room - len(err) - 1), g.ellipsis)
    name_room = room - len(head) - len(err)
    name = next((f for f in forms if len(f) <= name_room), None)  # a name before details
    if name is None:
        name = _cut(forms[-1], name_room, g.ellipsis, tail=st.kind in _TAIL_KINDS)
    text = head + name + err
    for d in details:
        if len(text) + 2 + len(d) <= room:
            text += "  " + d
    return text.ljust(room)


def _needed(row: _Row, lay: _Layout, details: list[str] | None) -> int:
    """Columns the row's label wants: head, full name, error, and `details`."""
    indent = min(row.depth * lay.step, lay.cap)
    count = len(str(len(row.members))) + 2 if len(row.members) > 1 else 0
    tag = _SHORT_KIND.get(row.first.kind, row.first.kind) if lay.short_kinds else row.first.kind
    more = sum(len(d) + 2 for d in details) if details else 0
    return indent + count + len(tag) + 1 + len(row.forms[0]) + len(row.err) + more


def _layout(width: int, rows: list[_Row], details: list[list[str]]) -> _Layout:
    """Column widths: the numbers, then the label (as wide as the rows need, between the bar's
    largest and smallest share), then the bar. Full kind names when every row's essentials
    (indentation, kind, name, error) fit with them, short tags otherwise. Names may narrow the
    bar to its smallest share, optional details to a little above that."""
    show_start = width >= 64
    num_w = _numbers_width(show_start)
    avail = width - num_w - 4  # two spaces after the numbers, two before the bar
    bar_min = max(8, width // 5)
    bar_max = max(bar_min, (width - num_w) * 9 // 20)
    max_depth = max((r.depth for r in rows), default=0)
    label_max = avail - bar_min
    lay = _Layout(width, show_start, num_w, label_max, bar_min, False, 1, max(2, label_max // 4))
    if width >= 100 and max_depth * 2 <= lay.cap:
        lay.step = 2
    if max((_needed(r, lay, None) for r in rows), default=0) > label_max:
        lay.short_kinds = True
    essential = max((_needed(r, lay, None) for r in rows), default=0)
    wanted = max((_needed(r, lay, d) for r, d in zip(rows, details, strict=True)), default=0)
    # names may take the bar down to its smallest; details down to a quarter above that
    for_details = avail - (bar_min + (bar_max - bar_min) // 4)
    lay.label_w = max(avail - bar_max, min(wanted, for_details), min(essential, label_max))
    lay.bar_w = avail - lay.label_w
    return lay


def _phases_everywhere_or_nowhere(
    rows: list[_Row], details: list[list[str]], lay: _Layout
) -> list[list[str]]:
    """The details to try on the rows: middleware in/out times on every middleware row or on
    none, since a chain where some rows have them reads as if the others had no phases."""
    phased = [
        (r, d)
        for r, d in zip(rows, details, strict=True)
        if r.first.kind == "middleware" and d[:1] and d[0].startswith("in ")
    ]
    if not any(_needed(r, lay, d[:1]) > lay.label_w for r, d in phased):
        return details
    return [
        d[1:] if r.first.kind == "middleware" and d[:1] and d[0].startswith("in ") else d
        for r, d in zip(rows, details, strict=True)
    ]


# --- bars ----------------------------------------------------------------------------------


def _bar(row: _Row, total: int, width: int, g: _Glyphs) -> str:
    if total <= 0 or width <= 0:
        return ""
    scale = width / total
    if len(row.members) > 1:
        return _group_bar(row.members, scale, width, g)
    st = row.first
    a = max(0, min(width - 1, int(st.start_ns * scale)))
    b = min(width, max(a + 1, round(st.end_ns * scale)))
    if st.duration_ns * scale < 0.5:
        cells = g.tiny
    elif st.kind == "middleware" and st.phases is not None and not st.short_circuit:
        span = b - a
        in_cells = min(span, max(1, round(st.phases["in"] * scale)))
        out_cells = min(span - in_cells, max(1 if span > 1 else 0, round(st.phases["out"] * scale)))
        cells = g.full * in_cells + g.thin * (span - in_cells - out_cells) + g.full * out_cells
    else:
        cells = g.full * (b - a)
    return " " * a + cells


def _group_bar(members: list[Stage], scale: float, width: int, g: _Glyphs) -> str:
    """Repeats drawn where they ran: a full cell where they filled at least half of it, a light
    one where they ran for less."""
    covered = [0.0] * width
    for st in members:
        a, b = st.start_ns * scale, st.end_ns * scale
        cell = max(0, min(width - 1, int(a)))
        while cell < width and cell < b:
            covered[cell] += max(min(b, cell + 1) - max(a, cell), 1e-9)
            cell += 1
    cells = "".join(g.full if c >= 0.5 else g.light if c > 0 else " " for c in covered)
    return cells.rstrip()


# --- text around the rows ------------------------------------------------------------------


def _wrap(
    parts: Sequence[str], width: int, first: str = "", indent: str = "    ", sep: str = "  "
) -> list[str]:
    """`parts` joined by `sep` into lines of at most `width`: the first line starts with
    `first`, the others with `indent`; a part longer than a whole line is cut."""
    lines: list[str] = []
    line, fresh = _cut(first, width, "…"), True
    for part in parts:
        joint = "" if fresh else sep
        if len(line) + len(joint) + len(part) <= width:
            line, fresh = line + joint + part, False
            continue
        if not fresh or len(line) >= width - 1:
            if line.strip():
                lines.append(line)
            line = indent
        line, fresh = line + _cut(part, width - len(line), "…"), False
    if line.strip():
        lines.append(line)
    return lines


def _header(timeline: Timeline, width: int, g: _Glyphs) -> tuple[str, str, list[str]]:
    """The title (method and path), the status part of it, and the facts after them."""
    if timeline.protocol == "job" or not timeline.path:
        title = timeline.name
    else:
        title = f"{timeline.method} {timeline.path}" if timeline.method else timeline.path
    title = _clean(title)
    status = "" if timeline.status is None else f" {g.arrow} {timeline.status}"
    facts = [f"{_num(timeline.duration_ns)} ms"]
    root = timeline.root
    attrs = root.attrs if root is not None else {}
    sent = _int(attrs.get("http.response.sent_ns"))
    if sent is not None and sent >= 0 and timeline.duration_ns - sent > timeline.duration_ns / 20:
        facts[0] += f" (response sent at {_num(sent)} ms)"
    queued = _int(attrs.get("stagetrace.queue_time_ns"))
    if queued:
        facts.append(f"queued {_num(queued)} ms")
    route = timeline.route
    if route is not None and route.lstrip("/") != (timeline.path or "").lstrip("/"):
        facts.append(f"route {_clean(route)}")
    facts.append(_clean(f"{timeline.framework}/{timeline.protocol}"))
    facts.append(_plural(len(timeline.stages), "stage"))
    facts.append(_clean(f"trace {timeline.trace_id}"))
    if timeline.parent_span_id:
        where = "remote" if timeline.parent_is_remote else "local"
        facts.append(_clean(f"parent {timeline.parent_span_id} ({where})"))
    if timeline.request_id != timeline.trace_id:
        facts.append(f"request {_clean(timeline.request_id)}")
    return _cut(title, width - len(status), g.ellipsis), status, facts


def _error_lines(timeline: Timeline, width: int, g: _Glyphs) -> list[str]:
    """Where each error was raised (the innermost stage carrying it), and its message."""
    with_error = {s.parent for s in timeline.stages if s.error is not None}
    origins: dict[tuple[str, str, str], int] = {}
    for s in timeline.stages:
        if s.error is not None and s.id not in with_error:
            key = (s.error.type, s.error.message, f"{s.kind} {_name_forms(s, False)[0]}")
            origins[key] = origins.get(key, 0) + 1
    lines = []
    for (etype, message, where), n in list(origins.items())[:5]:
        times = f" ({n}{g.times})" if n > 1 else ""
        words = f"{g.cross} {etype.rpartition('.')[2]} in {where}{times}:".split(" ")
        words += [_clean(w) for w in message.split()[:60]] or ["(no message)"]
        lines.extend(_wrap([_clean(w) for w in words], width, first="  ", sep=" ")[:3])
    if len(origins) > 5:
        lines.append(f"  {g.ellipsis} {len(origins) - 5} more errors")
    return lines


def render_waterfall(
    timeline: Timeline,
    *,
    width: int = DEFAULT_WIDTH,
    color: bool = False,
    unicode: bool = True,
    verbose: bool = False,
    sql: bool = False,
) -> str:
    """Render a timeline as a text waterfall, every line at most `width` columns (40 at least).

    One row per stage, indented by depth: start, duration and self time in milliseconds, the
    stage (kind and name, error marker, details such as rows or cache hits), and a bar on the
    timeline's time axis; middleware bars are thin while the inner layers run. Consecutive
    sibling subtrees of the same shape (an N+1) collapse into one row per stage of the shape,
    with the repeat count and totals over the repeats. Under the rows: where errors were
    raised, self time by kind, and the analyzers' findings.

    `color` adds ANSI colours; `unicode=False` draws with ASCII only. `verbose` shows every
    stage (no collapsing), full names and detail lines (SQL text, outbound URLs, error
    messages); `sql` adds the SQL text of each query under its row.
    """
    width = max(MIN_WIDTH, width)
    g = _UNICODE if unicode else _ASCII
    total = timeline.duration_ns

    def paint(code: str, text: str) -> str:
        return f"{code}{text}{_RESET}" if color and code and text else text

    finding_of: dict[int, str] = {}
    for f in timeline.findings:
        for sid in f.stages:
            finding_of.setdefault(sid, f.kind)
    names: dict[tuple[str, str], list[str]] = {}
    rows = [
        _make_row(timeline, d, ids, g, verbose, names)
        for d, ids in _tree_rows(timeline, not verbose)
    ]
    with_error = {s.parent for s in timeline.stages if s.error is not None}
    details = [_details(r, g, finding_of) for r in rows]
    lay = _layout(width, rows, details)
    on_rows = _phases_everywhere_or_nowhere(rows, details, lay)

    title, status, facts = _header(timeline, width, g)
    whole = title + status
    if len(whole) + 2 + len(facts[0]) <= width:
        lines = _wrap(facts, width, first=whole + "  ", indent="  ")
    else:  # a long path: the title alone, the facts under it
        lines = [whole, *_wrap(facts, width, first="  ", indent="  ")]
    if color:
        code = _BOLD
        if timeline.status is not None and timeline.protocol == "http":
            code = _RED if timeline.status >= 500 else _YELLOW if timeline.status >= 400 else code
        lines[0] = paint(_BOLD, title) + paint(code, status) + lines[0][len(whole) :]

    numbers_head = f"{'dur':>5} {'self':>5}"
    if lay.show_start:
        numbers_head = f"{'start':>5} {numbers_head}"
    end_label = f"{_num(total)} ms"
    if lay.bar_w >= len(end_label) + 5:
        axis = "0 ms" + end_label.rjust(lay.bar_w - 4)
    elif lay.bar_w >= len(end_label) + 2:
        axis = "0" + end_label.rjust(lay.bar_w - 1)
    else:
        axis = end_label.rjust(lay.bar_w) if lay.bar_w >= len(end_label) else ""
    lines.append(paint(_DIM, f"{numbers_head}  {'stage'.ljust(lay.label_w)}  {axis}".rstrip()))
    pad = " " * (lay.num_w + 2)
    for row, row_details, row_tries in zip(rows, details, on_rows, strict=True):
        st = row.first
        label = _label(row, lay, g, row_tries, verbose)
        nums = f"{_num(row.dur):>5} {_num(row.self_ns):>5}"
        if lay.show_start:
            nums = f"{_num(row.start):>5} {nums}"
        bar = _bar(row, total, lay.bar_w, g).rstrip()
        code = _RED if st.error is not None else _KIND_COLOR.get(st.kind, "")
        lines.append(f"{nums}  {paint(code, label)}  {paint(code, bar)}".rstrip())
        if not (verbose or sql):
            continue
        indent = " " * (min(row.depth * lay.step, lay.cap) + 2)
        room = width - len(pad) - len(indent)
        origin = st.error is not None and st.id not in with_error
        for parts, sep in _detail_lines(row, row_details, label, sql, verbose, origin):
            for line in _wrap(parts, room, indent="", sep=sep)[:3]:
                lines.append(pad + indent + paint(_DIM, line))
    if timeline.dropped_stages:
        note = (
            f"{g.ellipsis} {timeline.dropped_stages} more stages not kept (max_stages); "
            "the totals below count them"
        )
        lines.extend(paint(_DIM, ln) for ln in _wrap(note.split(" "), width, "  ", sep=" "))
    lines.extend(paint(_RED, line) for line in _error_lines(timeline, width, g))
    parts = [
        f"{kind} {s.count}{g.times} {_num(s.self_ns)} ms"
        for kind, s in sorted(timeline.by_kind.items(), key=lambda kv: -kv[1].self_ns)
    ]
    if parts:
        self_lines = _wrap(parts, width, first="  self time: ", sep=f" {g.dot} ")
        lines.extend(paint(_DIM, line) for line in self_lines)
    for f in timeline.findings:
        words = _clean(f.message).split()
        found = _wrap(words, width, first=f"  ! {_clean(f.kind)}: ", indent="    ", sep=" ")
        lines.extend(paint(_YELLOW, line) for line in found)
    text = "\n".join(lines) + "\n"
    return text if unicode else text.translate(_TO_ASCII)


# Glyphs that also occur in recorded text (an analyzer's "SELECT … FROM"), one character each
# so that widths hold.
_TO_ASCII = str.maketrans({"…": "~", "×": "x", "·": "|", "✗": "!", "→": ">"})


# --- the sink ------------------------------------------------------------------------------


def _use_color(setting: str, stream: IO[str]) -> bool:
    if setting == "always":
        return True
    if setting == "never" or os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("FORCE_COLOR"):
        return True
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except Exception:
        return False


def terminal_width(stream: IO[str] | None = None) -> int:
    """The width to render at: ``COLUMNS`` when set, else the terminal of `stream`, else the
    terminal of standard output (`shutil.get_terminal_size`), else 120."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isascii() and columns.isdigit() and int(columns) > 0:
        return int(columns)
    fileno = getattr(stream, "fileno", None)
    if fileno is not None:
        try:
            return os.get_terminal_size(fileno()).columns or DEFAULT_WIDTH
        except (OSError, ValueError, AttributeError):
            pass
    return shutil.get_terminal_size((DEFAULT_WIDTH, 24)).columns or DEFAULT_WIDTH


def _can_encode(stream: IO[str], text: str) -> bool:
    encoding = getattr(stream, "encoding", None) or "utf-8"
    try:
        text.encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return False
    return True


#: The glyphs of a Unicode waterfall: a stream that cannot encode them all gets ASCII.
_GLYPHS = "█─▏░→✗…×·"


def _encodable(stream: IO[str], text: str) -> str:
    """`text` as `stream` can write it: each character its encoding lacks (a path's ``é`` on
    an ASCII terminal) as ``?``."""
    if _can_encode(stream, text):
        return text
    encoding = getattr(stream, "encoding", None) or "ascii"
    try:
        return text.encode(encoding, "replace").decode(encoding)
    except LookupError:
        return text.encode("ascii", "replace").decode("ascii")


class ConsoleSink:
    """Prints each timeline as a waterfall to a stream (standard error by default).

    Colour is used only on a terminal (``color="auto"``), honouring ``NO_COLOR`` and
    ``FORCE_COLOR``. The width follows the terminal (``COLUMNS`` honoured) unless `width` is
    given, 120 columns when there is none. ``verbose=True`` shows every stage with detail lines
    (SQL, URLs, error messages) instead of collapsing repeats; ``sql=True`` adds only the SQL.
    """

    def __init__(
        self,
        stream: IO[str] | None = None,
        *,
        color: str = "auto",
        width: int | None = None,
        verbose: bool = False,
        sql: bool = False,
    ) -> None:
        self._stream = stream
        self._color = color
        self._width = width
        self._verbose = verbose
        self._sql = sql
        self._lock = threading.Lock()

    def emit(self, timeline: Timeline) -> None:
        stream = self._stream if self._stream is not None else sys.stderr
        use_color = _use_color(self._color, stream)
        width = self._width if self._width is not None else terminal_width(stream)
        unicode = _can_encode(stream, _GLYPHS)
        text = render_waterfall(
            timeline,
            width=width,
            color=use_color,
            unicode=unicode,
            verbose=self._verbose,
            sql=self._sql,
        )
        if not unicode:
            text = _encodable(stream, text)
        with self._lock:
            stream.write(text)
            stream.flush()

    def after_fork(self) -> None:
        """In a forked child: a fresh lock. A fork while the parent's worker was printing copies
        the lock held, and the child's worker would wait for it forever."""
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return "ConsoleSink()"
