"""The parent process: databases, collectors, one child interpreter per configuration, and the
interleaved rounds.

For each app (Django on SQLite, Django on PostgreSQL, FastAPI) every configuration gets a fresh
interpreter that stays up for the whole app group. Each round visits every endpoint, and for
each endpoint every configuration in a shuffled order serves one block of requests; so slow
drifts of the machine hit all configurations alike, and each round yields one paired sample
per configuration.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import select
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import _apps
from ._sink import Collector

ROOT = _apps.ROOT
PG_DSN = "host=127.0.0.1 port=5432 user=postgres dbname=test connect_timeout=3"

APPS = ("django-sqlite", "django-postgres", "fastapi")
APP_TITLES = {
    "django-sqlite": "Django, SQLite, in-process WSGI",
    "django-postgres": "Django, PostgreSQL (psycopg 3), in-process WSGI",
    "fastapi": "FastAPI example, in-process ASGI",
}


class ChildFailed(Exception):
    pass


@dataclass
class Child:
    config: str
    proc: subprocess.Popen[bytes]
    reply_fd: int
    log_path: Path
    collector: Collector | None
    buffer: bytes = b""
    info: dict[str, Any] = field(default_factory=dict)
    unavailable: str | None = None
    delivered: int = 0

    def send(self, cmd: dict[str, Any], timeout: float = 600.0) -> dict[str, Any]:
        if self.proc.stdin is None:
            raise ChildFailed("no stdin")
        try:
            self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise ChildFailed(self._died()) from None
        return self.receive(timeout)

    def receive(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ChildFailed(f"no answer within {timeout:.0f} s")
            ready, _, _ = select.select([self.reply_fd], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(self.reply_fd, 1 << 20)
            if not chunk:
                raise ChildFailed(self._died())
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return dict(json.loads(line))

    def _died(self) -> str:
        code = self.proc.wait(timeout=10)
        tail = log_tail(self.log_path)
        return f"exited with status {code}" + (f": {tail}" if tail else "")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            if self.proc.poll() is None and self.proc.stdin is not None:
                self.proc.stdin.write(b'{"cmd": "exit"}\n')
                self.proc.stdin.flush()
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self.reply_fd)
        if self.collector is not None:
            self.collector.close()


def log_tail(path: Path, lines: int = 1) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])[:300]


def log_lines(path: Path) -> int:
    try:
        return len(path.read_text(errors="replace").splitlines())
    except OSError:
        return 0


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released): the unreachable agent."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


#: Where ddtrace sends: "loopback" (the collector, answering like an agent) or "unreachable".
DDTRACE_AGENT = {"mode": "loopback"}

#: The CPU every child measured side by side is pinned to (None: not pinned). Children run
#: their blocks one at a time, so they never compete for it; the collector, PostgreSQL and this
#: process keep the other CPUs. Unpinned, a child on this class of 2-vCPU machine sometimes ran
#: *every* request about 1.8 times slower for its whole life (seen in about half of the
#: processes, never when pinned), which no number of rounds averages out: every block of that
#: configuration came from the same slow process.
PIN: dict[str, int | None] = {"cpu": None}


def pin_cpu() -> int | None:
    """The CPU to pin children to: the last one this process may use, if there are two or
    more (None where affinity cannot be set)."""
    getaff = getattr(os, "sched_getaffinity", None)
    if getaff is None:
        return None
    cpus = sorted(getaff(0))
    return cpus[-1] if len(cpus) > 1 else None


def child_env(db: str | None, collector: Collector | None) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("STAGETRACE_", "BENCH_", "OTEL_", "DD_", "SENTRY_"))
    }
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    if db:
        env["BENCH_DB"] = db
    env["OTEL_SERVICE_NAME"] = "bench"
    if PIN["cpu"] is not None:
        env["BENCH_CPU"] = str(PIN["cpu"])
    if collector is not None:
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = collector.otlp_endpoint
        env["OTEL_EXPORTER_OTLP_PROTOCOL"] = "http/protobuf"
        env["BENCH_SENTRY_DSN"] = collector.sentry_dsn
    if collector is not None and DDTRACE_AGENT["mode"] == "loopback":
        env["BENCH_DD_AGENT_URL"] = collector.otlp_endpoint
    else:
        env["BENCH_DD_AGENT_URL"] = f"http://127.0.0.1:{closed_port()}"
    return env


def spawn(
    app: str,
    config: str,
    db: str | None,
    logdir: Path,
    warmup: float,
    *,
    paths: list[str] | None = None,
    min_warmup: int = 20,
    tag: str = "",
) -> Child:
    collector = Collector()
    log_path = logdir / f"{app}{tag}.{config}.log"
    read_fd, write_fd = os.pipe()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks.overhead._child",
                "--app",
                app,
                "--config",
                config,
                "--reply-fd",
                str(write_fd),
                "--warmup",
                str(warmup),
                "--min-warmup",
                str(min_warmup),
                *(["--paths", ",".join(paths)] if paths else []),
            ],
            cwd=ROOT,
            env=child_env(db, collector),
            stdin=subprocess.PIPE,
            stdout=log,
            stderr=subprocess.STDOUT,
            pass_fds=(write_fd,),
        )
    os.close(write_fd)
    return Child(config, proc, read_fd, log_path, collector)


# --- databases --------------------------------------------------------------------------------


@contextlib.contextmanager
def database(app: str, tmp: Path) -> Iterator[str]:
    """A fresh, seeded database for `app`; PostgreSQL ones are dropped afterwards."""
    if app == "fastapi":
        yield ""
        return
    if app == "django-sqlite":
        db = f"sqlite:{tmp / 'shop.sqlite3'}"
        if not (tmp / "shop.sqlite3").exists():
            prepare(db)
        yield db
        return
    import psycopg

    name = f"stagetrace_bench_{os.getpid()}"
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        prepare(f"postgres:{name}")
        yield f"postgres:{name}"
    finally:
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def prepare(db: str) -> None:
    env = child_env(db, None)
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.overhead._child", "--app", "django", "--setup"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    if out.returncode:
        raise RuntimeError(f"database set-up failed: {out.stderr.strip().splitlines()[-1:]}")


def postgres_version() -> str | None:
    try:
        import psycopg

        with psycopg.connect(PG_DSN) as conn:
            row = conn.execute("SHOW server_version").fetchone()
        return str(row[0]).split()[0] if row else None
    except Exception:
        return None


# --- one app group ----------------------------------------------------------------------------


@dataclass
class Sample:
    latency_ns: float  # block mean of per-request wall time
    cpu_ns: float  # process CPU per request, flush included
    delivered: float  # spans/stages delivered per request
    lat: list[int]  # every request's wall time
    gc_ns: float = 0.0  # garbage collection time per request
    gc: tuple[float, float, float] = (0.0, 0.0, 0.0)  # collections per request, by generation


class MachineLoad:
    """How much else the machine did during a stretch of time: CPU time of other processes
    (``/proc/stat`` busy time minus this benchmark's own) and time runnable tasks waited for a
    CPU (``/proc/pressure/cpu``, "some"). Linux only; elsewhere both read as unknown."""

    def __init__(self) -> None:
        self.t = time.monotonic()
        self.busy = _busy_seconds()
        self.stall = _stall_seconds()
        self.own = time.process_time()

    def other(self, children_cpu_s: float) -> tuple[float | None, float | None]:
        """(other processes' CPU in cores, stalled fraction) since construction."""
        wall = time.monotonic() - self.t
        busy, stall = _busy_seconds(), _stall_seconds()
        own = time.process_time() - self.own + children_cpu_s
        other = None if busy is None or self.busy is None else (busy - self.busy - own) / wall
        stalled = None if stall is None or self.stall is None else (stall - self.stall) / wall
        return other, stalled


#: A segment during which other processes used less CPU than this (in cores) counts as quiet.
QUIET_CORES = 0.25


class QuietWaiter:
    """Waits, before each segment, until other processes leave the CPUs alone — at most
    `each` seconds per segment (so a long busy spell does not spend the whole budget at the
    start) and `budget` seconds in all, after which it measures regardless (such segments are
    marked busy and left out of the medians when enough quiet ones exist)."""

    def __init__(self, budget_s: float, each_s: float = 5.0) -> None:
        self.budget = budget_s
        self.each = each_s
        self.waited = 0.0

    def wait(self) -> None:
        started = time.monotonic()
        while True:
            probe = MachineLoad()
            time.sleep(0.1)
            other, _ = probe.other(0.0)
            if (
                other is None
                or other < QUIET_CORES
                or self.waited >= self.budget
                or time.monotonic() - started >= self.each
            ):
                return
            self.waited += time.monotonic() - probe.t


def _busy_seconds() -> float | None:
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _stall_seconds() -> float | None:
    try:
        with open("/proc/pressure/cpu") as f:
            for line in f:
                if line.startswith("some"):
                    return int(line.rsplit("total=", 1)[1]) / 1e6
    except (OSError, ValueError, IndexError):
        pass
    return None


@dataclass
class GroupResult:
    app: str
    endpoints: list[tuple[str, str]]
    block_sizes: dict[str, int]
    children: dict[str, dict[str, Any]]
    samples: dict[tuple[str, str], dict[int, Sample]]
    rounds: int
    #: (round, path) -> (other processes' CPU in cores, stalled fraction) during that segment
    load: dict[tuple[int, str], tuple[float | None, float | None]] = field(default_factory=dict)
    error: str | None = None
    extra: Any = None


def run_group(
    app: str,
    configs: list[str],
    db: str,
    logdir: Path,
    *,
    rounds: int,
    block_seconds: float,
    warmup: float,
    seed: int,
    progress: Any,
    quiet: QuietWaiter,
    endpoints: list[tuple[str, str]] | None = None,
    min_warmup: int = 20,
    min_block: int = 10,
    calibrate: int = 30,
    tag: str = "",
    extra: Any = None,
) -> GroupResult:
    """Start one child per configuration, then run `rounds` interleaved rounds of blocks.

    Block sizes per endpoint come from the untraced child's lower-quartile request time, so
    that a block lasts about `block_seconds` (at least `min_block` requests). `extra`, if
    given, is called with the live children by configuration before they are stopped; what it
    returns lands in `GroupResult.extra`."""
    endpoints = endpoints or _apps.ENDPOINTS[_apps.framework_of(app)]
    paths = [p for _, p in endpoints] if tag else None
    children = [
        spawn(app, c, db, logdir, warmup, paths=paths, min_warmup=min_warmup, tag=tag)
        for c in configs
    ]
    result = GroupResult(app, endpoints, {}, {}, {}, rounds)
    try:
        for child in children:
            try:
                child.info = child.receive(timeout=600)
            except ChildFailed as exc:
                child.unavailable = f"failed to start: {exc}"
                continue
            if "unavailable" in child.info:
                child.unavailable = child.info["unavailable"]
            else:  # what the warm-up delivered is not part of any block
                _delivered(child, child.info.get("delivered"))
        live = [c for c in children if c.unavailable is None]
        baseline = next((c for c in live if c.config == "none"), None)
        if baseline is None:
            result.error = "the untraced configuration did not start: " + next(
                (c.unavailable or "" for c in children if c.config == "none"), "not requested"
            )
            return result
        for _, path in endpoints:
            lat = sorted(baseline.send({"cmd": "block", "path": path, "n": calibrate})["lat"])
            per = lat[len(lat) // 4] / 1e9  # the lower quartile: less hurt by a busy machine
            result.block_sizes[path] = max(min_block, min(500, round(block_seconds / per)))
        rng = random.Random(seed)
        for r in range(rounds):
            progress(f"{app}: round {r + 1}/{rounds}")
            for _, path in endpoints:
                n = result.block_sizes[path]
                order = list(live)
                rng.shuffle(order)
                quiet.wait()
                load = MachineLoad()
                children_cpu = 0.0
                for child in order:
                    if child.unavailable is not None:
                        continue
                    try:
                        reply = child.send({"cmd": "block", "path": path, "n": n})
                    except ChildFailed as exc:
                        child.unavailable = f"failed during round {r + 1}: {exc}"
                        continue
                    children_cpu += reply["cpu"] / 1e9
                    delivered = _delivered(child, reply["delivered"])
                    result.samples.setdefault((path, child.config), {})[r] = Sample(
                        statistics.fmean(reply["lat"]),
                        reply["cpu"] / n,
                        delivered / n,
                        reply["lat"],
                        reply.get("gc_ns", 0) / n,
                        tuple(c / n for c in reply.get("gc", (0, 0, 0))),  # type: ignore[arg-type]
                    )
                result.load[r, path] = load.other(children_cpu)
        if extra is not None:
            result.extra = extra({c.config: c for c in children if c.unavailable is None})
    finally:
        for child in children:
            child.close()
            info = {
                "available": child.unavailable is None,
                "reason": child.unavailable,
                "recorded": child.info.get("recorded") or {},
                "kinds": child.info.get("kinds") or {},
                "log_lines": log_lines(child.log_path),
                "log": str(child.log_path),
            }
            if child.collector is not None:
                info["collector"] = child.collector.stats()
                if child.collector.errors:
                    info["collector_errors"] = child.collector.errors[:5]
            result.children[child.config] = info
    return result


def _delivered(child: Child, cumulative: int | None) -> int:
    """Spans/stages delivered since the previous call: counted in the child, or else by the
    child's collector."""
    if cumulative is None:
        cumulative = child.collector.spans() if child.collector is not None else 0
    added = cumulative - child.delivered
    child.delivered = cumulative
    return added


def make_tmp() -> Path:
    return Path(tempfile.mkdtemp(prefix="stagetrace-overhead-"))


def remove_tmp(tmp: Path) -> None:
    shutil.rmtree(tmp, ignore_errors=True)
