#!/usr/bin/env python3
"""Where a kernel's warps wait, from Nsight Compute's source page: the
sampled stalls of every SASS instruction (bench/profile_gpu.sh writes them
as `ncu --page source --csv --print-source sass`, gzipped or not).

Prints the kernel's stall samples by reason, by opcode (beside each
opcode's share of the instructions executed), and by phase: the kernel cut
at every wait (wgmma, named barrier, mbarrier), so that a phase is the
code between two of them (an epilogue, an attention, a gather), with its
largest stall reasons and opcodes. Phases under --min percent of the
samples are left out.
Usage: stalls.py SOURCE.csv[.gz] [--min PERCENT] [--top N]"""
import argparse, collections, csv, gzip, sys

SAMPLES, EXECUTED = "Warp Stall Sampling (All Samples)", "Instructions Executed"
WAITS = ("WARPGROUP.DEPBAR", "BAR.SYNC", "SYNCS.PHASECHK")


def load(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", newline="") as f:
        rows = list(csv.reader(f))
    # the first row names the kernel, the second the columns
    head = next((i for i, r in enumerate(rows) if "Source" in r and SAMPLES in r), None)
    if head is None:
        sys.exit(f"stalls.py: {path}: no '{SAMPLES}' column: not an ncu source page with SourceCounters")
    cols = rows[head]
    data = [dict(zip(cols, r)) for r in rows[head + 1:] if len(r) == len(cols)]
    name = rows[0][1] if head > 0 and len(rows[0]) > 1 else "?"
    return name, cols, data


def num(row, key):
    try:
        return float(row.get(key, "0").replace(",", "") or 0)
    except ValueError:
        return 0.0


def opcode(src):
    words = [w for w in src.split() if not w.startswith("@")]
    return words[0] if words else ""


def pct(a, b):
    return 100.0 * a / b if b else 0.0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("csv")
    ap.add_argument("--min", type=float, default=0.5, help="phases under this %% of the samples are left out")
    ap.add_argument("--top", type=int, default=20, help="opcodes listed")
    a = ap.parse_args()
    name, cols, data = load(a.csv)
    reasons = [c for c in cols if c.startswith("stall_") and "Not Issued" not in c]
    total_s = sum(num(r, SAMPLES) for r in data)
    total_e = sum(num(r, EXECUTED) for r in data)
    if not total_s:
        sys.exit(f"stalls.py: {a.csv}: no stall samples")
    print(f"{name}\n{len(data):,} SASS instructions, {total_e:,.0f} executed (warp level), {total_s:,.0f} samples")

    by_reason = collections.Counter({k: sum(num(r, k) for r in data) for k in reasons})
    print("\nsamples by reason")
    for k, v in by_reason.most_common():
        if v:
            print(f"  {k[6:]:<20} {pct(v, total_s):5.1f}%")

    s_op, e_op = collections.Counter(), collections.Counter()
    for r in data:
        op = opcode(r.get("Source", "")).split(".")[0]
        s_op[op] += num(r, SAMPLES)
        e_op[op] += num(r, EXECUTED)
    print("\nby opcode: % of samples, % of instructions executed")
    for k, v in s_op.most_common(a.top):
        print(f"  {k:<14} {pct(v, total_s):5.1f}% {pct(e_op[k], total_e):5.1f}%")

    phases, cur = [], None
    for i, r in enumerate(data):
        op = opcode(r.get("Source", ""))
        if cur is None or op.startswith(WAITS):
            cur = {"at": i, "after": op.split(".")[0] if cur else "start", "s": 0.0, "e": 0.0,
                   "why": collections.Counter(), "ops": collections.Counter()}
            phases.append(cur)
        cur["s"] += num(r, SAMPLES)
        cur["e"] += num(r, EXECUTED)
        cur["ops"][op.split(".")[0]] += num(r, EXECUTED)
        for k in reasons:
            cur["why"][k] += num(r, k)
    print(f"\nby phase (cut at each wait; SASS index, the wait it starts at; phases of {a.min}% of the samples or more):"
          "\n  % samples, % executed | its largest stalls | its largest opcodes (% of its instructions)")
    for p in phases:
        if pct(p["s"], total_s) < a.min:
            continue
        why = " ".join(f"{k[6:]}={pct(v, p['s']):.0f}" for k, v in p["why"].most_common(3) if v)
        ops = " ".join(f"{k}:{pct(v, p['e']):.0f}" for k, v in p["ops"].most_common(5) if v)
        print(f"  {p['at']:>6} {p['after'][:10]:<10} {pct(p['s'], total_s):5.1f} {pct(p['e'], total_e):5.1f} | {why} | {ops}")


if __name__ == "__main__":
    main()
