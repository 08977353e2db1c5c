"""``stagetrace summary FILE.jsonl [...]``: per-route latency, per-kind time, top queries and
findings, from files written by the jsonl sink.

Files are streamed one timeline at a time and memory stays bounded however long they are:
latency quantiles are exact up to `EXACT` values per series, then kept in a log-bucket sketch
(the DDSketch method) whose quantiles are within 1 % of the true value, with at most a few
hundred buckets per series; the numbers of routes, statement fingerprints and findings tracked
are capped (`MAX_KEYS`), later ones being counted under ``(other)``.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import shutil
import sys
import textwrap
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import IO, Any

from ._model import Finding, Timeline
from .analyzers import fingerprint, short_sql, sql_text
from .analyzers import n_plus_one as _n_plus_one
from .analyzers._log import finding_key
from .analyzers._queries import DuplicateQueries
from .sinks._console import _clean, _encodable
from .sinks._jsonl import (
    BadLine,
    StdinClosed,
    done_with_stdin,
    open_stdin,
    path_label,
    read_jsonl,
    text_of,
)

__all__ = ["EXACT", "MAX_KEYS", "Quantiles", "Summary", "main"]

SCHEMA = "stagetrace/summary@1"
#: Values kept exactly per latency series before switching to the sketch.
EXACT = 2048
#: Relative accuracy of the sketch's quantiles.
ACCURACY = 0.01
#: Routes, fingerprints and finding groups tracked; more are folded into "(other)".
MAX_KEYS = 1000
#: Bad lines reported one by one per file; the rest are counted.
MAX_BAD_REPORTED = 20
OTHER = "(other)"
QUANTILES_METHOD = (
    f"exact up to {EXACT} values per series, then log buckets with {ACCURACY:.0%} relative error"
)


class Quantiles:
    """Quantiles of non-negative integers (nanoseconds) in bounded memory: the values
    themselves while there are at most `EXACT`, then a logarithmic histogram whose buckets grow
    by a factor ``(1 + a) / (1 - a)``, so any quantile read from it is within ``a`` (1 %) of a
    value of the series (DDSketch, Masson et al., VLDB 2019)."""

    __slots__ = ("_buckets", "_values", "_zeros", "count", "max", "min")
    _GAMMA = (1 + ACCURACY) / (1 - ACCURACY)
    _LOG_GAMMA = math.log(_GAMMA)

    def __init__(self) -> None:
        self._values: list[int] | None = []
        self._buckets: dict[int, int] = {}
        self._zeros = 0
        self.count = 0
        self.min = 0
        self.max = 0

    def add(self, value: int) -> None:
        value = max(0, int(value))
        if self.count == 0:
            self.min = self.max = value
        elif value < self.min:
            self.min = value
        elif value > self.max:
            self.max = value
        self.count += 1
        values = self._values
        if values is not None:
            values.append(value)
            if len(values) > EXACT:
                self._values = None
                for v in values:
                    self._bucket(v)
            return
        self._bucket(value)

    def _bucket(self, value: int) -> None:
        if value <= 0:
            self._zeros += 1
            return
        key = math.ceil(math.log(value) / self._LOG_GAMMA)
        self._buckets[key] = self._buckets.get(key, 0) + 1

    def quantile(self, q: float) -> float:
        """The value at quantile `q` (0 to 1) by nearest rank; 0 for an empty series."""
        if self.count == 0:
            return 0.0
        rank = max(1, math.ceil(q * self.count))
        if self._values is not None:
            return float(sorted(self._values)[rank - 1])
        seen = self._zeros
        if seen >= rank:
            return 0.0
        for key in sorted(self._buckets):
            seen += self._buckets[key]
            if seen >= rank:
                value = 2 * self._GAMMA**key / (self._GAMMA + 1)
                return float(min(max(value, self.min), self.max))
        return float(self.max)  # pragma: no cover - ranks never exceed the count

    @property
    def exact(self) -> bool:
        """Whether quantiles are still computed from every value."""
        return self._values is not None


@dataclass
class _Route:
    durations: Quantiles = field(default_factory=Quantiles)
    total_ns: int = 0
    statuses: dict[str, int] = field(default_factory=dict)


@dataclass
class _Kind:
    stages: int = 0
    requests: int = 0
    self_ns: int = 0
    total_ns: int = 0
    durations: Quantiles = field(default_factory=Quantiles)


@dataclass
class _Query:
    count: int = 0
    total_ns: int = 0
    requests: int = 0
    routes: dict[str, int] = field(default_factory=dict)


@dataclass
class _FindingGroup:
    kind: str
    route: str
    message: str
    fingerprint: str | None
    #: ``stagetrace.db.query.hash``: for a statement whose recorded text was cut, which one
    query_hash: str | None = None
    requests: int = 0
    occurrences: int = 0


def route_key(tl: Timeline) -> str:
    """``GET shop/books/<int:pk>/``; the path stands in when no route matched."""
    if tl.protocol == "job":
        return tl.name
    target = tl.route if tl.route is not None else f"{tl.path or ''} (no route)"
    return f"{tl.method} {target}" if tl.method else target


def _bounded(table: dict[str, Any], key: str, factory: Callable[[], Any]) -> Any:
    item = table.get(key)
    if item is None:
        if len(table) >= MAX_KEYS:
            key = OTHER
            item = table.get(key)
            if item is not None:
                return item
        item = table[key] = factory()
    return item


class Summary:
    """Accumulates timelines, one at a time, into the summary's tables."""

    def __init__(
        self, *, threshold: int = 5, analyze: bool = True, reanalyze: bool = False
    ) -> None:
        """`threshold` is the N+1 threshold for timelines recorded without the analyzers (with
        no finding of the kind); with `reanalyze`, every timeline's N+1 findings are those of
        `threshold` (recorded ones are replaced), as ``summary --threshold N`` asks."""
        self.timelines = 0
        self.first_start = 0
        self.last_end = 0
        self.total_ns = 0
        self.routes: dict[str, _Route] = {}
        self.kinds: dict[str, _Kind] = {}
        self.queries: dict[str, _Query] = {}
        self.findings: dict[tuple[str, str, str], _FindingGroup] = {}
        self._analyzers = (_n_plus_one(threshold), DuplicateQueries()) if analyze else ()
        self._reanalyze = "n_plus_one" if analyze and reanalyze else None

    def add(self, tl: Timeline) -> None:
        self.timelines += 1
        end = tl.start_unix_nano + tl.duration_ns
        if self.timelines == 1 or tl.start_unix_nano < self.first_start:
            self.first_start = tl.start_unix_nano
        self.last_end = max(self.last_end, end)
        self.total_ns += tl.duration_ns
        key = route_key(tl)
        route = _bounded(self.routes, key, _Route)
        route.durations.add(tl.duration_ns)
        route.total_ns += tl.duration_ns
        status = str(tl.status) if tl.status is not None else "-"
        route.statuses[status] = route.statuses.get(status, 0) + 1
        for kind, s in tl.by_kind.items():
            k = self.kinds.get(kind)
            if k is None:
                k = self.kinds[kind] = _Kind()
            k.stages += s.count
            k.requests += 1
            k.self_ns += s.self_ns
            k.total_ns += s.total_ns
        seen_fps: set[str] = set()
        for st in tl.stages:
            k = self.kinds.get(st.kind)
            if k is not None:
                k.durations.add(st.duration_ns)
            if st.kind == "db.query":
                text = sql_text(st)
                if text is None:
                    continue
                fp = fingerprint(text)
                q = _bounded(self.queries, fp, _Query)
                q.count += 1
                q.total_ns += st.duration_ns
                if fp not in seen_fps:
                    seen_fps.add(fp)
                    q.requests += 1
                    if len(q.routes) < 20 or key in q.routes:
                        q.routes[key] = q.routes.get(key, 0) + 1
        self._add_findings(tl, key)

    def _add_findings(self, tl: Timeline, route: str) -> None:
        found: dict[tuple[str, str], Finding] = {}
        again = self._reanalyze  # a kind found again, whatever the recording found
        for f in tl.findings:
            if f.kind != again:
                found.setdefault((f.kind, finding_key(f)), f)
        for analyzer in self._analyzers:
            kind = _kind_of(analyzer)
            if kind != again and any(f.kind == kind for f in tl.findings):
                continue  # the recording was analyzed already
            for f in analyzer(tl):
                found.setdefault((f.kind, finding_key(f)), f)
        for (kind, ident), f in found.items():
            key = (kind, route, ident)
            group = self.findings.get(key)
            if group is None:
                if len(self.findings) >= MAX_KEYS:
                    key = (kind, OTHER, OTHER)
                    group = self.findings.get(key)
                if group is None:
                    fp = f.attrs.get("fingerprint")
                    qh = f.attrs.get("stagetrace.db.query.hash")
                    group = self.findings[key] = _FindingGroup(
                        kind,
                        key[1],
                        f.message,
                        fp if isinstance(fp, str) else None,
                        qh if isinstance(qh, str) and key[2] is not OTHER else None,
                    )
            group.requests += 1
            count = f.attrs.get("count")
            group.occurrences += count if type(count) is int else 1

    # --- output -----------------------------------------------------------------------------

    def to_dict(self, files: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
        """The summary as JSON-serializable data (``stagetrace/summary@1``)."""
        # Shares of self time: they add up to 100 % (concurrent stages, such as background
        # tasks, can make the sum of self times exceed the requests' durations).
        total = sum(k.self_ns for k in self.kinds.values()) or 1
        routes = sorted(self.routes.items(), key=lambda kv: -kv[1].total_ns)
        kinds = sorted(self.kinds.items(), key=lambda kv: -kv[1].self_ns)
        queries = sorted(self.queries.items(), key=lambda kv: -kv[1].total_ns)
        findings = sorted(self.findings.values(), key=lambda g: (-g.requests, g.kind, g.route))
        return {
            "schema": SCHEMA,
            "files": list(files),
            "timelines": self.timelines,
            "first_start_unix_nano": self.first_start if self.timelines else None,
            "last_end_unix_nano": self.last_end if self.timelines else None,
            "quantiles": QUANTILES_METHOD,
            "routes": [
                {
                    "route": name,
                    "requests": r.durations.count,
                    "total_ms": _ms(r.total_ns),
                    "p50_ms": _ms(r.durations.quantile(0.5)),
                    "p95_ms": _ms(r.durations.quantile(0.95)),
                    "p99_ms": _ms(r.durations.quantile(0.99)),
                    "max_ms": _ms(r.durations.max),
                    "statuses": dict(sorted(r.statuses.items())),
                }
                for name, r in routes
            ],
            "kinds": [
                {
                    "kind": kind,
                    "stages": k.stages,
                    "requests": k.requests,
                    "p50_ms": _ms(k.durations.quantile(0.5)),
                    "p95_ms": _ms(k.durations.quantile(0.95)),
                    "self_ms": _ms(k.self_ns),
                    "total_ms": _ms(k.total_ns),
                    "share": round(k.self_ns / total, 4),
                }
                for kind, k in kinds
            ],
            "queries": [
                {
                    "fingerprint": fp,
                    "count": q.count,
                    "total_ms": _ms(q.total_ns),
                    "mean_ms": _ms(q.total_ns / q.count if q.count else 0),
                    "requests": q.requests,
                    # requests of each route that ran it (the first 20 routes)
                    "routes": dict(sorted(q.routes.items(), key=lambda kv: -kv[1])),
                }
                for fp, q in queries
            ],
            "findings": [
                {
                    "kind": g.kind,
                    "route": g.route,
                    "requests": g.requests,
                    "occurrences": g.occurrences,
                    "fingerprint": g.fingerprint,
                    "query_hash": g.query_hash,
                    "message": g.message,
                }
                for g in findings
            ],
        }

    def render(self, width: int = 80, top: int = 10, files: Sequence[str] = ()) -> str:
        """The summary as text tables fitting `width` columns."""
        width = max(60, width)
        d = self.to_dict()
        span = (self.last_end - self.first_start) / 1e9 if self.timelines else 0.0
        lines = [
            f"{self.timelines} timeline{'s' if self.timelines != 1 else ''}"
            + (f" from {len(files)} files" if len(files) > 1 else "")
            + (f" over {_span(span)}" if span > 0 else "")
            + f", {_ms(self.total_ns):.1f} ms in total",
            "",
        ]
        routes = d["routes"]
        lines += _table(
            f"Routes (by total time){_more(len(routes), top * 2)}",
            ["route", "reqs", "p50 ms", "p95 ms", "p99 ms", "status"],
            [
                [
                    r["route"],
                    str(r["requests"]),
                    _f(r["p50_ms"]),
                    _f(r["p95_ms"]),
                    _f(r["p99_ms"]),
                    _statuses(r["statuses"]),
                ]
                for r in routes[: top * 2]
            ],
            width,
        )
        lines += _table(
            "Stage kinds (by self time)",
            ["kind", "stages", "p50 ms", "p95 ms", "self ms", "share"],
            [
                [
                    k["kind"],
                    str(k["stages"]),
                    _f(k["p50_ms"]),
                    _f(k["p95_ms"]),
                    _f(k["self_ms"]),
                    f"{k['share']:.1%}",
                ]
                for k in d["kinds"]
            ],
            width,
            flex=0,
        )
        queries = d["queries"]
        if queries:
            lines += _table(
                f"Top queries by total time{_more(len(queries), top)}",
                ["statement", "count", "reqs", "mean ms", "total ms"],
                [
                    [
                        short_sql(q["fingerprint"], 400),
                        str(q["count"]),
                        str(q["requests"]),
                        _f(q["mean_ms"]),
                        _f(q["total_ms"]),
                    ]
                    for q in queries[:top]
                ],
                width,
                wrap=3,
            )
        findings = d["findings"]
        if findings:
            lines += _table(
                f"Findings{_more(len(findings), top)}",
                ["kind", "route", "reqs", "finding"],
                [[f["kind"], f["route"], str(f["requests"]), f["message"]] for f in findings[:top]],
                width,
                flex=3,
                shrink=1,
                wrap=3,
            )
        else:
            lines += ["Findings: none", ""]
        return "\n".join(lines).rstrip("\n") + "\n"


def _kind_of(analyzer: Any) -> str:
    return "duplicate_query" if isinstance(analyzer, DuplicateQueries) else "n_plus_one"


def _ms(ns: float) -> float:
    return round(ns / 1e6, 3)


def _f(ms: float) -> str:
    return f"{ms:.2f}" if ms < 1000 else f"{ms:.0f}"


def _span(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _more(n: int, shown: int) -> str:
    return f", top {shown} of {n}" if n > shown else ""


def _statuses(statuses: dict[str, int]) -> str:
    total = sum(statuses.values())
    classes: dict[str, int] = {}
    for status, n in statuses.items():
        cls = status[0] + "xx" if len(status) == 3 and status.isdigit() else status
        classes[cls] = classes.get(cls, 0) + n
    if len(statuses) == 1:
        (status,) = statuses
        return status
    return " ".join(
        f"{cls} {n * 100 // total}%" if n != total else cls for cls, n in sorted(classes.items())
    )


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(0, width - 1)] + "…"


def _table(
    title: str,
    headers: list[str],
    rows: list[list[str]],
    width: int,
    *,
    flex: int = 0,
    shrink: int | None = None,
    wrap: int = 1,
) -> list[str]:
    """A table whose column `flex` takes the width the others leave (cut with …); column
    `shrink`, if given, is capped at a third of the width; the `flex` column wraps onto up to
    `wrap` lines. Column `flex` is left-aligned, the first column too, the others right-aligned."""
    if not rows:
        return []
    # Routes, paths and messages come from requests: printed as the waterfall prints them.
    rows = [[_clean(" ".join(cell.split())) for cell in row] for row in rows]
    ncols = len(headers)
    widths = [max(len(headers[i]), *(len(r[i]) for r in rows)) for i in range(ncols)]
    if shrink is not None:
        widths[shrink] = min(widths[shrink], max(len(headers[shrink]), width // 3))
    fixed = sum(w for i, w in enumerate(widths) if i != flex) + 2 * (ncols - 1)
    widths[flex] = max(10, min(widths[flex], width - fixed))
    left = {0, flex}

    def fmt(cells: list[str]) -> str:
        out = []
        for i, cell in enumerate(cells):
            text = _cut(cell, widths[i])
            out.append(text.ljust(widths[i]) if i in left else text.rjust(widths[i]))
        return "  ".join(out).rstrip()

    out = [title, fmt(headers)]
    w = widths[flex]
    for row in rows:
        text = row[flex]
        pieces = textwrap.wrap(text, w, subsequent_indent="  ") or [""]
        if len(pieces) > wrap:
            rest = " ".join(p.strip() for p in pieces[wrap - 1 :])
            indent = "  " if wrap > 1 else ""  # the last line continues one above, if any
            pieces = [*pieces[: wrap - 1], _cut(indent + rest, w)]
        out.append(fmt([pieces[0] if i == flex else c for i, c in enumerate(row)]))
        out.extend(fmt([p if i == flex else "" for i in range(ncols)]) for p in pieces[1:])
    out.append("")
    return out


# --- reading files --------------------------------------------------------------------------


class _Progress:
    """A one-line progress bar on a terminal; silent elsewhere."""

    def __init__(self, stream: IO[str], enabled: bool) -> None:
        self.stream = stream
        self.enabled = enabled
        self._last = 0.0
        self._shown = False

    def update(self, name: str, done: int, total: int, timelines: int) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._last < 0.1:
            return
        self._last = now
        cols = shutil.get_terminal_size((80, 24)).columns
        frac = min(1.0, done / total) if total else 0.0
        bar_w = max(10, min(30, cols - 50))
        filled = int(frac * bar_w)
        text = f"{_cut(os.path.basename(name), 20)} [{'#' * filled}{' ' * (bar_w - filled)}]"
        text += f" {frac:4.0%} {timelines} timelines"
        self.stream.write("\r" + text[: cols - 1])
        self.stream.flush()
        self._shown = True

    def clear(self) -> None:
        if self._shown:
            cols = shutil.get_terminal_size((80, 24)).columns
            self.stream.write("\r" + " " * (cols - 1) + "\r")
            self.stream.flush()
            self._shown = False


@dataclass
class FileResult:
    """What reading one file gave: timelines read, bad lines, and a fatal problem if any."""

    path: str
    timelines: int = 0
    bad_lines: int = 0
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "timelines": self.timelines,
            "bad_lines": self.bad_lines,
            "error": self.error,
        }


def _open(path: str) -> tuple[IO[str], Callable[[], int], int, Callable[[], None]]:
    """A text stream for `path` (gzip or plain), a function giving the bytes consumed so far,
    the file's size, and a function closing everything."""
    if path == "-":
        stdin = open_stdin()
        return stdin, lambda: 0, 0, lambda: done_with_stdin(stdin)
    if os.path.isdir(path):
        raise IsADirectoryError(path)
    size = os.path.getsize(path)
    raw = open(path, "rb")  # noqa: SIM115 - closed by the returned function
    try:
        stream = text_of(raw)  # a pipe too: its first bytes are peeked at, not read
    except BaseException:
        raw.close()
        raise

    def close() -> None:
        try:
            stream.close()
        except (OSError, EOFError):
            pass
        raw.close()

    # a pipe has no position (tell() raises): its progress is not shown
    return stream, raw.tell if raw.seekable() else (lambda: 0), size, close


def read_files(
    paths: Iterable[str],
    each: Callable[[Timeline], None],
    *,
    err: IO[str],
    progress: bool | None = None,
) -> list[FileResult]:
    """Stream the timelines of each file to `each`; one line per problem on `err`.

    Bad lines are reported (the first `MAX_BAD_REPORTED` per file one by one, then counted) and
    skipped; a file that cannot be opened or read any further is reported and the next one
    read. A progress bar is drawn on `err` when it is a terminal (`progress=None`)."""
    if progress is None:
        try:
            progress = err.isatty()
        except (AttributeError, ValueError):
            progress = False
    bar = _Progress(err, progress)
    results: list[FileResult] = []
    for path in paths:
        result = FileResult("<stdin>" if path == "-" else path)
        results.append(result)
        name = path_label(path)  # in messages: an empty name or a line break visible
        try:
            stream, position, size, close = _open(path)
        except StdinClosed as exc:
            result.error = exc.strerror
        except FileNotFoundError:
            result.error = "no such file"
        except IsADirectoryError:
            result.error = "is a directory, not a JSON lines file"
        except PermissionError:
            result.error = "permission denied"
        except OSError as exc:
            result.error = f"cannot be read ({exc.strerror or exc})"
        if result.error is not None:
            bar.clear()
            print(f"stagetrace: {name}: {result.error}", file=err)
            continue
        try:
            for n, item in enumerate(read_jsonl(stream), 1):
                if isinstance(item, BadLine):
                    result.bad_lines += 1
                    if result.bad_lines <= MAX_BAD_REPORTED:
                        bar.clear()
                        print(f"stagetrace: {name}:{item.lineno}: {item.reason}", file=err)
                else:
                    result.timelines += 1
                    each(item)
                if n % 256 == 0:
                    bar.update(name, position(), size, result.timelines)
        except (OSError, EOFError, gzip.BadGzipFile) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            result.error = f"reading stopped: {reason}"
            bar.clear()
            print(f"stagetrace: {name}: {result.error}", file=err)
        finally:
            close()
        bar.clear()
        if result.bad_lines > MAX_BAD_REPORTED:
            print(
                f"stagetrace: {name}: {result.bad_lines - MAX_BAD_REPORTED} more bad lines",
                file=err,
            )
        if result.error is None and not result.timelines and not result.bad_lines:
            print(f"stagetrace: {name}: no timelines in the file", file=err)
    return results


def problems(results: Sequence[FileResult]) -> bool:
    """Whether any file had a problem worth a non-zero exit status."""
    return any(r.error or r.bad_lines or not r.timelines for r in results)


# --- the command ----------------------------------------------------------------------------


def main(args: Any, out: IO[str], err: IO[str] | None = None) -> int:
    """Run ``stagetrace summary`` with parsed arguments; returns the exit status."""
    err = err if err is not None else sys.stderr
    if args.top < 1:
        print("stagetrace: --top must be at least 1", file=err)
        return 2
    if args.threshold is not None and args.threshold < 2:
        print("stagetrace: --threshold must be at least 2", file=err)
        return 2
    if args.threshold is not None and args.no_analyze:
        # Only recorded findings are shown: a threshold would silently change nothing.
        print(
            "stagetrace: --threshold and --no-analyze cannot go together "
            "(--no-analyze shows only the findings recorded in the files)",
            file=err,
        )
        return 2
    summary = Summary(
        threshold=5 if args.threshold is None else args.threshold,
        analyze=not args.no_analyze,
        reanalyze=args.threshold is not None,
    )
    results = read_files(args.files, summary.add, err=err)
    if args.json:
        json.dump(summary.to_dict([r.to_dict() for r in results]), out, indent=2)
        out.write("\n")
    elif summary.timelines:
        width = args.width or _terminal_width(out)
        read = [r.path for r in results if r.timelines]  # not a missing or unreadable one
        out.write(_encodable(out, summary.render(width, args.top, read)))
    if not summary.timelines:
        print("stagetrace: no timelines to summarize", file=err)
        return 1
    return 1 if problems(results) else 0


def _terminal_width(out: IO[str]) -> int:
    try:
        if out.isatty():
            return shutil.get_terminal_size((80, 24)).columns
    except (AttributeError, ValueError):
        pass
    return 80


def add_arguments(parser: Any) -> None:
    """The ``summary`` command's arguments (for the CLI)."""
    parser.add_argument(
        "files",
        nargs="+",
        metavar="FILE",
        help="files written by the jsonl sink (gzip too; '-' for standard input)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON for machines")
    parser.add_argument(
        "--top", type=int, default=10, metavar="N", help="rows per table (default 10; routes 2N)"
    )
    parser.add_argument(
        "--width",
        type=int,
        metavar="COLUMNS",
        help="output width (default: the terminal's, else 80)",
    )
    parser.add_argument(
        "--threshold",
        type=int,
        metavar="N",
        help="N+1 threshold: every timeline's N+1 findings are found again with it, "
        "replacing those recorded (default: recorded findings kept; 5 for timelines "
        "recorded without analyzers)",
    )
    parser.add_argument(
        "--no-analyze", action="store_true", help="only report findings recorded in the files"
    )
