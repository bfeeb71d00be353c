#!/usr/bin/env python3
"""Sets rankd's CPU benchmark lines beside the PyTorch anchor's and prints the
ratio per shape, plus the issue's targets. Usage: report.py RANKD.jsonl ANCHOR.jsonl"""
import json, sys


def lines(path):
    with open(path) as f:
        return [json.loads(l) for l in f if l.startswith("{")]


rankd, anchor = lines(sys.argv[1]), lines(sys.argv[2])
best = {(a["model"], a["B"]): a for a in anchor}
print("\n== rankd vs PyTorch (same machine, same run; anchor = best of its fp32 and dynamic int8, all cores)")
print(f"{'model':8} {'quant':5} {'isa':7} {'thr':>3} {'B':>3} {'latency us':>11} {'cand/s':>11} "
      f"{'GMAC/s':>7} {'anchor cand/s':>14} {'ratio':>7}")
for r in (r for r in rankd if r["bench"] == "score"):
    a = best.get((r["model"], r["B"]))
    ac = f"{a['cand_per_s']:>14,}" if a else f"{'-':>14}"
    ratio = f"{r['cand_per_s'] / a['cand_per_s']:>6.1f}x" if a else f"{'-':>7}"
    print(f"{r['model']:8} {r['quant']:5} {r['isa']:7} {r['threads']:>3} {r['B']:>3} {r['us']:>11,.1f} "
          f"{r['cand_per_s']:>11,.0f} {r['gmacs']:>7.1f} {ac} {ratio}")
print("\n== retrieval (top-100 of the catalog, history excluded)")
for r in (r for r in rankd if r["bench"] == "retrieve"):
    print(f"{r['model']:8} {r['quant']:5} threads {r['threads']} B={r['B']:<3} {r['items']:,} items: {r['us']:,.1f} us")

svc = {r["bench"]: r for r in rankd if r["bench"].startswith("service_")}
if svc:
    print("\n== rankd serve under load (redis-server, mock Kafka broker, service and load generator on this machine)")
    if "service_ingest" in svc:
        r = svc["service_ingest"]
        print(f"ingest: {r['applied']:,} feature-only interactions in {r['seconds']:.2f} s: {r['events_per_s']:,.0f} events/s")
    if "service_ranking" in svc:
        r = svc["service_ranking"]
        print(f"ranking: {r['ranked']:,} triggering interactions (retrieve 100, top 10) in {r['seconds']:.2f} s: "
              f"{r['rankings_per_s']:,.0f} rankings/s")
    lat = [r for r in rankd if r["bench"] == "service_latency"]
    for r in lat:
        print(f"latency run {r.get('run', 0)} at {r['offered_per_s']:,} rankings/s offered, produce to ranked list "
              f"consumed: p50 {r['p50_us'] / 1e3:.2f} ms, p99 {r['p99_us'] / 1e3:.2f} ms, p99.9 {r['p999_us'] / 1e3:.2f} ms "
              f"({r['ranked']:,} of {r['events']:,} answered); inside rankd (consume to produce): "
              f"p50 {r['inside_p50_us'] / 1e3:.2f} ms, p99 {r['inside_p99_us'] / 1e3:.2f} ms")

for r in (r for r in rankd if r["bench"] == "rescore"):
    print(f"\n== rankd rescore (file in, file out, Redis histories, {r['device']})")
    print(f"{r['ranked']:,} requests of {r['candidates']} candidates in {r['seconds']:.2f} s: "
          f"{r['requests_per_s']:,.0f} requests/s ({r['cand_per_s']:,.0f} candidates/s)")

print("\n== targets")
allc = max((r["threads"] for r in rankd if r["bench"] == "score"), default=1)
for r in rankd:
    if r["bench"] == "score" and r["quant"] == "int8" and r["threads"] == allc:
        a = best.get((r["model"], r["B"]))
        if a:
            x = r["cand_per_s"] / a["cand_per_s"]
            print(f"int8 B={r['B']:<2} {allc} threads: {x:.1f}x the anchor's best (target >= 10x): "
                  f"{'met' if x >= 10 else 'NOT met'}")
        if r["B"] == 1:
            print(f"int8 B=1 512 candidates, {allc} threads: {r['us']:.0f} us (target < 1000 us): "
                  f"{'met' if r['us'] < 1000 else 'NOT met'}")
if "service_ingest" in svc:
    v = svc["service_ingest"]["events_per_s"]
    print(f"service ingest {v:,.0f} events/s (target >= 50,000): {'met' if v >= 50000 else 'NOT met'}")
lat = sorted(r["p99_us"] / 1e3 for r in rankd if r["bench"] == "service_latency")
if lat:
    v = lat[len(lat) // 2]
    print(f"service p99 at 1,000 rankings/s, median of {len(lat)} runs: {v:.2f} ms (runs: "
          f"{', '.join(f'{x:.2f}' for x in lat)}) (target < 10 ms): {'met' if v < 10 else 'NOT met'}")
