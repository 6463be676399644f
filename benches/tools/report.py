#!/usr/bin/env python3
"""Turns benches/load.sh's results.jsonl into the markdown tables and a latency SVG.

usage: report.py results.jsonl latency.svg
First the comparison with the peers (CPU per request of envelope-proxy, nginx, haproxy and
direct at saturation, time to first event, and the gap to the best peer), then every oha run,
the stream steps, and the targets.
Medians are taken over the rounds of each measurement; differences (added latency) are
taken per round first (proxy and direct measured back to back), then the median.

Exit status 1 when any step failed a request or a stream (a non-2xx answer or an error in an
oha run, or an oha run with no answer at all; a failed time-to-first-event stream, a
CPU-per-event stream that did not complete, a dropped concurrent stream), after printing the
tables and a "load: FAILED: …" line per step;
numbers measured over failures are not numbers.
"""
import json
import os
import statistics
import sys
from collections import defaultdict

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
svg_path = sys.argv[2]


def by_kind(kind):
    return [r for r in rows if r.get("kind") == kind]


oha = defaultdict(list)  # label without round -> [result per round]
for r in by_kind("oha"):
    base, _, rnd = r["label"].rpartition("-r")
    oha[base].append(r)


def med(label, key):
    vals = [r[key] for r in oha.get(label, [])]
    return statistics.median(vals) if vals else None


def med_diff(a, b, key):
    pairs = list(zip(oha.get(a, []), oha.get(b, [])))
    return statistics.median(x[key] - y[key] for x, y in pairs) if pairs else None


def fmt(v, digits=0):
    if v is None:
        return "—"
    return f"{v:,.{digits}f}"


def verdict(ok):
    return "✅" if ok else "❌"


out = []
if os.environ.get("SMOKE") == "1":
    out.append("**Smoke run** (debug build, tiny counts): this checks that every step runs; "
               "the numbers below are not measurements.")
    out.append("")
machine = (by_kind("machine") or [{}])[0]
after = (by_kind("machine_after") or [{}])[0]
config = (by_kind("config") or [{}])[0]
conns = config.get("conns", "?")
out.append(
    f"Machine: {machine.get('cpus')} CPUs ({machine.get('cpu', '?')}); load average "
    f"before {machine.get('load')}, after {after.get('load')}. Peers: nginx {config.get('nginx', 'none')}, "
    f"haproxy {config.get('haproxy', 'none')}."
)


def cpu_med(label):
    """Median over rounds of the server's CPU µs per response, or None."""
    vals = [r["cpu_us_per_req"] for r in oha.get(label, []) if r.get("cpu_us_per_req") is not None]
    return statistics.median(vals) if vals else None


def us(v, digits=1):
    return "—" if v is None else f"{v:,.{digits}f} µs"


def signed_us(v):
    return "—" if v is None else f"{v:+,.0f} µs"


WORKLOADS = (("1024", "1 KiB JSON"), ("65536", "64 KiB JSON"), ("sse", "200-event SSE stream (61 KB)"))
PEERS = ("nginx", "haproxy")
ttfe = {r["target"]: r for r in by_kind("ttfe")}


def ttfe_added(key):
    if key in ttfe and "direct" in ttfe and not ttfe[key].get("failed", 0):
        return ttfe[key]["p50"] - ttfe["direct"]["p50"]
    return None


# --- the comparison (issue 16): CPU per request, one worker each, and time to first event -----
# Each row: (name, ours, {peer: value}, direct column, gap to the best peer, ours <= best).
comparison = []
for size, size_name in WORKLOADS:
    variants = [("wrap1", "wrapped for `/api/v1`" if size != "sse" else "wrapped per event for `/api/v1`"),
                ("pass1", "pass-through")]
    if size == "sse":
        variants.append(("unwrap1", "unwrapped per event from an envelope upstream"))
    for variant, variant_name in variants:
        if f"sat-{size}-{variant}" not in oha:
            continue
        ours = cpu_med(f"sat-{size}-{variant}")
        peers = {p: cpu_med(f"sat-{size}-{p}1") for p in PEERS}
        best = min((v for v in peers.values() if v), default=None)
        gap = f"{ours / best:.2f}×" if ours and best else "—"
        comparison.append((f"{size_name}, {variant_name}", us(ours), {p: us(v) for p, v in peers.items()},
                           us(cpu_med(f"sat-{size}-direct")), gap,
                           ours <= best if ours is not None and best else None))
