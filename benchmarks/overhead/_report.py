"""Statistics, the terminal tables and the JSON document.

Every "added" figure is the median over rounds of the paired difference between a
configuration's block and the untraced block of the same endpoint in the same round; its ± is
the half-width of a distribution-free 95 % confidence interval of that median (order
statistics). Ratios divide medians of added cost.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from typing import Any

from ._runner import APP_TITLES, QUIET_CORES, GroupResult, Sample
from ._tracers import CONFIGS, PEERS

#: Issue 9's targets for stagetrace-memory against otel-contrib, and for unrecorded requests.
TARGET_LATENCY_RATIO = 0.20
TARGET_CPU_RATIO = 0.35
TARGET_UNRECORDED_US = 10.0
#: Issue 10's targets for stagetrace-otel against otel-contrib.
TARGET_OTEL_CPU_RATIO = 0.6
TARGET_OTEL_SPANS_RATIO = 2.5
#: An endpoint whose untraced blocks vary more than this from round to round (interquartile
#: range over median of their CPU per request) was measured while the machine itself changed
#: speed: no other process was busy, yet the same work took a different time. Seen on the
#: 2-vCPU test machines: 3 to 11 % in a steady phase, 8 to 52 % in an unsteady one, where the
#: ratios moved by 0.1 to 0.3 between two runs of the same code.
UNSTEADY_SPREAD = 0.15


def spread(values: Sequence[float]) -> float | None:
    """Interquartile range over median (None for fewer than four values)."""
    if len(values) < 4:
        return None
    q1, med, q3 = statistics.quantiles(values, n=4)
    return (q3 - q1) / med if med > 0 else None


def median_ci(values: Sequence[float]) -> tuple[float, float | None]:
    """The median and the half-width of a distribution-free 95 % CI for it (None when there are
    too few values for one)."""
    xs = sorted(values)
    n = len(xs)
    if not n:
        return math.nan, None
    med = statistics.median(xs)
    k = math.floor((n - 1.96 * math.sqrt(n)) / 2)
    if k < 0 or n < 6:
        return med, None
    return med, (xs[n - 1 - k] - xs[k]) / 2


def _paired(
    samples: dict[int, Sample], base: dict[int, Sample], get: Callable[[Sample], float]
) -> list[float]:
    return [get(samples[r]) - get(base[r]) for r in samples if r in base]


def summarize(group: GroupResult) -> dict[str, Any]:
    """The JSON-ready summary of one app group."""
    out: dict[str, Any] = {
        "title": APP_TITLES[group.app],
        "error": group.error,
        "rounds": group.rounds,
        "configs": group.children,
        "endpoints": [],
    }
    for label, path in group.endpoints:
        use, quiet = _rounds_to_use(group, path)
        base = {r: s for r, s in group.samples.get((path, "none"), {}).items() if r in use}
        results: dict[str, Any] = {}
        for config in CONFIGS:
            info = group.children.get(config)
            if info is None:
                continue
            samples = {r: s for r, s in group.samples.get((path, config), {}).items() if r in use}
            if not samples:
                results[config] = {"available": False, "reason": info["reason"]}
                continue
            lat, lat_ci = median_ci([s.latency_ns / 1e3 for s in samples.values()])
            cpu, cpu_ci = median_ci([s.cpu_ns / 1e3 for s in samples.values()])
            every = [x for s in samples.values() for x in s.lat]
            row: dict[str, Any] = {
                "available": True,
                "rounds": len(samples),
                "latency_us": lat,
                "latency_ci_us": lat_ci,
                "latency_request_p50_us": statistics.median(every) / 1e3,
                "cpu_us": cpu,
                "cpu_ci_us": cpu_ci,
                "delivered_per_request": statistics.median(s.delivered for s in samples.values()),
                # collections are rare events: a mean, not a median, says what they cost
                "gc_us": statistics.fmean(s.gc_ns / 1e3 for s in samples.values()),
                "gc_collections_per_1000": [
                    round(1000 * statistics.fmean(s.gc[g] for s in samples.values()), 1)
                    for g in range(3)
                ],
                "recorded_stages": (info.get("recorded") or {}).get(path),
                "recorded_kinds": (info.get("kinds") or {}).get(path),
                "blocks_latency_us": [
                    round(samples[r].latency_ns / 1e3, 2) for r in sorted(samples)
                ],
                "blocks_cpu_us": [round(samples[r].cpu_ns / 1e3, 2) for r in sorted(samples)],
            }
            if config != "none" and base:
                a_lat, a_lat_ci = median_ci(_paired(samples, base, lambda s: s.latency_ns / 1e3))
                a_cpu, a_cpu_ci = median_ci(_paired(samples, base, lambda s: s.cpu_ns / 1e3))
                row.update(
                    added_latency_us=a_lat,
                    added_latency_ci_us=a_lat_ci,
                    added_cpu_us=a_cpu,
                    added_cpu_ci_us=a_cpu_ci,
                )
            results[config] = row
        ratios: dict[str, dict[str, dict[str, float | None]]] = {}
        for ours in ("stagetrace-memory", "stagetrace-otel", "stagetrace-record"):
            mine = results.get(ours) or {}
            if not mine.get("available"):
                continue
            for peer in PEERS:
                theirs = results.get(peer) or {}
                if not theirs.get("available"):
                    continue
                ratios.setdefault(ours, {})[peer] = {
                    "latency": _ratio(mine["added_latency_us"], theirs["added_latency_us"]),
                    "cpu": _ratio(mine["added_cpu_us"], theirs["added_cpu_us"]),
                    "delivered": _ratio(
                        mine["delivered_per_request"], theirs["delivered_per_request"]
                    ),
                }
        untraced = results.get("none") or {}
        out["endpoints"].append(
            {
                "label": label,
                "path": path,
                "requests_per_block": group.block_sizes.get(path),
                "quiet_rounds": len(quiet),
                "rounds_used": len(use),
                "untraced_spread": spread(untraced.get("blocks_cpu_us") or []),
                "machine_load": [group.load.get((r, path)) for r in range(group.rounds)],
                "results": results,
                "ratios": ratios,
            }
        )
    return out


def _rounds_to_use(group: GroupResult, path: str) -> tuple[set[int], set[int]]:
    """The rounds whose segment for `path` was quiet (other processes used under
    QUIET_CORES), when there are enough of them for a median; else every round."""
    measured = {r for r in range(group.rounds) if (r, path) in group.load}
    quiet = {
        r
        for r in measured
        if group.load[r, path][0] is None or group.load[r, path][0] < QUIET_CORES
    }
    enough = max(5, group.rounds // 4)
    return (quiet if len(quiet) >= enough else measured), quiet


def _ratio(a: float, b: float) -> float | None:
    if b is None or a is None or not b > 0:
        return None
    return a / b


def targets(apps: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Each of issue 9's targets (and issue 10's, once the otel sink exists), checked on every
    endpoint of every app measured.

    Ratio targets compare point estimates (medians of added cost), once both added costs are
    clearly above zero. The absolute target
    (unrecorded requests under 10 µs) uses the confidence interval: "met" when the whole
    interval is under the line, "missed" when all of it is above, else "unresolved" (the
    machine's noise is larger than the difference to resolve)."""
    rows = [
        (f"{app} · {ep['label']}", ep)
        for app, summary in apps.items()
        for ep in summary.get("endpoints", [])
    ]
    checks: list[dict[str, Any]] = []

    def add(name: str, entries: list[dict[str, Any]]) -> None:
        verdicts = {e["verdict"] for e in entries}
        overall = (
            None
            if not entries
            else "missed"
            if "missed" in verdicts
            else "unresolved"
            if "unresolved" in verdicts
            else "met"
        )
        checks.append({"target": name, "verdict": overall, "endpoints": entries})

    def ratio_check(name: str, ours: str, what: str, ok: Callable[[float], bool]) -> None:
        """A ratio is only judged when both added costs are clearly above zero (their
        intervals exclude it); otherwise the noise decides the ratio, and it is unresolved."""
        entries = []
        key = {"latency": "added_latency_us", "cpu": "added_cpu_us"}.get(what)
        for where, ep in rows:
            v = ((ep["ratios"].get(ours) or {}).get("otel-contrib") or {}).get(what)
            if v is None:
                continue
            verdict = "met" if ok(v) else "missed"
            if key is not None:
                for config in (ours, "otel-contrib"):
                    row = ep["results"][config]
                    ci = row.get(key.replace("_us", "_ci_us"))
                    if row[key] is None or row[key] - (ci if ci is not None else 0) <= 0:
                        verdict = "unresolved"
            entries.append({"where": where, "value": v, "verdict": verdict})
        add(name, entries)

    ratio_check(
        f"stagetrace-memory added latency <= {TARGET_LATENCY_RATIO:.2f}x otel-contrib's",
        "stagetrace-memory",
        "latency",
        lambda v: v <= TARGET_LATENCY_RATIO,
    )
    ratio_check(
        f"stagetrace-memory added CPU <= {TARGET_CPU_RATIO:.2f}x otel-contrib's",
        "stagetrace-memory",
        "cpu",
        lambda v: v <= TARGET_CPU_RATIO,
    )
    for config in ("stagetrace-sampled-out", "stagetrace-excluded"):
        entries = []
        for where, ep in rows:
            row = ep["results"].get(config) or {}
            v, ci = row.get("added_latency_us"), row.get("added_latency_ci_us")
            if not row.get("available") or v is None:
                continue
            half = ci if ci is not None else math.inf
            verdict = (
                "met"
                if v + half < TARGET_UNRECORDED_US
                else "missed"
                if v - half >= TARGET_UNRECORDED_US
                else "unresolved"
            )
            entries.append({"where": where, "value": v, "ci": ci, "verdict": verdict})
        add(f"{config}: added latency < {TARGET_UNRECORDED_US:.0f} µs", entries)
    if any("stagetrace-otel" in ep["ratios"] for _, ep in rows):
        ratio_check(
            f"stagetrace-otel added CPU <= {TARGET_OTEL_CPU_RATIO:.2f}x otel-contrib's",
            "stagetrace-otel",
            "cpu",
            lambda v: v <= TARGET_OTEL_CPU_RATIO,
        )
        ratio_check(
            f"stagetrace-otel delivers >= {TARGET_OTEL_SPANS_RATIO}x otel-contrib's spans",
            "stagetrace-otel",
            "delivered",
            lambda v: v >= TARGET_OTEL_SPANS_RATIO,
        )
        ratio_check(
            f"stagetrace-otel added latency <= {TARGET_LATENCY_RATIO:.2f}x otel-contrib's",
            "stagetrace-otel",
            "latency",
            lambda v: v <= TARGET_LATENCY_RATIO,
        )
    return checks


