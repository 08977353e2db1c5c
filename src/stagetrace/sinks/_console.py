from __future__ import annotations

import os
import shutil
import sys
import threading
from typing import IO

from .._model import Stage, Timeline

_RESET = "\x1b[0m"
_DIM = "\x1b[2m"
_BOLD = "\x1b[1m"
_RED = "\x1b[31m"
_KIND_COLOR = {
    "gateway": "\x1b[37m",
    "middleware": "\x1b[35m",
    "route": "\x1b[36m",
    "view": "\x1b[32m",
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

_NUMBERS = 26  # three 8-wide columns and spacing


def _ms(ns: int) -> str:
    return f"{ns / 1e6:.2f}"


def _fit(text: str, width: int) -> str:
    if len(text) <= width:
        return text.ljust(width)
    return text[: max(0, width - 1)] + "…"


def _shorten(name: str, width: int) -> str:
    """Cut a name from the left, keeping its most specific end (``…sessions.SessionMiddleware``)."""
    if len(name) <= width:
        return name
    parts = name.split(".")
    if len(parts) > 1 and all(p.isidentifier() for p in parts):
        for i in range(1, len(parts)):
            tail = "…" + ".".join(parts[i:])
            if len(tail) <= width:
                return tail
    if width <= 1:
        return "…"[:width]
    return "…" + name[len(name) - width + 1 :]


def _label(st: Stage, depth: int, width: int, unicode: bool) -> str:
    prefix = "  " * depth + st.kind + " "
    suffix = ""
    if st.kind == "middleware" and st.phases is not None:
        if st.short_circuit:
            suffix = "  [short-circuit]"
        elif st.phases["out"]:  # hooks such as process_view have no inner call to split at
            suffix = f"  [in {_ms(st.phases['in'])} / out {_ms(st.phases['out'])}]"
    if st.error is not None:
        suffix += ("  ✗ " if unicode else "  ! ") + st.error.type.rpartition(".")[2]
    room = width - len(prefix) - len(suffix)
    if room < 12:
        suffix, room = "", width - len(prefix)
    return _fit(prefix + _shorten(st.name, max(room, 1)) + suffix, width)


def _wrap(first: str, parts: list[str], width: int) -> list[str]:
    rows, row = [], first
    for i, part in enumerate(parts):
        piece = part if i == 0 else " · " + part
        if len(row) + len(piece) > width and row.strip():
            rows.append(row)
            row, piece = "    " + part, ""
        row += piece
    rows.append(row)
    return rows


def _tree_order(timeline: Timeline) -> list[tuple[Stage, int]]:
    """Stages in depth-first order (children under their parent, by start), with depths."""
    children: dict[int | None, list[Stage]] = {}
    for st in timeline.stages:
        children.setdefault(st.parent, []).append(st)
    out: list[tuple[Stage, int]] = []
    stack: list[tuple[Stage, int]] = [(s, 0) for s in reversed(children.get(None, []))]
    while stack:
        st, depth = stack.pop()
        out.append((st, depth))
        stack.extend((c, depth + 1) for c in reversed(children.get(st.id, [])))
    return out


def _bar(st: Stage, total: int, width: int, glyphs: tuple[str, str, str]) -> str:
    full, thin, tiny = glyphs
    if total <= 0:
        return " " * width
    scale = width / total
    a = min(width - 1, int(st.start_ns * scale))
    b = min(width, max(a + 1, round(st.end_ns * scale)))
    if st.duration_ns * scale < 0.5:
        cells = tiny
    elif st.kind == "middleware" and st.phases is not None and not st.short_circuit:
        span = b - a
        in_cells = min(span, max(1, round(st.phases["in"] * scale)))
        out_cells = min(span - in_cells, max(1 if span > 1 else 0, round(st.phases["out"] * scale)))
        cells = full * in_cells + thin * (span - in_cells - out_cells) + full * out_cells
    else:
        cells = full * (b - a)
    return (" " * a + cells).ljust(width)[:width]


def render_waterfall(
    timeline: Timeline,
    *,
    width: int = 120,
    color: bool = False,
    unicode: bool = True,
) -> str:
    """Render a timeline as a text waterfall: one row per stage, indented by depth, with start,
    duration and self time in milliseconds and a bar on a shared time axis. Middleware rows show
    their inbound and outbound phases (the bar is thin while the inner layers run)."""
    width = max(60, width)
    glyphs = ("█", "─", "▏") if unicode else ("#", "-", "|")
    arrow = "→" if unicode else "->"
    bar_w = max(16, (width - _NUMBERS - 2) // 3)
    label_w = width - _NUMBERS - 2 - bar_w

    def paint(code: str, text: str) -> str:
        return f"{code}{text}{_RESET}" if color and code else text

    status = "" if timeline.status is None else f" {arrow} {timeline.status}"
    if timeline.protocol == "job" or not timeline.path:
        title = timeline.name
    else:
        title = f"{timeline.method} {timeline.path}" if timeline.method else timeline.path
    head = f"{paint(_BOLD, title + status)}  {_ms(timeline.duration_ns)} ms"
    if timeline.route is not None and timeline.route != timeline.path:
        head += f"  route {timeline.route}"
    head += (
        f"  {timeline.framework}/{timeline.protocol}  {len(timeline.stages)} stages"
        f"  trace {timeline.trace_id}"
    )
    if timeline.request_id != timeline.trace_id:
        head += f"  request {timeline.request_id}"
    lines = [head]
    axis = f"0 ms{_ms(timeline.duration_ns) + ' ms':>{bar_w - 4}}"
    lines.append(
        paint(_DIM, f"{'start':>8}{'dur':>8}{'self':>8}  {_fit('stage', label_w)}  {axis}")
    )
    for st, depth in _tree_order(timeline):
        text_label = _label(st, depth, label_w, unicode)
        numbers = f"{_ms(st.start_ns):>8}{_ms(st.duration_ns):>8}{_ms(st.self_ns):>8}"
        bar = _bar(st, timeline.duration_ns, bar_w, glyphs).rstrip()
        if color:
            code = _RED if st.error is not None else _KIND_COLOR.get(st.kind, "")
            text_label = paint(code, text_label)
            bar = paint(code, bar)
        lines.append(f"{numbers}  {text_label}  {bar}".rstrip())
    if timeline.dropped_stages:
        lines.append(
            paint(
                _DIM,
                f"  … {timeline.dropped_stages} more stages not kept (max_stages); "
                "the summary below counts them",
            )
        )
    parts = [
        f"{kind} {s.count}× {_ms(s.self_ns)} ms"
        for kind, s in sorted(timeline.by_kind.items(), key=lambda kv: -kv[1].self_ns)
    ]
    if parts:
        lines.extend(paint(_DIM, row) for row in _wrap("  self time by kind: ", parts, width))
    lines.extend(paint(_RED, f"  ! {f.kind}: {f.message}") for f in timeline.findings)
    text = "\n".join(lines) + "\n"
    return text if unicode else text.translate(_ASCII)


_ASCII = str.maketrans({"…": "~", "×": "x", "·": "|", "✗": "!"})


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


def _can_encode(stream: IO[str], text: str) -> bool:
    encoding = getattr(stream, "encoding", None) or "utf-8"
    try:
        text.encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return False
    return True


class ConsoleSink:
    """Prints each timeline as a waterfall to a stream (standard error by default).

    Colour is used only on a terminal (``color="auto"``), honouring ``NO_COLOR`` and
    ``FORCE_COLOR``; the width follows the terminal, 120 columns otherwise."""

    def __init__(
        self, stream: IO[str] | None = None, *, color: str = "auto", width: int | None = None
    ) -> None:
        self._stream = stream
        self._color = color
        self._width = width
        self._lock = threading.Lock()

    def emit(self, timeline: Timeline) -> None:
        stream = self._stream if self._stream is not None else sys.stderr
        use_color = _use_color(self._color, stream)
        width = self._width
        if width is None:
            width = shutil.get_terminal_size((120, 24)).columns if use_color else 120
        unicode = _can_encode(stream, "█─▏→✗…×·")
        text = render_waterfall(timeline, width=width, color=use_color, unicode=unicode)
        if not unicode:
            encoding = getattr(stream, "encoding", None) or "ascii"
            text = text.encode(encoding, "replace").decode(encoding)
        with self._lock:
            stream.write(text)
            stream.flush()

    def __repr__(self) -> str:
        return "ConsoleSink()"
