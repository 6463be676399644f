#!/usr/bin/env python3
"""Prints criterion's latest results (target/criterion/**/new) as a markdown table.

usage: criterion_table.py [group-prefix...]   e.g. criterion_table.py sse json
Columns: median time per iteration and, where the benchmark set one, median throughput.
"""
import json
import pathlib
import sys

root = pathlib.Path("target/criterion")
prefixes = sys.argv[1:] or [""]
rows = []
for bench in sorted(root.glob("**/new/benchmark.json")):
    meta = json.loads(bench.read_text())
    est = json.loads((bench.parent / "estimates.json").read_text())
    name = meta["full_id"]
    if not any(name.startswith(p) for p in prefixes):
        continue
    ns = est["median"]["point_estimate"]
    thr = meta.get("throughput") or {}
    rate = ""
    if "Bytes" in thr:
        bps = thr["Bytes"] / (ns / 1e9)
        rate = f"{bps / 1e9:.2f} GB/s" if bps >= 1e9 else f"{bps / 1e6:.0f} MB/s"
    t = f"{ns / 1e3:.2f} µs" if ns < 1e6 else f"{ns / 1e6:.2f} ms"
    rows.append((name, t, rate))
print("| benchmark | time (median) | throughput (median) |")
print("|---|---:|---:|")
for name, t, rate in rows:
    print(f"| {name} | {t} | {rate} |")