# --- text -------------------------------------------------------------------------------------


def _num(v: float | None, digits: int = 0) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return f"{v:,.{digits}f}"


def _added(v: float | None, ci: float | None) -> str:
    if v is None:
        return "—"
    text = f"{v:+,.0f}" if abs(v) >= 10 else f"{v:+.1f}"
    if ci is not None:
        text += f" ±{ci:.0f}" if ci >= 10 else f" ±{ci:.1f}"
    return text


def _ratio_text(r: dict[str, float | None] | None) -> str:
    if not r:
        return "—"
    return f"{_num(r.get('latency'), 2)} / {_num(r.get('cpu'), 2)}"


def render_group(summary: dict[str, Any], write: Callable[[str], None]) -> None:
    """The side-by-side table of one app, then stagetrace's ratios to each peer."""
    write("")
    write(
        f"== {summary['title']} — µs per request, medians over {summary['rounds']} interleaved rounds"
        " (latency: block means of wall time; CPU: process CPU incl. background threads and"
        " flush; GC: mean collector time within it; ± 95 % CI) =="
    )
    if summary.get("error"):
        write(f"   not measured: {summary['error']}")
        return
    head = (
        f"{'':26s} {'latency':>9s} {'added':>13s} {'CPU':>9s} {'added':>13s} {'GC':>6s}"
        f" {'delivered/req':>16s}"
    )
    for ep in summary["endpoints"]:
        write("")
        used = ep["rounds_used"]
        note = (
            f"{used} quiet rounds"
            if used == ep["quiet_rounds"]
            else f"all {used} rounds: only {ep['quiet_rounds']} quiet, machine busy"
        )
        steadiness = ep.get("untraced_spread")
        if steadiness is not None:
            note += f", untraced spread {steadiness:.0%}"
            if steadiness > UNSTEADY_SPREAD:
                note += ": machine unsteady, ratios uncertain"
        write(f"{ep['label']} ({ep['path']}, {ep['requests_per_block']} requests/block, {note})")
        write(head)
        for config, row in ep["results"].items():
            if not row.get("available"):
                write(f"  {config:24s} not available: {row.get('reason')}")
                continue
            delivered = row["delivered_per_request"]
            text = _num(delivered, 1) if config != "none" else "—"
            if row.get("recorded_stages") is not None:
                text += f" ({row['recorded_stages']} rec)"
            write(
                f"  {config:24s} {_num(row['latency_us'], 1):>9s}"
                f" {_added(row.get('added_latency_us'), row.get('added_latency_ci_us')):>13s}"
                f" {_num(row['cpu_us'], 1):>9s}"
                f" {_added(row.get('added_cpu_us'), row.get('added_cpu_ci_us')):>13s}"
                f" {_num(row['gc_us'], 0):>6s} {text:>16s}"
            )
    for ours in ("stagetrace-memory", "stagetrace-otel", "stagetrace-record"):
        if not any(ours in ep["ratios"] for ep in summary["endpoints"]):
            continue
        write("")
        write(
            f"{ours} ÷ peer, added latency / added CPU (targets vs otel-contrib: "
            f"<= {TARGET_LATENCY_RATIO:.2f} / <= {TARGET_CPU_RATIO:.2f})"
            if ours == "stagetrace-memory"
            else f"{ours} ÷ peer, added latency / added CPU"
        )
        write(f"{'':30s}" + "".join(f"{p:>18s}" for p in PEERS))
        for ep in summary["endpoints"]:
            cells = "".join(f"{_ratio_text(ep['ratios'].get(ours, {}).get(p)):>18s}" for p in PEERS)
            write(f"  {ep['label']:28s}{cells}")


