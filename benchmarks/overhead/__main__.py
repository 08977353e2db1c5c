"""Side-by-side overhead of stagetrace and the tracers users would pick instead.

    .venv/bin/python -m benchmarks.overhead                 # full run (~15 min on 2 cores)
    .venv/bin/python -m benchmarks.overhead --quick         # ~3 min
    .venv/bin/python -m benchmarks.overhead --only django-sqlite --configs none,stagetrace-memory
    .venv/bin/python -m benchmarks.overhead --load          # also real servers under load
    .venv/bin/python -m benchmarks.overhead --json out.json

See benchmarks/README.md for what each configuration is and how it is measured.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

from . import _meta, _report, _runner, _scale
from ._tracers import CONFIGS


def _list(value: str, known: tuple[str, ...], what: str) -> list[str]:
    items = [v.strip() for v in value.split(",") if v.strip()]
    for item in items:
        if item not in known:
            raise argparse.ArgumentTypeError(
                f"unknown {what} {item!r}; choose from {', '.join(known)}"
            )
    return items


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.overhead",
        description="Added latency and CPU per request of stagetrace and its peers, "
        "each configuration in a fresh interpreter, rounds interleaved, medians reported.",
    )
    p.add_argument("--quick", action="store_true", help="fewer, shorter rounds (~3 min)")
    p.add_argument(
        "--only",
        type=lambda v: _list(v, (*_runner.APPS, "django"), "app"),
        default=None,
        help="apps to measure, comma-separated: django (both databases), django-sqlite, "
        "django-postgres, fastapi",
    )
    p.add_argument(
        "--configs",
        type=lambda v: _list(v, CONFIGS, "configuration"),
        default=None,
        help=f"configurations, comma-separated (none is always included): {', '.join(CONFIGS)}",
    )
    p.add_argument("--rounds", type=int, help="interleaved rounds (default 30, quick 6)")
    p.add_argument(
        "--block-ms",
        type=float,
        help="target length of one block of requests (default 30, quick 20)",
    )
    p.add_argument("--warmup", type=float, help="warm-up seconds per endpoint (default 1)")
    p.add_argument(
        "--max-wait",
        type=float,
        help="minutes the run may spend waiting for other processes to leave the CPUs "
        "(default 3, quick 0.25)",
    )
    p.add_argument("--seed", type=int, default=1, help="seed of the shuffled block order")
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the results as JSON")
    p.add_argument(
        "--scale",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="cost and memory vs number of stages (default: on, off with --quick)",
    )
    p.add_argument("--load", action="store_true", help="load test real servers (needs wrk)")
    p.add_argument("--load-seconds", type=float, default=8.0, help="seconds per load run")
    p.add_argument("--load-rounds", type=int, default=3, help="runs per server and configuration")
    p.add_argument(
        "--ddtrace-agent",
        choices=("loopback", "unreachable"),
        default="loopback",
        help="ddtrace's agent: the loopback collector (default) or a closed port (its flush "
        "then waits ~3 s in retries per block)",
    )
    p.add_argument(
        "--pin",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="pin the measured children to one CPU (default: on, where the OS allows it)",
    )
    p.add_argument("--keep-logs", action="store_true", help="keep the children's logs")
    args = p.parse_args(argv)
    if args.rounds is not None and args.rounds < 1:
        p.error("--rounds must be at least 1")
    if args.block_ms is not None and args.block_ms <= 0:
        p.error("--block-ms must be positive")
    return args


def _stop(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds through the clean-up: children, databases


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started in background
    started = time.monotonic()
    _runner.DDTRACE_AGENT["mode"] = args.ddtrace_agent
    _runner.PIN["cpu"] = _runner.pin_cpu() if args.pin else None
    only = set(args.only or _runner.APPS)
    if "django" in only:
        only |= {"django-sqlite", "django-postgres"}
    apps = [a for a in _runner.APPS if a in only]
    configs = ["none", *(c for c in (args.configs or CONFIGS) if c != "none")]
    rounds = args.rounds or (6 if args.quick else 30)
    block_s = (args.block_ms or (20.0 if args.quick else 30.0)) / 1000
    warmup = args.warmup if args.warmup is not None else (0.3 if args.quick else 1.0)
    scale = args.scale if args.scale is not None else not args.quick
    quiet = _runner.QuietWaiter(
        60 * (args.max_wait if args.max_wait is not None else (0.25 if args.quick else 3.0))
    )

    def write(line: str) -> None:
        print(line, flush=True)

    def progress(text: str) -> None:
        elapsed = time.monotonic() - started
        sys.stderr.write(f"[{elapsed:6.0f} s] {text}\n")
        sys.stderr.flush()

    meta = _meta.collect(with_postgres="django-postgres" in apps)
    meta["options"] = {
        "rounds": rounds,
        "block_ms": block_s * 1000,
        "warmup_s": warmup,
        "seed": args.seed,
        "quick": args.quick,
        "ddtrace_agent": args.ddtrace_agent,
        "pinned_cpu": _runner.PIN["cpu"],
    }
    for line in _meta.render(meta):
        write(line)
    pinned = _runner.PIN["cpu"]
    write(
        f"each configuration's process pinned to CPU {pinned}"
        if pinned is not None
        else "processes not pinned to a CPU"
    )
    write("configurations: " + "; ".join(f"{c} = {_describe(c)}" for c in configs))

    tmp = _runner.make_tmp()
    document: dict[str, Any] = {"meta": meta, "apps": {}}
    failed = False
    try:
        for app in apps:
            try:
                with _runner.database(app, tmp) as db:
                    group = _runner.run_group(
                        app,
                        configs,
                        db,
                        tmp,
                        rounds=rounds,
                        block_seconds=block_s,
                        warmup=warmup,
                        seed=args.seed,
                        progress=progress,
                        quiet=quiet,
                    )
            except Exception as exc:  # e.g. PostgreSQL not running: report, go on
                summary = {
                    "title": _runner.APP_TITLES[app],
                    "error": f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}",
                    "rounds": rounds,
                    "endpoints": [],
                    "configs": {},
                }
            else:
                summary = _report.summarize(group)
            failed |= any(
                not c["available"] and not str(c["reason"]).startswith("stagetrace option")
                for c in summary["configs"].values()
            )
            document["apps"][app] = summary
            _report.render_group(summary, write)
        document["targets"] = _report.targets(document["apps"])
        _report.render_targets(document["targets"], write)
        document["steadiness"] = _report.steadiness(document["apps"])
        _report.render_steadiness(document["steadiness"], write)
        if scale and any(a.startswith("django") for a in apps):
            with _runner.database("django-sqlite", tmp) as db:
                document["scale"] = _scale.run_scale(
                    configs, db, tmp, quick=args.quick, progress=progress, quiet=quiet
                )
            _scale.render_scale(document["scale"], write)
        if args.load:
            with _runner.database("django-sqlite", tmp) as db:
                document["load"] = _scale.run_load(
                    configs,
                    db,
                    tmp,
                    seconds=args.load_seconds,
                    rounds=args.load_rounds,
                    progress=progress,
                )
            _scale.render_load(document["load"], write)
    finally:
        elapsed = time.monotonic() - started
        document["meta"]["duration_s"] = round(elapsed)
        document["meta"]["waited_for_quiet_s"] = round(quiet.waited)
        write("")
        write(
            f"finished in {elapsed / 60:.1f} min"
            f" ({quiet.waited / 60:.1f} min of it waiting for other processes to go quiet)"
        )
        if args.json:
            args.json.write_text(json.dumps(document, indent=1, default=str) + "\n")
            write(f"JSON written to {args.json}")
        if failed or args.keep_logs:
            write(f"children's logs kept in {tmp}")
        else:
            _runner.remove_tmp(tmp)
    return 0


def _describe(config: str) -> str:
    from ._tracers import DESCRIPTIONS

    return DESCRIPTIONS[config]


if __name__ == "__main__":
    sys.exit(main())
