#!/usr/bin/env python
"""Run Flask's own test suite twice — without stagetrace, and with
``stagetrace.flask.instrument()`` on for every app (recording into a memory sink) — and compare
the outcome of every single test.

    python scripts/flask_suite.py

Flask's tests come from the source distribution of the *installed* Flask version; they run in a
virtual environment of their own under .cache/ with Flask's test dependencies (its ``tests``
dependency group: asgiref, greenlet, python-dotenv) and this checkout of stagetrace. Exit
status 0 when both runs give the same result for every test.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache"
# Flask 3.1 tests import `_pytest.monkeypatch.notset`, gone in pytest 9.
TEST_DEPS = ["asgiref", "greenlet", "pytest<9", "python-dotenv"]

PLUGIN = """
import stagetrace, stagetrace.flask

def pytest_configure(config):
    stagetrace.configure(sinks=["memory"], memory_size=50)
    stagetrace.flask.instrument()

def pytest_unconfigure(config):
    import gc
    gc.collect()  # responses a test dropped unread end their timeline when collected
    stagetrace.flush()
    stats = {"timelines": 0, "internal_errors": 0, **stagetrace.stats()}
    print(f"\\nstagetrace: {stats['timelines']} timelines, "
          f"{stats['internal_errors']} internal errors")
"""


def prepare() -> tuple[Path, Path]:
    from importlib.metadata import version as installed

    version = installed("flask")
    source = CACHE / f"flask-{version}"
    if not (source / "tests").is_dir():
        CACHE.mkdir(exist_ok=True)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--no-binary",
                ":all:",
                f"flask=={version}",
                "-d",
                str(CACHE),
                "-q",
            ],
            check=True,
        )
        with tarfile.open(CACHE / f"flask-{version}.tar.gz") as tar:
            tar.extractall(CACHE, filter="data")
    venv = CACHE / "flask-suite-venv"
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [
                str(python),
                "-m",
                "pip",
                "install",
                "-q",
                f"flask=={version}",
                *TEST_DEPS,
                "-e",
                str(ROOT),
            ],
            check=True,
        )
    return source, python


def run(python: Path, source: Path, with_stagetrace: bool) -> tuple[dict[str, str], str]:
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "report.xml"
        cmd = [
            str(python),
            "-m",
            "pytest",
            "tests",
            "-q",
            "-p",
            "no:cacheprovider",
            f"--junitxml={report}",
            "-o",
            "junit_family=xunit2",
        ]
        env = None
        if with_stagetrace:
            (Path(tmp) / "stagetrace_suite_plugin.py").write_text(PLUGIN)
            cmd += ["-p", "stagetrace_suite_plugin"]
            env = {**os.environ, "PYTHONPATH": tmp}
        proc = subprocess.run(cmd, cwd=source, capture_output=True, text=True, env=env)
        results: dict[str, str] = {}
        for case in ET.parse(report).getroot().iter("testcase"):
            name = f"{case.get('classname')}::{case.get('name')}"
            outcome = "passed"
            for child in case:
                if child.tag in ("failure", "error", "skipped"):
                    outcome = child.tag
            results[name] = outcome
    lines = proc.stdout.strip().splitlines()
    tail = [line for line in lines if line.startswith("stagetrace:")][:1]
    summary = [line for line in lines if " passed" in line or " failed" in line][-1:]
    return results, " / ".join([*tail, *summary])


def main() -> int:
    source, python = prepare()
    print(f"Flask {source.name.partition('-')[2]}: {source / 'tests'}")
    outcomes = []
    for label, flag in (("without stagetrace", False), ("with stagetrace", True)):
        started = time.monotonic()
        results, summary = run(python, source, flag)
        counts = Counter(results.values())
        outcomes.append(results)
        print(
            f"{label:20s} {len(results):5d} tests  "
            + "  ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
            + f"  ({time.monotonic() - started:.0f} s)  [{summary}]"
        )
    a, b = outcomes
    for t in sorted(t for t in a if a[t] in ("failure", "error") and b.get(t) == a[t]):
        print(f"  {a[t]} in both runs (not stagetrace's doing): {t}")
    differ = sorted(t for t in set(a) | set(b) if a.get(t) != b.get(t))
    for t in differ:
        print(f"  DIFFERS {t}: without={a.get(t)} with={b.get(t)}")
    print("identical results" if not differ else f"{len(differ)} tests differ")
    return 1 if differ or not a else 0


if __name__ == "__main__":
    raise SystemExit(main())
