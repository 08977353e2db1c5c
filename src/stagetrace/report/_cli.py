"""``stagetrace report FILE.jsonl [...] -o report.html``."""

from __future__ import annotations

import heapq
import os
import sys
import tempfile
from typing import IO, Any

from .._model import Timeline
from .._summary import problems, read_files
from ..sinks._jsonl import path_label
from ._analyze import ensure_analyzed
from ._html import page_meta, render_html

#: Timelines kept in a report by default (the newest ones, by start time).
DEFAULT_LIMIT = 2000


def add_arguments(parser: Any) -> None:
    """The ``report`` command's arguments (for the CLI)."""
    parser.add_argument(
        "files",
        nargs="+",
        metavar="FILE",
        help="files written by the jsonl sink (gzip too; '-' for standard input)",
    )
    parser.add_argument(
        "-o",
        "--output",
        default="stagetrace-report.html",
        metavar="HTML",
        help="the page to write (default stagetrace-report.html; '-' for standard output)",
    )
    parser.add_argument(
        "--limit",
        type=int,
        default=DEFAULT_LIMIT,
        metavar="N",
        help=f"keep the N newest timelines, by start time (default {DEFAULT_LIMIT})",
    )
    parser.add_argument("--title", default="stagetrace report", help="the page's title")
    parser.add_argument(
        "--no-analyze", action="store_true", help="only show findings recorded in the files"
    )


def main(args: Any, out: IO[str], err: IO[str] | None = None) -> int:
    """Run ``stagetrace report`` with parsed arguments; returns the exit status."""
    err = err if err is not None else sys.stderr
    if args.limit < 1:
        print("stagetrace: --limit must be at least 1", file=err)
        return 2
    output = args.output
    shown = path_label(output)
    if output != "-":
        parent = os.path.dirname(os.path.abspath(output))
        if not os.path.isdir(parent):
            print(f"stagetrace: {shown}: directory {path_label(parent)} does not exist", file=err)
            return 2
        if os.path.isdir(output):
            print(f"stagetrace: {shown}: is a directory", file=err)
            return 2
    # The N that started last (a min-heap by start time, then by order read), not the last N
    # read: `stagetrace report app.jsonl*` reads the current file before the rotated one, and
    # processes sharing a file append a timeline when it ends.
    heap: list[tuple[int, int, Timeline]] = []
    total = 0

    def keep(tl: Timeline) -> None:
        nonlocal total
        total += 1
        if len(heap) < args.limit:
            heapq.heappush(heap, (tl.start_unix_nano, total, tl))
        else:
            heapq.heappushpop(heap, (tl.start_unix_nano, total, tl))

    results = read_files(args.files, keep, err=err)
    if not heap:
        print("stagetrace: no timelines to report; nothing written", file=err)
        return 1
    kept = [tl for _, _, tl in sorted(heap)]
    timelines = kept if args.no_analyze else [ensure_analyzed(t) for t in kept]
    page = render_html(
        timelines,
        title=args.title,
        meta=page_meta(len(timelines), total, [r.path for r in results if r.timelines]),
        total=total,
    )
    if output == "-":
        out.write(page)
    else:
        try:
            _write(output, page)
        except OSError as exc:
            print(f"stagetrace: {shown}: cannot write ({exc.strerror or exc})", file=err)
            return 1
        print(
            f"stagetrace: wrote {shown} ({len(timelines)} requests, {len(page) // 1024} KiB)",
            file=err,
        )
    return 1 if problems(results) else 0


def _write(path: str, text: str) -> None:
    """Write `text` to `path` through a temporary file, so a reader never sees half a page."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".stagetrace-report-", suffix=".html", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
