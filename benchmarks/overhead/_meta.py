"""What the numbers were measured on: machine, Python, package versions, commit, date."""

from __future__ import annotations

import datetime
import os
import platform
import sqlite3
import subprocess
import sys
from importlib import metadata
from typing import Any

from ._runner import ROOT, postgres_version

PACKAGES = (
    "stagetrace",
    "Django",
    "fastapi",
    "starlette",
    "pydantic",
    "Jinja2",
    "psycopg",
    "opentelemetry-sdk",
    "opentelemetry-instrumentation-django",
    "opentelemetry-instrumentation-fastapi",
    "opentelemetry-exporter-otlp-proto-http",
    "protobuf",
    "sentry-sdk",
    "ddtrace",
)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def _git() -> str:
    try:
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "src"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        return commit + (" (src/ modified)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def collect(with_postgres: bool) -> dict[str, Any]:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "memory_gib": _memory_gib(),
        "os": f"{platform.system()} {platform.release()}",
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "python_executable": sys.executable,
        "sqlite": sqlite3.sqlite_version,
        "postgresql": postgres_version() if with_postgres else None,
        "commit": _git(),
        "packages": versions,
    }


def render(meta: dict[str, Any]) -> list[str]:
    pk = meta["packages"]
    pkgs = ", ".join(f"{k} {v}" for k, v in pk.items() if v)
    missing = [k for k, v in pk.items() if not v]
    lines = [
        f"stagetrace overhead benchmark — {meta['date']}, stagetrace commit {meta['commit']}",
        f"machine: {meta['cpu']}, {meta['cores']} cores, {meta['memory_gib']} GiB, {meta['os']}",
        f"{meta['python']}; SQLite {meta['sqlite']}"
        + (f"; PostgreSQL {meta['postgresql']}" if meta.get("postgresql") else ""),
        f"packages: {pkgs}",
    ]
    if missing:
        lines.append(f"not installed: {', '.join(missing)}")
    return lines