for key, key_name in (("pass", "pass-through"), ("wrap", "wrapped")):
    if key not in ttfe:
        continue
    ours = ttfe_added(key)
    peers = {p: ttfe_added(p) for p in PEERS}
    best = min((v for v in peers.values() if v is not None), default=None)
    gap = signed_us(ours - best) if ours is not None and best is not None else "—"
    base = f"{ttfe['direct']['p50']:,.1f} µs (the base)" if "direct" in ttfe else "—"
    comparison.append((f"added time to first event, dripping stream, {key_name}", signed_us(ours),
                       {p: signed_us(v) for p, v in peers.items()}, base, gap,
                       ours <= best + 20 if ours is not None and best is not None else None))
out.append("")
out.append(f"CPU per request: the on-CPU time (utime + stime from /proc, all threads) of the server's "
           f"processes over a saturation run, ÷ its responses; one worker each, {conns} connections, "
           f"median over rounds. The direct column is the upstream's own. Time to first event: p50 "
           f"minus direct's. Gap to the best: ours ÷ the best of nginx and haproxy (time to first "
           f"event: ours minus the best).")
out.append("")
out.append("| workload | direct to upstream | envelope-proxy | nginx | haproxy (`http-no-delay`) | gap to the best |")
out.append("|---|---:|---:|---:|---:|---:|")
for name, ours, peers, direct, gap, _ in comparison:
    out.append(f"| {name} | {direct} | {ours} | {peers['nginx']} | {peers['haproxy']} | {gap} |")

# --- every oha run ----------------------------------------------------------------------------
out.append("")
out.append("| scenario | target | req/s | p50 µs | p99 µs | added p50 / p99 µs vs direct | CPU µs per request (busy) | ratio vs peers |")
out.append("|---|---|---:|---:|---:|---:|---:|---:|")


def cpu_cell(label):
    busy = [r["busy_pct"] for r in oha.get(label, []) if r.get("busy_pct") is not None]
    v = cpu_med(label)
    return "—" if v is None else f"{v:,.1f} ({statistics.median(busy):.0f} %)"


def row(scenario, label, name, direct, ratio):
    added = "—" if label == direct or direct not in oha else (
        f"{fmt(med_diff(label, direct, 'p50_us'))} / {fmt(med_diff(label, direct, 'p99_us'))}")
    out.append(f"| {scenario} | {name} | {fmt(med(label, 'rps'))} | {fmt(med(label, 'p50_us'))} | "
               f"{fmt(med(label, 'p99_us'))} | {added} | {cpu_cell(label)} | {ratio} |")


for prefix, scenario in (("rate", "fixed rate, 1 KiB"), ("spin", "fixed rate, 1 KiB, server CPU kept awake")):
    for key, name in (("direct", "direct to upstream"), ("wrap", "envelope-proxy, wrap"),
                      ("pass", "envelope-proxy, pass-through"), ("nginx", "nginx, pass-through")):
        label = f"{prefix}-{key}"
        if label not in oha:
            continue
        ratio = "—"
        if key in ("wrap", "pass") and f"{prefix}-nginx" in oha:
            ratio = f"p50 nginx {med(label, 'p50_us') / med(f'{prefix}-nginx', 'p50_us'):.2f}×"
        row(scenario, label, name, f"{prefix}-direct", ratio)

SAT_TARGETS = (("direct", "direct to upstream"), ("wrap1", "envelope-proxy wrap, 1 worker"),
               ("pass1", "envelope-proxy pass-through, 1 worker"),
               ("unwrap1", "envelope-proxy unwrap (envelope upstream), 1 worker"),
               ("nginx1", "nginx pass-through, 1 worker"), ("haproxy1", "haproxy pass-through, 1 thread"),
               ("wrap2", "envelope-proxy wrap, 2 workers"), ("nginx2", "nginx pass-through, 2 workers"),
               ("haproxy2", "haproxy pass-through, 2 threads"))