def steadiness(apps: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Which endpoints were measured on a steady machine (`UNSTEADY_SPREAD`)."""
    spreads = {
        f"{app} · {ep['label']}": ep.get("untraced_spread")
        for app, summary in apps.items()
        for ep in summary.get("endpoints", [])
    }
    known = {k: v for k, v in spreads.items() if v is not None}
    return {
        "limit": UNSTEADY_SPREAD,
        "steady": sorted(k for k, v in known.items() if v <= UNSTEADY_SPREAD),
        "unsteady": sorted(k for k, v in known.items() if v > UNSTEADY_SPREAD),
        "spreads": spreads,
    }


def render_steadiness(found: dict[str, Any], write: Callable[[str], None]) -> None:
    """One line: how many endpoints were measured while the machine kept its speed."""
    steady, unsteady = found["steady"], found["unsteady"]
    if not steady and not unsteady:
        return
    write("")
    limit = (
        f"untraced spread — the interquartile range of the untraced blocks' CPU per request"
        f" over its median — at most {found['limit']:.0%}"
    )
    if not unsteady:
        write(f"Machine steady on all {len(steady)} endpoints ({limit}).")
        return
    worst = max(unsteady, key=lambda k: found["spreads"][k])
    write(
        f"Machine UNSTEADY on {len(unsteady)} of {len(steady) + len(unsteady)} endpoints"
        f" ({limit} on {len(steady)}; worst {found['spreads'][worst]:.0%}, {worst}): the"
        " machine's speed changed while nothing else ran, and ratios from such a run move by"
        " 0.1–0.3 between runs of the same code — measure again before comparing."
    )


def render_targets(checks: list[dict[str, Any]], write: Callable[[str], None]) -> None:
    write("")
    write("== Targets (issue 9; issue 10's once the otel sink exists), on every endpoint ==")
    for c in checks:
        entries = c["endpoints"]
        verdict = (c["verdict"] or "n/a").upper()
        if not entries:
            write(f"  {verdict:10s} {c['target']}: not measured")
            continue
        counts = {
            v: sum(e["verdict"] == v for e in entries) for v in ("met", "missed", "unresolved")
        }
        ordered = sorted(entries, key=lambda e: e["value"])
        lo, hi = ordered[0], ordered[-1]

        def show(e: dict[str, Any]) -> str:
            if "ci" not in e:
                return f"{e['value']:.2f} ({e['where']})"
            ci = f" ±{e['ci']:.1f}" if e["ci"] is not None else ""
            return f"{e['value']:+.1f}{ci} µs ({e['where']})"

        write(
            f"  {verdict:10s} {c['target']}: of {len(entries)} endpoints met {counts['met']},"
            f" missed {counts['missed']}, unresolved {counts['unresolved']};"
            f" lowest {show(lo)}, highest {show(hi)}"
        )
