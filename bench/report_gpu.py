#!/usr/bin/env python3
"""Sets rankd's GPU benchmark lines beside the PyTorch GPU anchor's: latency,
candidates per second and their ratio per shape, the fraction of the int8
tensor-core peak, the retrieval figures, and the issue's targets.
Usage: report_gpu.py RANKD.jsonl ANCHOR.jsonl"""
import json, sys


def lines(path):
    with open(path) as f:
        return [json.loads(l) for l in f if l.startswith("{")]


def verdict(ok):
    return "met" if ok else "NOT met"


rankd, anchor = lines(sys.argv[1]), lines(sys.argv[2])
dev = next((r for r in rankd if r["bench"] == "device"), None)
scores = [r for r in rankd if r["bench"] == "score"]
best = {(a["model"], a["B"]): a for a in anchor}

print(f"\n== rankd int8 on {dev['device'] if dev else 'an unknown GPU'} vs PyTorch bf16 "
      "(anchor: best of eager, torch.compile and CUDA graph; same GPU, same run)")
if dev:
    print(f"int8 tensor-core peak {dev['peak_int8_ops'] / 1e12:,.0f} TOPS = {dev['peak_formula']} "
          f"({dev['sms']} SMs, {dev['clock_khz'] / 1e3:,.0f} MHz); % peak counts 2 x MACs per candidate")
if anchor:
    a = anchor[0]
    print(f"anchor: {a.get('device', '?')}, torch {a.get('torch', '?')}")
print(f"{'model':8} {'B':>4} {'rankd us':>10} {'rankd cand/s':>14} {'anchor us':>10} {'anchor cand/s':>14} "
      f"{'ratio':>7} {'% peak':>7}")
for r in scores:
    a = best.get((r["model"], r["B"]))
    au = f"{a['best_us']:>10,.1f}" if a else f"{'-':>10}"
    ac = f"{a['cand_per_s']:>14,}" if a else f"{'-':>14}"
    ratio = f"{r['cand_per_s'] / a['cand_per_s']:>6.1f}x" if a else f"{'-':>7}"
    print(f"{r['model']:8} {r['B']:>4} {r['us']:>10,.1f} {r['cand_per_s']:>14,.0f} {au} {ac} {ratio} "
          f"{100 * r['frac_peak']:>6.2f}%")

print("\n== retrieval (top-k of the catalog, each user's history excluded)")
for r in (r for r in rankd if r["bench"] == "retrieve"):
    print(f"{r['model']:8} B={r['B']:<4} top-{r['k']} of {r['items']:,} items: {r['us']:,.1f} us")

print("\n== serving-like calls: each request's candidate count drawn afresh every call (a filtered list)")
for r in (r for r in rankd if r["bench"] == "varied"):
    print(f"{r['model']:8} B={r['B']:<4} {r['m_min']}..{r['m_max']} candidates a request: {r['us']:,.1f} us a call")

print("\n== batch rescoring: the scorer at rankd rescore's batch (requests of 100 candidates, copies included)")
for r in (r for r in rankd if r["bench"] == "rescore"):
    print(f"{r['model']:8} B={r['B']:<4} {r['m']} candidates, {r['n']}-event histories: "
          f"{r['requests_per_s']:,.0f} requests/s ({r['us']:,.1f} us a batch)")

print("\n== targets")
ratios = [(r["cand_per_s"] / best[(r["model"], r["B"])]["cand_per_s"], r["model"], r["B"])
          for r in scores if (r["model"], r["B"]) in best]
low = min(ratios) if ratios else None
if not scores:
    print("no rankd figures")
elif low and low[0] < 5:
    print(f"first landing, >= 5x the anchor at every shape: lowest {low[0]:.1f}x ({low[1]} B={low[2]}): NOT met")
elif len(ratios) < len(scores):
    print(f"first landing, >= 5x the anchor at every shape: not known (anchor figures for {len(ratios)} "
          f"of {len(scores)} shapes)")
else:
    print(f"first landing, >= 5x the anchor at every shape: lowest {low[0]:.1f}x ({low[1]} B={low[2]}): met")
fig = {(r["model"], r["B"]): r for r in scores}
goals = [("student", 512, "cand_per_s", ">=", 1e9, "student B=512 >= 1e9 cand/s"),
         ("student", 1, "us", "<=", 20.0, "student B=1 <= 20 us"),
         ("teacher", 512, "cand_per_s", ">=", 3e8, "teacher B=512 >= 3e8 cand/s")]
for model, B, key, op, bound, text in goals:
    r = fig.get((model, B))
    if not r:
        print(f"goal: {text}: not measured")
        continue
    v = r[key]
    ok = v >= bound if op == ">=" else v <= bound
    shown = f"{v:,.0f} cand/s" if key == "cand_per_s" else f"{v:,.1f} us"
    print(f"goal: {text}: {shown}: {verdict(ok)}")