for size, size_name in WORKLOADS:
    for key, name in SAT_TARGETS:
        label = f"sat-{size}-{key}"
        if label not in oha:
            continue
        ratio = "—"
        if key[:-1] in ("wrap", "pass", "unwrap"):
            ratios = [f"{p} **{med(label, 'rps') / med(f'sat-{size}-{p}{key[-1]}', 'rps'):.2f}×**"
                      for p in PEERS if f"sat-{size}-{p}{key[-1]}" in oha]
            ratio = ", ".join(ratios) + " req/s" if ratios else "—"
        row(f"saturation, {size_name}, {conns} conns", label, name, f"sat-{size}-direct", ratio)

bad = sum(r.get("bad", 0) for r in by_kind("oha"))
out.append("")
out.append(f"Non-2xx responses or errors across all oha runs: {bad}.")

out.append("")
out.append("| stream | p50 µs | p99 µs | added p50 µs vs direct |")
out.append("|---|---:|---:|---:|")
names = {"direct": "direct to upstream", "pass": "envelope-proxy, pass-through",
         "wrap": "envelope-proxy, wrap", "nginx": "nginx, proxy_buffering off",
         "haproxy": "haproxy, http-no-delay"}
names.update({f"spin-{k}": f"{v}, server CPU kept awake" for k, v in list(names.items())})
for key, name in names.items():
    if key in ttfe:
        base = "spin-direct" if key.startswith("spin-") else "direct"
        added = "—" if key == base else fmt(ttfe[key]["p50"] - ttfe[base]["p50"], 1)
        out.append(f"| time to first event, {name} | {fmt(ttfe[key]['p50'], 1)} | {fmt(ttfe[key]['p99'], 1)} | {added} |")

cpu = {(r["mode"], r["events"]): r["cpu_us_per_stream"] for r in by_kind("ssecpu")}
per_event = {}
for mode, name in (("pass", "envelope-proxy, pass-through"), ("wrap", "envelope-proxy, wrap"),
                   ("nginx", "nginx worker, pass-through"), ("haproxy", "haproxy, pass-through")):
    if (mode, 1) in cpu and (mode, 200) in cpu:
        per_event[mode] = (cpu[(mode, 200)] - cpu[(mode, 1)]) / 199
        out.append(f"| CPU per event, {name} (200-event minus 1-event streams, /199) | "
                   f"{per_event[mode]:.2f} µs | | |")

ttfe_failed = sum(r.get("failed", 0) for r in by_kind("ttfe"))
out.append("")
out.append(f"Streams that failed in the time-to-first-event runs (not 200, or no `[DONE]`): {ttfe_failed}.")

many_runs = by_kind("streams")
idle = (by_kind("idle") or [{}])[0]
ready = (by_kind("ready") or [{}])[0]
binary = (by_kind("binary") or [{}])[0]
out.append("")
out.append("| target | goal | measured | |")
out.append("|---|---|---|---|")


def target(name, goal, value, ok):
    out.append(f"| {name} | {goal} | {value} | {verdict(ok) if ok is not None else '—'} |")


for (name, ours, peers, _, gap, ok) in comparison:
    if all(v == "—" for v in peers.values()):
        continue  # no peer installed: nothing to judge against
    goal = "≤ the best peer + 20 µs" if name.startswith("added time") else "≤ the best of nginx and haproxy"
    what = name if name.startswith("added time") else f"CPU per request, {name}"
    target(what, goal, f"{ours} (nginx {peers['nginx']}, haproxy {peers['haproxy']}; gap {gap})", ok)
a50, a99 = med_diff("rate-wrap", "rate-direct", "p50_us"), med_diff("rate-wrap", "rate-direct", "p99_us")
if a50 is not None:
    target("added latency p50, 1 KiB wrap, fixed rate", "≤ 50 µs", f"{a50:.0f} µs", a50 <= 50)
    target("added latency p99, 1 KiB wrap, fixed rate", "≤ 250 µs", f"{a99:.0f} µs", a99 <= 250)
