"""The ``stagetrace`` command: ``demo``, ``show``, ``summary`` and ``report``.

Exit status: 0 when everything asked for was shown; 1 when the input had problems (a missing
file, bad lines — the good timelines are still shown) or nothing matched the filters; 2 for a
bad command line (argparse's convention), with one line saying what was wrong.
"""

from __future__ import annotations

import argparse
import fnmatch
import heapq
import os
import sys
from collections.abc import Iterator, Sequence
from typing import IO, Any, NoReturn

from ._model import Timeline
from .sinks._console import (
    _GLYPHS,
    MIN_WIDTH,
    _can_encode,
    _encodable,
    _use_color,
    render_waterfall,
    terminal_width,
)
from .sinks._jsonl import (
    BadLine,
    StdinClosed,
    done_with_stdin,
    open_stdin,
    open_text,
    path_label,
    read_to_end,
)


class CliError(Exception):
    """A problem to report as one line on standard error."""


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors as one line (``stagetrace show: error: ...``), exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


# --- argument types: a bad value is refused before anything is read --------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number from 1 up, got {text!r}")
    return value


def _width(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < MIN_WIDTH:
        raise argparse.ArgumentTypeError(
            f"expected a number of columns from {MIN_WIDTH} up, got {text!r}"
        )
    return value


def _milliseconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected milliseconds (0 or more), got {text!r}")
    return value


def _statuses(text: str) -> list[str]:
    """``404``, ``4xx``, or a comma list of those."""
    items = [item.strip().lower() for item in text.split(",")]
    for item in items:
        if not (
            len(item) == 3
            and item[0] in "12345"
            and (item[1:].isdigit() or item[1:] == "xx")
            and item.isascii()
        ):
            raise argparse.ArgumentTypeError(
                f"expected a status like 404, 4xx or 404,5xx, got {text!r}"
            )
    return items


# --- selecting timelines ---------------------------------------------------------------------


def _matches(pattern: str, value: str | None) -> bool:
    """Exact match, or a glob when `pattern` has a ``*``; a leading or trailing ``/`` never
    matters, since Django's route templates have no leading one and most a trailing one
    (``albums/<int:pk>/``), Starlette's the other way round."""
    if value is None:
        return False
    if "*" in pattern:
        pattern, value = pattern.lstrip("/"), value.lstrip("/")
        return fnmatch.fnmatchcase(value, pattern) or fnmatch.fnmatchcase(
            value.rstrip("/"), pattern.rstrip("/")
        )
    return value.strip("/") == pattern.strip("/")


def _status_matches(wanted: list[str], status: int | None) -> bool:
    if status is None:
        return False
    code = str(status)
    return any(code == w or (w.endswith("xx") and code[0] == w[0]) for w in wanted)


def _route(timeline: Timeline) -> str | None:
    """What ``--route`` compares: the route template, or a job's name (a Celery task has no
    route; ``summary`` lists it under its name)."""
    return timeline.name if timeline.protocol == "job" else timeline.route


def selected(timeline: Timeline, args: argparse.Namespace) -> bool:
    """Whether `timeline` passes the filters added by `add_filters` (all of them)."""
    if args.route is not None and not _matches(args.route, _route(timeline)):
        return False
    if args.path is not None and not _matches(args.path, timeline.path):
        return False
    if args.status is not None and not _status_matches(args.status, timeline.status):
        return False
    return args.min_ms is None or timeline.duration_ns >= args.min_ms * 1e6


def add_filters(parser: argparse.ArgumentParser) -> None:
    """The timeline filters shared by the commands that read JSON lines files."""
    group = parser.add_argument_group(
        "filters", "All given filters must match; --last then keeps the newest N of those."
    )
    group.add_argument(
        "--route",
        metavar="R",
        help="route template, as recorded (books/<int:pk>/, /items/{item_id}), or a job's "
        "name (a Celery task's); a leading / is optional, * matches anything",
    )
    group.add_argument("--path", metavar="P", help="request path (/books/7/); * matches anything")
    group.add_argument(
        "--status", metavar="S", type=_statuses, help="status: 404, 4xx, or a list: 404,5xx"
    )
    group.add_argument(
        "--min-ms",
        metavar="MS",
        type=_milliseconds,
        help="only timelines that lasted at least MS milliseconds",
    )
    group.add_argument(
        "--last", metavar="N", type=_positive_int, help="only the newest N of the matches"
    )


def _describe(args: argparse.Namespace) -> str:
    parts = []
    for option, value in (
        ("--route", args.route),
        ("--path", args.path),
        ("--status", None if args.status is None else ",".join(args.status)),
        ("--min-ms", args.min_ms),
    ):
        if value is not None:
            parts.append(f"{option} {value}")
    return " ".join(parts)


def _open(path: str) -> IO[str]:
    name = path_label(path)
    try:
        if path == "-":
            return open_stdin()
        if os.path.isdir(path):
            raise CliError(f"{name}: is a directory, not a JSON lines file")
        return open_text(path)
    except StdinClosed as exc:
        raise CliError(f"{name}: {exc.strerror}") from None
    except FileNotFoundError:
        raise CliError(f"{name}: no such file") from None
    except PermissionError:
        raise CliError(f"{name}: permission denied") from None
    except OSError as exc:  # not a directory, a symlink loop, a name too long, an I/O error
        raise CliError(f"{name}: cannot be read ({exc.strerror or exc})") from None


def _reading(items: Iterator[Timeline | BadLine], name: str) -> Iterator[Timeline | BadLine]:
    """`items`, with an error reading the file on (an I/O error) as one line naming it."""
    try:
        yield from items
    except OSError as exc:
        raise CliError(f"{name}: reading stopped: {exc.strerror or exc}") from None


class Selection:
    """The timelines of one file that pass the filters, read lazily, with what was seen."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.name = path_label(args.file)
        self.bad: list[BadLine] = []
        self.total = 0
        self.matched = 0
        self.path_matches = 0  # timelines --path would select with --route's value: a hint
        # The filters with --route's value given as --path instead (when --path is not given).
        self._as_path: argparse.Namespace | None = None
        if args.route is not None and args.path is None:
            self._as_path = argparse.Namespace(**{**vars(args), "route": None, "path": args.route})

    def __iter__(self) -> Iterator[Timeline]:
        stream = _open(self.args.file)
        last = self.args.last
        # --last: the N that started last (a min-heap by start time, then by order read), not
        # the last N lines: `cat app.jsonl*` puts the current file before the rotated one, and
        # processes sharing a file append a timeline when it ends.
        kept: list[tuple[int, int, Timeline]] | None = [] if last else None
        items = read_to_end(stream)
        try:
            for item in _reading(items, self.name):
                if isinstance(item, BadLine):
                    self.bad.append(item)
                    continue
                self.total += 1
                if not selected(item, self.args):
                    if self._as_path is not None and selected(item, self._as_path):
                        self.path_matches += 1
                    continue
                self.matched += 1
                if kept is None:
                    yield item
                elif len(kept) < last:
                    heapq.heappush(kept, (item.start_unix_nano, self.matched, item))
                else:
                    heapq.heappushpop(kept, (item.start_unix_nano, self.matched, item))
        finally:
            if self.args.file != "-":
                stream.close()
            else:
                done_with_stdin(stream)
        if kept is not None:
            yield from (tl for _, _, tl in sorted(kept))

    def report(self) -> int:
        """Print the problems on standard error; the exit status."""
        for b in self.bad[:20]:
            print(f"stagetrace: {self.name}:{b.lineno}: {b.reason}", file=sys.stderr)
        if len(self.bad) > 20:
            print(f"stagetrace: {self.name}: {len(self.bad) - 20} more bad lines", file=sys.stderr)
        if not self.total:
            if not self.bad:
                print(f"stagetrace: {self.name}: no timelines in the file", file=sys.stderr)
            return 1
        if not self.matched:
            hint = ""
            if self.path_matches:
                n = self.path_matches
                hint = f"; {n} {'has' if n == 1 else 'have'} that path (use --path)"
            print(
                f"stagetrace: no timeline matched {_describe(self.args)} "
                f"(of {self.total} in {self.name}){hint}",
                file=sys.stderr,
            )
            return 1
        return 1 if self.bad else 0


# --- commands --------------------------------------------------------------------------------


def _cmd_show(args: argparse.Namespace, out: IO[str]) -> int:
    color = _use_color(args.color, out)
    width = args.width or terminal_width(out)
    unicode = _can_encode(out, _GLYPHS)  # as the console sink decides
    selection = Selection(args)
    for shown, tl in enumerate(selection):
        if shown:
            out.write("\n")
        text = render_waterfall(
            tl, width=width, color=color, unicode=unicode, verbose=args.verbose, sql=args.sql
        )
        out.write(text if unicode else _encodable(out, text))
    out.flush()
    return selection.report()


def _cmd_demo(args: argparse.Namespace, out: IO[str]) -> int:
    from ._demo import DemoError, run_demo

    width = args.width or terminal_width(out)
    try:
        return run_demo(out, color=_use_color(args.color, out), width=width)
    except DemoError as exc:
        raise CliError(str(exc)) from None


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="stagetrace", description="Per-request stage timelines for Python web apps.")
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = sub.add_parser("demo", help="run the bundled example through a few requests")
    show = sub.add_parser(
        "show",
        help="print waterfalls of timelines from a JSON lines file",
        description="Print the waterfall of each timeline in a file written by the jsonl sink. "
        "Repeated sibling stages (an N+1) are collapsed into one row with a count; -v shows "
        "them all. Exit status: 0 shown, 1 bad lines or nothing matched, 2 bad arguments.",
    )
    show.add_argument("file", help="a file written by the jsonl sink ('-' for standard input)")
    add_filters(show)
    show.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="every stage (no collapsing), full names, SQL, URLs and error messages",
    )
    show.add_argument("--sql", action="store_true", help="the SQL text under each query")
    for cmd in (demo, show):
        cmd.add_argument(
            "--color",
            choices=("auto", "always", "never"),
            default="auto",
            help="colours: auto (on a terminal, unless NO_COLOR), always, never",
        )
        cmd.add_argument(
            "--width",
            type=_width,
            metavar="COLUMNS",
            help="output width (default: the terminal's, COLUMNS, else 120)",
        )
    _add_analysis_commands(sub)
    return p


# --- analysis commands: `summary` and `report` ----------------------------------------------
# Their arguments and logic live in stagetrace._summary and stagetrace.report; this block only
# registers them. Each sets `run`, a function (args, out) -> exit status.


def _add_analysis_commands(sub: Any) -> None:
    summary = sub.add_parser(
        "summary", help="per-route latency, time per stage kind, top queries and findings"
    )
    summary.set_defaults(run=_run_summary)
    report = sub.add_parser("report", help="write a self-contained HTML report")
    report.set_defaults(run=_run_report)
    from . import _summary
    from .report import _cli as _report_cli

    _summary.add_arguments(summary)
    _report_cli.add_arguments(report)


def _run_summary(args: argparse.Namespace, out: IO[str]) -> int:
    from . import _summary

    return _summary.main(args, out)


def _run_report(args: argparse.Namespace, out: IO[str]) -> int:
    from .report import _cli as _report_cli

    return _report_cli.main(args, out)


# --- end of analysis commands ----------------------------------------------------------------


def _version() -> str:
    from . import __version__

    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``stagetrace`` console script; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        if getattr(args, "run", None) is not None:  # summary, report
            return int(args.run(args, sys.stdout))
        if args.command == "show":
            return _cmd_show(args, sys.stdout)
        return _cmd_demo(args, sys.stdout)
    except CliError as exc:
        print(f"stagetrace: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`| head`): say nothing, and keep the interpreter's final flush
        # of standard output from reporting the same broken pipe.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0
    except OSError as exc:  # writing the output failed (a full disk): one line, no traceback
        name = exc.filename
        where = f"{path_label(os.fsdecode(name))}: " if isinstance(name, (str, bytes)) else ""
        print(f"stagetrace: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
