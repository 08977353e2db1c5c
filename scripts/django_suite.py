#!/usr/bin/env python
"""Run Django's own test suite for the request-flow modules twice — without stagetrace and with
``stagetrace.django.instrument()`` (recording into a memory sink) — and compare the outcome of
every single test.

    python scripts/django_suite.py                 # the default modules, 2 processes
    python scripts/django_suite.py handlers asgi   # some modules

Django's tests come from the source distribution of the *installed* Django version, downloaded
once with pip into .cache/. Exit status 0 when both runs give the same result for every test.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tarfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODULES = [
    "middleware",
    "handlers",
    "urlpatterns",
    "templates",
    "template_tests",
    "queries",
    "cache",
    "sessions_tests",
    "csrf_tests",
    "asgi",
    "responses",
    "generic_views",
    "transactions",
]

WITH_STAGETRACE = r"""
import atexit, logging, os, runpy, sys
import stagetrace, stagetrace.django
# Findings are logged from the background worker: on the runner's stderr they would land in
# the middle of its verbose result lines and hide those tests' outcomes from the comparison.
_log = logging.getLogger("stagetrace")
_log.addHandler(logging.FileHandler(os.devnull))
_log.propagate = False
stagetrace.configure(sinks=["memory"], memory_size=50)
stagetrace.django.instrument()
report = "stagetrace: %(timelines)s timelines, %(internal_errors)s internal errors"
atexit.register(lambda: print(report % {"timelines": 0, "internal_errors": 0,
                                        **stagetrace.stats()}))
sys.argv = ["runtests.py", *sys.argv[1:]]
runpy.run_path("runtests.py", run_name="__main__")
"""

WITHOUT = r"""
import runpy, sys
sys.argv = ["runtests.py", *sys.argv[1:]]
runpy.run_path("runtests.py", run_name="__main__")
"""

RESULT = re.compile(
    r"^(?P<name>test\w*) \((?P<where>[\w.]+)\)(?:\n.*?)?"
    r" \.\.\. (?P<status>ok|FAIL|ERROR|skipped.*|expected failure|unexpected success)$",
    re.M,
)


def django_tests() -> Path:
    import django

    version = django.get_version()
    cache = ROOT / ".cache"
    tests = cache / f"django-{version}" / "tests"
    if tests.is_dir():
        return tests
    cache.mkdir(exist_ok=True)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-binary",
            ":all:",
            f"django=={version}",
            "-d",
            str(cache),
            "-q",
        ],
        check=True,
    )
    archive = next(cache.glob(f"[dD]jango-{version}.tar.gz"))
    with tarfile.open(archive) as tar:
        tar.extractall(cache, filter="data")
    return tests


def run(code: str, tests: Path, modules: list[str], parallel: int) -> tuple[dict[str, str], str]:
    cmd = [sys.executable, "-c", code, *modules, f"--parallel={parallel}", "-v", "2"]
    proc = subprocess.run(cmd, cwd=tests, capture_output=True, text=True)
    output = proc.stdout + proc.stderr
    results: dict[str, str] = {}
    for m in RESULT.finditer(output):
        status = m.group("status")
        results[m.group("where")] = "skipped" if status.startswith("skipped") else status
    summary = [
        line
        for line in output.splitlines()
        if line.startswith(("Ran ", "OK", "FAILED", "stagetrace: "))
    ]
    return results, " / ".join(summary)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", default=MODULES)
    parser.add_argument("--parallel", type=int, default=1)
    args = parser.parse_args()
    tests = django_tests()
    import django

    print(f"Django {django.get_version()}, modules: {' '.join(args.modules)}")
    outcomes = {}
    for label, code in (("without stagetrace", WITHOUT), ("with stagetrace", WITH_STAGETRACE)):
        started = time.monotonic()
        results, summary = run(code, tests, args.modules, args.parallel)
        took = time.monotonic() - started
        counts = Counter(results.values())
        outcomes[label] = results
        print(
            f"{label:20s} {len(results):5d} tests  "
            + "  ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
            + f"  ({took:.0f} s)  [{summary}]"
        )
    a, b = outcomes.values()
    for t in sorted(t for t in a if a[t] in ("FAIL", "ERROR") and b.get(t) == a[t]):
        print(f"  {a[t]} in both runs (not stagetrace's doing): {t}")
    differ = sorted(t for t in set(a) | set(b) if a.get(t) != b.get(t))
    for t in differ:
        print(f"  DIFFERS {t}: without={a.get(t)} with={b.get(t)}")
    print("identical results" if not differ else f"{len(differ)} tests differ")
    return 1 if differ or not a else 0


if __name__ == "__main__":
    raise SystemExit(main())