for size, size_name in WORKLOADS[:2]:
    for w in (1, 2):
        ours, ng = med(f"sat-{size}-wrap{w}", "rps"), med(f"sat-{size}-nginx{w}", "rps")
        hp = med(f"sat-{size}-haproxy{w}", "rps")
        if ours and ng:
            also = f"; haproxy {hp:,.0f} ({ours / hp:.2f}×)" if hp else ""
            target(f"throughput {size_name} wrap, {w} vs {w} worker{'s' if w > 1 else ''}", "≥ nginx",
                   f"{ours:,.0f} vs {ng:,.0f} req/s ({ours / ng:.2f}×){also}", ours >= ng)
if "pass" in ttfe and "direct" in ttfe:
    for key in ("pass", "wrap"):
        if key in ttfe:
            added = ttfe[key]["p50"] - ttfe["direct"]["p50"]
            failed = ttfe[key].get("failed", 0)
            if failed:
                # Timing error responses says nothing about events: no verdict.
                target(f"added time to first event, {key}", "≤ 100 µs", f"{failed} streams failed", None)
            else:
                target(f"added time to first event, {key}", "≤ 100 µs", f"{added:.0f} µs", added <= 100)
for mode, v in per_event.items():
    if mode in ("pass", "wrap"):
        ref = "".join(f" ({p} {per_event[p]:.2f} µs)" for p in PEERS if p in per_event)
        target(f"CPU per event, 200-event stream, {mode}", "≤ 5 µs", f"{v:.2f} µs{ref}", v <= 5)
for many in many_runs:
    rss_mb = many.get("rss_peak_kb", 0) / 1024
    detail = (f"{many.get('completed')} completed, {many.get('dropped')} dropped, peak RSS {rss_mb:.1f} MB "
              f"({many.get('rss_peak_kb', 0) / max(many.get('n', 1), 1):.1f} KB/stream)")
    if many.get("server") in PEERS:
        # A baseline: the peer on the same streams; not judged against the target.
        target(f"{many.get('n')} concurrent streams through {many['server']} (baseline), clients over h1",
               "—", detail, None)
        continue
    # The --upstream-http2 runs are extra rows; the others keep their labels.
    upstream = ", --upstream-http2" if many.get("upstream") == "h2c" else ""
    target(f"{many.get('n')} concurrent streams, clients over {many.get('proto', 'h1')}{upstream}",
           "10,000, none dropped, RSS ≤ 64 MB", detail,
           many.get("dropped") == 0 and rss_mb <= 64 and many.get("n", 0) >= 10000)
if idle:
    target("idle RSS", "≤ 10 MB", f"{idle['rss_kb'] / 1024:.1f} MB", idle["rss_kb"] / 1024 <= 10)
for after in by_kind("idle_after_load"):
    workers = after["workers"]
    target(f"idle RSS after the saturation runs, {workers} worker{'s' if workers > 1 else ''}",
           "≤ 10 MB", f"{after['rss_kb'] / 1024:.1f} MB", after["rss_kb"] / 1024 <= 10)
if ready:
    target("start to ready (spawn → /healthz answers), median", "≤ 20 ms",
           f"{ready['p50_ms']:.1f} ms (max {ready['max_ms']:.1f})", ready["p50_ms"] <= 20)
if binary:
    mb = binary["bytes"] / 1e6
    target("stripped release binary", "≤ 8 MB", f"{mb:.1f} MB", mb <= 8)

# --- failures: every request and stream of every step must have succeeded -----------------
failures = []
for label, runs in oha.items():
    for r in runs:
        if r.get("bad", 0):
            failures.append(f"oha {r['label']}: {r['bad']} non-2xx responses or errors")
        elif not r.get("ok", 0):
            # Requests still in flight at a -z deadline are not errors; none answered at all is.
            failures.append(f"oha {r['label']}: no request was answered")
