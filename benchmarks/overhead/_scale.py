"""Scale: cost and memory against the number of stages, and real servers under load.

* `run_scale`: the Django shop's ``/scale/<n>/`` view runs `n` SQL queries on a raw cursor (one
  ``db.query`` stage each) for n = 10 … 10,000, measured like the main table (fresh interpreter
  per configuration, interleaved rounds); then, in the same children, one request of each size
  under tracemalloc for the memory a timeline holds and the exact counts it reports.
* `run_load`: gunicorn (sync and gthread workers) serving the Django shop and uvicorn serving
  the FastAPI example on loopback, driven by wrk at saturation (fixed connections), with and
  without stagetrace; throughput and p99 latency side by side.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from . import _report, _runner
from ._sink import Collector

SIZES = (10, 100, 1_000, 10_000)
SCALE_CONFIGS = (
    "none",
    "stagetrace-record",
    "stagetrace-memory",
    "stagetrace-otel",
    "otel-contrib",
    "sentry",
    "ddtrace",
)
MEMORY_CONFIGS = ("none", "stagetrace-record", "stagetrace-memory")


def run_scale(
    configs: list[str],
    db: str,
    tmp: Path,
    *,
    quick: bool,
    progress: Callable[[str], None],
    quiet: _runner.QuietWaiter,
) -> dict[str, Any]:
    chosen = [c for c in SCALE_CONFIGS if c in configs]
    endpoints = [(f"{n:,} queries", f"/scale/{n}/") for n in SIZES]

    def memory(children: dict[str, _runner.Child]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for config in MEMORY_CONFIGS:
            child = children.get(config)
            if child is None:
                continue
            progress(f"scale: memory, {config}")
            out[config] = {
                path: child.send({"cmd": "memory", "path": path}, timeout=900)
                for _, path in endpoints
            }
        return out

    group = _runner.run_group(
        "django-sqlite",
        chosen,
        db,
        tmp,
        rounds=3 if quick else 6,
        block_seconds=0.15,
        warmup=0.2,
        seed=2,
        progress=progress,
        quiet=quiet,
        endpoints=endpoints,
        min_warmup=1,
        min_block=1,
        calibrate=2,
        tag=".scale",
        extra=memory,
    )
    summary = _report.summarize(group)
    summary["memory"] = group.extra or {}
    summary["sizes"] = list(SIZES)
    return summary


def render_scale(summary: dict[str, Any], write: Callable[[str], None]) -> None:
    write("")
    write(
        "== Scale: one request running n SQL queries (one db.query stage each), Django + SQLite,"
        " in-process WSGI; µs per request, added per query (latency / CPU) =="
    )
    if summary.get("error"):
        write(f"   not measured: {summary['error']}")
        return
    eps = summary["endpoints"]
    configs = [
        c
        for c in SCALE_CONFIGS
        if c != "none" and any((ep["results"].get(c) or {}).get("available") for ep in eps)
    ]
    write(
        f"{'config':22s} {'queries':>8s} {'latency':>11s} {'added':>17s} {'CPU':>11s}"
        f" {'added':>17s} {'added per query':>16s} {'delivered/req':>14s}"
    )
    for config in ["none", *configs]:
        for ep, n in zip(eps, summary["sizes"], strict=True):
            row = ep["results"].get(config) or {}
            if not row.get("available"):
                continue
            lat, cpu = row.get("added_latency_us"), row.get("added_cpu_us")
            per = "" if lat is None or cpu is None else f"{lat / n:.1f} / {cpu / n:.1f}"
            write(
                f"{config:22s} {n:>8,d} {_report._num(row['latency_us'], 0):>11s}"
                f" {_report._added(lat, row.get('added_latency_ci_us')):>17s}"
                f" {_report._num(row['cpu_us'], 0):>11s}"
                f" {_report._added(cpu, row.get('added_cpu_ci_us')):>17s} {per:>16s}"
                f" {_report._num(row.get('delivered_per_request'), 0) if config != 'none' else '':>14s}"
            )
    unavailable = [
        f"{c}: {info['reason']}" for c, info in summary["configs"].items() if not info["available"]
    ]
    for line in unavailable:
        write(f"  not available: {line}")
    memory = summary.get("memory") or {}
    if not memory:
        return
    write("")
    write(
        "memory (tracemalloc, one request): held after delivery by the memory sink, and the peak"
        " during the request above the untraced peak; the timeline's own counts"
    )
    write(
        f"{'queries':>8s} {'retained (memory sink)':>23s} {'peak added (record)':>20s}"
        f" {'peak added (memory)':>20s} {'stages kept':>12s} {'dropped':>8s} {'db.query count':>15s}"
    )
    for _, path in [(ep["label"], ep["path"]) for ep in eps]:
        none = (memory.get("none") or {}).get(path) or {}
        rec = (memory.get("stagetrace-record") or {}).get(path) or {}
        mem = (memory.get("stagetrace-memory") or {}).get(path) or {}
        tl = mem.get("timeline") or {}
        n = int(path.strip("/").split("/")[-1])

        def kib(v: float | None) -> str:
            return "—" if v is None else f"{v / 1024:,.0f} KiB"

        retained = mem.get("retained")
        retained_added = (
            retained - none["retained"] if retained is not None and "retained" in none else None
        )
        peak_rec = rec["peak"] - none["peak"] if "peak" in rec and "peak" in none else None
        peak_mem = mem["peak"] - none["peak"] if "peak" in mem and "peak" in none else None
        write(
            f"{n:>8,d} {kib(retained_added):>23s} {kib(peak_rec):>20s} {kib(peak_mem):>20s}"
            f" {tl.get('stages', '—')!s:>12s} {tl.get('dropped_stages', '—')!s:>8s}"
            f" {(tl.get('by_kind') or {}).get('db.query', '—')!s:>15s}"
        )


# --- load ---------------------------------------------------------------------------------------

SERVERS: dict[str, dict[str, Any]] = {
    "gunicorn sync": {
        "app": "django",
        "path": "/api/products/",
        "argv": lambda port: [
            *("-m", "gunicorn", "--workers", "2", "--worker-class", "sync"),
            *("--bind", f"127.0.0.1:{port}", "--log-level", "warning"),
            "benchmarks.overhead.djangoshop.wsgi:application",
        ],
    },
    # One gthread worker: with two, one of them often took most of wrk's keep-alive
    # connections (a gthread worker keeps the connections it accepted), so a run had one core
    # busy and a third of the throughput — untraced too, at random per server start.
    "gunicorn gthread": {
        "app": "django",
        "path": "/api/products/",
        "argv": lambda port: [
            *("-m", "gunicorn", "--workers", "1", "--worker-class", "gthread", "--threads", "4"),
            *("--bind", f"127.0.0.1:{port}", "--log-level", "warning"),
            "benchmarks.overhead.djangoshop.wsgi:application",
        ],
    },
    # One uvicorn process: with --workers 2 (uvicorn 0.54 here) every keep-alive request
    # stalled ~44 ms (Nagle and delayed ACK, by the look of it), untraced or not.
    "uvicorn": {
        "app": "fastapi",
        "path": "/items/3",
        "argv": lambda port: [
            *("-m", "uvicorn", "--host", "127.0.0.1", "--port", str(port)),
            *("--no-access-log", "--log-level", "warning"),
            "benchmarks.overhead.fastapi_app:app",
        ],
    },
}
LOAD_CONFIGS = ("none", "stagetrace-memory", "otel-contrib")
CONNECTIONS = 16


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _server(name: str, config: str, db: str, logdir: Path) -> Iterator[str]:
    spec = SERVERS[name]
    port = _free_port()
    collector = Collector()
    env = _runner.child_env(db, collector)
    env["BENCH_CONFIG"] = config
    log = open(logdir / f"load.{name.replace(' ', '-')}.{config}.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, *spec["argv"](port)],
        cwd=_runner.ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}{spec['path']}"
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with status {proc.returncode}")
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{name} did not answer within 60 s") from None
                time.sleep(0.2)
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()
        collector.close()


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _wrk(url: str, seconds: float) -> dict[str, Any]:
    out = subprocess.run(
        [
            "wrk",
            *("-t", "2", "-c", str(CONNECTIONS), "-d", f"{seconds:g}s", "--latency"),
            url,
        ],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    ).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p99 = re.search(r"^\s+99%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    p50 = re.search(r"^\s+50%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:(.*)", out)
    if not rps or not p99 or not p50:
        raise RuntimeError(f"could not read wrk's output: {out.strip()[-300:]}")
    return {
        "rps": float(rps.group(1)),
        "p50_ms": float(p50.group(1)) * _UNITS[p50.group(2)],
        "p99_ms": float(p99.group(1)) * _UNITS[p99.group(2)],
        "non_2xx": int(bad.group(1)) if bad else 0,
        "socket_errors": errors.group(1).strip() if errors else "",
    }


def run_load(
    configs: list[str],
    db: str,
    tmp: Path,
    *,
    seconds: float,
    rounds: int,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    if shutil.which("wrk") is None:
        return {"error": "wrk is not installed (apt-get install -y wrk)"}
    chosen = [c for c in LOAD_CONFIGS if c in configs]
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {s: {c: [] for c in chosen} for s in SERVERS}
    errors: dict[str, str] = {}
    rng = random.Random(3)
    for r in range(rounds):
        for name in SERVERS:
            order = list(chosen)
            rng.shuffle(order)
            for config in order:
                key = f"{name}/{config}"
                if key in errors:
                    continue
                progress(f"load: round {r + 1}/{rounds}, {name}, {config}")
                try:
                    with _server(name, config, db, tmp) as url:
                        _wrk(url, 2)  # warm-up: imports, connections, the tracers' threads
                        load = _runner.MachineLoad()
                        result = _wrk(url, seconds)
                        # wrk's own CPU counts as "other" here; it is the same in every run
                        result["other_cores"] = load.other(0.0)[0]
                except Exception as exc:
                    errors[key] = f"{type(exc).__name__}: {exc}"
                    continue
                runs[name][config].append(result)
    table: dict[str, dict[str, Any]] = {}
    for name, by_config in runs.items():
        table[name] = {}
        base = by_config.get("none") or []
        for config, results in by_config.items():
            if not results:
                table[name][config] = {"available": False, "reason": errors.get(f"{name}/{config}")}
                continue
            rps = statistics.median(x["rps"] for x in results)
            p99 = statistics.median(x["p99_ms"] for x in results)
            row: dict[str, Any] = {
                "available": True,
                "runs": results,
                "rps": rps,
                "p50_ms": statistics.median(x["p50_ms"] for x in results),
                "p99_ms": p99,
            }
            if base and config != "none":
                row["rps_vs_none"] = rps / statistics.median(x["rps"] for x in base)
                row["p99_vs_none"] = p99 / statistics.median(x["p99_ms"] for x in base)
            table[name][config] = row
    return {
        "seconds": seconds,
        "rounds": rounds,
        "connections": CONNECTIONS,
        "servers": {
            n: {"app": s["app"], "path": s["path"], "results": table[n]} for n, s in SERVERS.items()
        },
    }


def render_load(summary: dict[str, Any], write: Callable[[str], None]) -> None:
    write("")
    if summary.get("error"):
        write(f"== Load test: not run: {summary['error']} ==")
        return
    write(
        "== Load test: real servers on loopback (gunicorn: 2 sync workers, 1 gthread worker of 4 threads;"
        f" uvicorn: 1 process), wrk with {summary['connections']}"
        f" connections for {summary['seconds']:g} s, median of {summary['rounds']} runs"
        " (fresh server per run, configurations interleaved) =="
    )
    write(
        f"{'server':18s} {'request':16s} {'config':20s} {'req/s':>9s} {'p50 ms':>8s}"
        f" {'p99 ms':>8s} {'throughput':>11s} {'p99':>7s}"
    )
    for name, server in summary["servers"].items():
        for config, row in server["results"].items():
            if not row.get("available"):
                write(
                    f"{name:18s} {server['path']:16s} {config:20s} not available: {row['reason']}"
                )
                continue
            rel = row.get("rps_vs_none")
            rel_p99 = row.get("p99_vs_none")
            write(
                f"{name:18s} {server['path']:16s} {config:20s} {row['rps']:9,.0f}"
                f" {row['p50_ms']:8.2f} {row['p99_ms']:8.2f}"
                f" {'' if rel is None else f'{(rel - 1) * 100:+.1f} %':>11s}"
                f" {'' if rel_p99 is None else f'{rel_p99:.2f}x':>7s}"
            )
