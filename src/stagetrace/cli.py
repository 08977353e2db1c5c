"""The ``stagetrace`` command: ``demo``, ``show``, ``summary`` and ``report``."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Sequence
from typing import IO, Any

from .sinks._console import _use_color, render_waterfall
from .sinks._jsonl import BadLine, read_jsonl


class CliError(Exception):
    """A problem to report as one line on standard error."""


def _cmd_show(args: argparse.Namespace, out: IO[str]) -> int:
    path = args.file
    try:
        if path == "-":
            stream: IO[str] = sys.stdin
        else:
            if os.path.isdir(path):
                raise CliError(f"{path} is a directory, not a JSON lines file")
            stream = open(path, encoding="utf-8", errors="replace")  # noqa: SIM115
    except FileNotFoundError:
        raise CliError(f"{path}: no such file") from None
    except PermissionError:
        raise CliError(f"{path}: permission denied") from None
    color = _use_color(args.color, out)
    width = args.width or 120
    bad: list[BadLine] = []
    shown = 0
    try:
        items = list(read_jsonl(stream))
    finally:
        if stream is not sys.stdin:
            stream.close()
    timelines = [t for t in items if not isinstance(t, BadLine)]
    bad = [t for t in items if isinstance(t, BadLine)]
    if args.last:
        timelines = timelines[-args.last :]
    for tl in timelines:
        if args.route and tl.route != args.route:
            continue
        if shown:
            out.write("\n")
        out.write(render_waterfall(tl, width=width, color=color))
        shown += 1
    name = "<stdin>" if path == "-" else path
    for b in bad[:20]:
        print(f"stagetrace: {name}:{b.lineno}: {b.reason}", file=sys.stderr)
    if len(bad) > 20:
        print(f"stagetrace: {name}: {len(bad) - 20} more bad lines", file=sys.stderr)
    if bad:
        return 1
    if not items:
        print(f"stagetrace: {name}: no timelines in the file", file=sys.stderr)
        return 1
    return 0


def _cmd_demo(args: argparse.Namespace, out: IO[str]) -> int:
    from ._demo import DemoError, run_demo

    width = args.width or (shutil.get_terminal_size((120, 24)).columns if out.isatty() else 120)
    try:
        return run_demo(out, color=_use_color(args.color, out), width=width)
    except DemoError as exc:
        raise CliError(str(exc)) from None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="stagetrace", description="Per-request stage timelines for Python web apps."
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = sub.add_parser("demo", help="run the bundled example through a few requests")
    show = sub.add_parser("show", help="print waterfalls of timelines from a JSON lines file")
    show.add_argument("file", help="a file written by the jsonl sink ('-' for standard input)")
    show.add_argument("--last", type=int, metavar="N", help="only the last N timelines")
    show.add_argument("--route", help="only timelines of this route")
    for cmd in (demo, show):
        cmd.add_argument("--color", choices=("auto", "always", "never"), default="auto")
        cmd.add_argument("--width", type=int, metavar="COLUMNS", help="output width")
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
        return 0