for r in by_kind("ttfe"):
    if r.get("failed", 0):
        failures.append(f"time to first event, {r['target']}: {r['failed']} streams failed")
for r in by_kind("ssecpu"):
    missing = r.get("streams", 0) - r.get("ok", 0)
    if missing or "streams" not in r:
        failures.append(f"CPU per event, {r['mode']} events={r['events']}: "
                        f"{r.get('ok')} of {r.get('streams', '?')} streams completed")
for r in many_runs:
    if r.get("dropped", 0) or r.get("completed", 0) != r.get("n"):
        upstream = " (--upstream-http2)" if r.get("upstream") == "h2c" else ""
        failures.append(f"{r.get('n')} concurrent streams through {r.get('server', 'envelope-proxy')} over "
                        f"{r.get('proto', 'h1')}{upstream}: {r.get('completed')} completed, "
                        f"{r.get('dropped')} dropped")
out.append("")
if failures:
    out.extend(f"load: FAILED: {f}" for f in failures)
else:
    out.append("Every request and stream of every step succeeded.")
print("\n".join(out))

# --- latency SVG: percentile curves at the fixed rate (median over rounds), log scale -----
import math

colors = {"direct": "#888888", "nginx": "#2a9d8f", "pass": "#e9c46a", "wrap": "#e76f51"}
pct_keys = ["p50", "p75", "p90", "p95", "p99", "p99.9"]
series = []
for prefix, dash, suffix in (("rate", "", ""), ("spin", "6,4", ", CPU kept awake")):
    for key, name in (("direct", "direct to upstream"), ("wrap", "envelope-proxy, wrap"),
                      ("pass", "envelope-proxy, pass-through"), ("nginx", "nginx, pass-through")):
        runs = oha.get(f"{prefix}-{key}")
        if not runs:
            continue
        pts = [statistics.median(r["pcts"][k] for r in runs if k in r["pcts"]) for k in pct_keys]
        series.append((name + suffix, colors[key], dash, pts))
if series:
    W, H, L, R, T, B = 820, 330, 60, 300, 34, 40
    lo = min(min(p) for *_, p in series) * 0.8
    hi = max(max(p) for *_, p in series) * 1.25
    xs = [L + i * (W - L - R) / (len(pct_keys) - 1) for i in range(len(pct_keys))]
    y = lambda v: T + (H - T - B) * (1 - (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo)))
    rate = round(statistics.median(r["rps"] for r in oha.get("rate-direct", [{"rps": 0}])))
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{L}" y="20" font-size="14">Latency percentiles at {rate} req/s, 1 KiB body (µs, log scale, lower is better)</text>']
    for v in (50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000):
        if lo <= v <= hi:
            svg.append(f'<line x1="{L}" x2="{W - R}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#e5e5e5"/>')
            svg.append(f'<text x="{L - 6}" y="{y(v) + 4:.1f}" text-anchor="end">{v}</text>')
    for x, k in zip(xs, pct_keys):
        svg.append(f'<text x="{x:.1f}" y="{H - B + 18}" text-anchor="middle">{k}</text>')
    for n, (name, color, dash, pts) in enumerate(series):
        path = " ".join(f"{'M' if i == 0 else 'L'}{x:.1f},{y(v):.1f}" for i, (x, v) in enumerate(zip(xs, pts)))
        extra = f' stroke-dasharray="{dash}"' if dash else ""
        svg.append(f'<path d="{path}" fill="none" stroke="{color}" stroke-width="2.2"{extra}/>')
        for x, v in zip(xs, pts):
            svg.append(f'<circle cx="{x:.1f}" cy="{y(v):.1f}" r="2.5" fill="{color}"/>')
        ly = T + 14 + n * 20
        svg.append(f'<line x1="{W - R + 12}" x2="{W - R + 36}" y1="{ly - 4}" y2="{ly - 4}" stroke="{color}" stroke-width="2.5"{extra}/>')
        svg.append(f'<text x="{W - R + 42}" y="{ly}">{name}</text>')
    svg.append("</svg>")
    open(svg_path, "w").write("\n".join(svg))

sys.exit(1 if failures else 0)
