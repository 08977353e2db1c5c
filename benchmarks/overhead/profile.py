"""Where a configuration's time goes: a py-spy sampling profile of one child of the benchmark.

    .venv/bin/python -m benchmarks.overhead.profile                       # stagetrace-memory, N+1
    .venv/bin/python -m benchmarks.overhead.profile --config stagetrace-record --path /products/
    .venv/bin/python -m benchmarks.overhead.profile --app fastapi --path /items/3

Starts the same child the benchmark uses (fresh interpreter, warmed up), makes it serve the
endpoint in blocks for `--seconds` (flushing after each block, as the benchmark does) while
py-spy samples whichever thread holds the GIL (so waiting threads do not count), and prints:
stagetrace's own share of the samples, split by thread; the top functions by self time overall;
and the top stagetrace functions by self time and by inclusive time. ``--raw`` keeps py-spy's collapsed
stacks for a flame graph.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from . import _apps, _runner
from ._tracers import CONFIGS

FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")


def _function(frame: str) -> str:
    m = FRAME.match(frame)
    if not m:
        return frame
    path = m["file"]
    for marker in ("site-packages/", "/src/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{m['func']} ({path})"


def _is_ours(frame: str) -> bool:
    return "stagetrace/" in frame or "stagetrace\\" in frame


def _is_stdlib(frame: str) -> bool:
    """py-spy shortens paths to the importable part (``threading.py``, ``json/encoder.py``,
    ``django/db/utils.py``); generated code (dataclass ``__init__``) shows as ``<string>``."""
    m = FRAME.match(frame)
    path = m["file"] if m else frame
    if not path or path.startswith("<"):
        return True
    if "lib/python3" in path:  # an unshortened path
        return "site-packages" not in path
    return path.split("/")[0].removesuffix(".py") in sys.stdlib_module_names


def analyse(raw: str, top: int) -> list[str]:
    """Summarize py-spy's collapsed stacks. stagetrace's own cost is a sample whose innermost
    frame is stagetrace code, or standard-library code stagetrace called directly (threading,
    json, ...); time in framework or app code that stagetrace merely wraps is not."""
    self_time: Counter[str] = Counter()
    ours_self: Counter[str] = Counter()
    ours_incl: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = own = 0
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if not f.startswith("thread (")]
        if not frames:
            continue
        total += count
        self_time[_function(frames[-1])] += count
        last = max((i for i, f in enumerate(frames) if _is_ours(f)), default=None)
        if last is None:
            continue
        if any("_pipeline" in f and "_run (" in f for f in frames):
            thread = "stagetrace worker thread"
        elif any("_child.py" in f for f in frames):
            thread = "request thread"
        else:
            thread = "other threads"
        for name in {_function(f) for f in frames if _is_ours(f)}:
            ours_incl[name] += count
        callees = frames[last + 1 :]
        if all(_is_stdlib(f) for f in callees):
            own += count
            threads[thread] += count
            name = _function(frames[last])
            if callees:
                name += f" -> {_function(callees[-1])}"
            ours_self[name] += count
    if not total:
        return ["no samples (is py-spy allowed to attach? it needs ptrace)"]
    out = [
        f"{total:,} samples of the thread holding the GIL; stagetrace's own code (and the"
        f" standard library it calls): {own:,} = {100 * own / total:.1f} %",
    ]
    for thread, n in threads.most_common():
        out.append(f"  {thread:28s} {n:8,d}  {100 * n / total:5.1f} % of all samples")
    out += ["", f"top {top} functions by self time (all code):"]
    out += [f"  {100 * n / total:5.1f} %  {name}" for name, n in self_time.most_common(top)]
    out += ["", f"top {top} stagetrace functions by self time (with the standard-library"]
    out += ["  function they called, when that is where the sample was):"]
    out += [f"  {100 * n / total:5.1f} %  {name}" for name, n in ours_self.most_common(top)]
    out += ["", f"top {top} stagetrace functions by inclusive time (including the framework"]
    out += ["  code they wrap):"]
    out += [f"  {100 * n / total:5.1f} %  {name}" for name, n in ours_incl.most_common(top)]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.overhead.profile", description=__doc__)
    p.add_argument("--app", choices=_runner.APPS, default="django-sqlite")
    p.add_argument("--config", choices=CONFIGS, default="stagetrace-memory")
    p.add_argument("--path", help="endpoint (default: the app's second one, the N+1 view)")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--rate", type=int, default=250, help="samples per second")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--raw", type=Path, help="also write py-spy's collapsed stacks here")
    args = p.parse_args(argv)
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        p.error("py-spy is not installed: pip install -e '.[bench]'")
    path = args.path or _apps.ENDPOINTS[_apps.framework_of(args.app)][1][1]
    tmp = _runner.make_tmp()
    raw_path = args.raw or tmp / "profile.txt"
    try:
        with _runner.database(args.app, tmp) as db:
            child = _runner.spawn(args.app, args.config, db, tmp, 1.0)
            try:
                info = child.receive(timeout=600)
                if "unavailable" in info:
                    print(f"{args.config} is not available: {info['unavailable']}")
                    return 1
                spy_proc = subprocess.Popen(
                    [
                        spy,
                        "record",
                        *("--pid", str(info["pid"]), "--rate", str(args.rate)),
                        *("--format", "raw", "--output", str(raw_path), "--threads", "--gil"),
                        *("--duration", str(int(args.seconds))),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                deadline = time.monotonic() + args.seconds
                served = 0
                while time.monotonic() < deadline and spy_proc.poll() is None:
                    child.send({"cmd": "block", "path": path, "n": 20})
                    served += 20
                _, err = spy_proc.communicate(timeout=120)
                if spy_proc.returncode:
                    print(f"py-spy failed: {err.strip()[-300:]}")
                    return 1
            finally:
                child.close()
        print(f"{args.config}, {args.app} {path}: {served:,} requests in {args.seconds:g} s\n")
        print("\n".join(analyse(raw_path.read_text(), args.top)))
        if args.raw:
            print(f"\ncollapsed stacks written to {args.raw}")
    finally:
        _runner.remove_tmp(tmp)
    return 0


if __name__ == "__main__":
    sys.exit(main())
