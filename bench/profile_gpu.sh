#!/usr/bin/env bash
# A source-level profile of one kernel of a carried bench binary, on the
# GPU machine (docs/gpu.md, "A/B on the device"): Nsight Compute's sampled
# stalls of every SASS instruction at one bench shape, written as
# $OUT/NAME.csv.gz (the device tool brings back at most 8 files, so the
# report itself stays in a temporary folder), and bench/stalls.py's
# summary of it printed.
#   KERNEL=lean_kernel   regex of the kernel's name
#   SKIP=5               launches of matching kernels to skip (a call of the
#                        lean way launches its history kernel, then its
#                        candidates: 5 is a candidate launch of the third call)
#   SHAPE=student:512    model:B (bench_gpu's model and RANKD_BENCH_B)
#   BIN=new              the carried binary (its NAME in .carry/bin.tar.xz)
#   NAME=prof            the output's name
# Any RANKD_GPU_* setting in the environment reaches the bench.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
: "${OUT:?OUT: where the device tool collects files}"
kernel=${KERNEL:-lean_kernel} skip=${SKIP:-5} shape=${SHAPE:-student:512} name=${NAME:-prof}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
bin=$(bash "$root/scripts/gpu-unpack.sh")/${BIN:-new}
[ -x "$bin" ] || { echo "profile_gpu.sh: no ${BIN:-new} in .carry/bin.tar.xz (scripts/gpu-pack.sh)" >&2; exit 1; }
cp "$bin" "$tmp/bench"
ncu=$(command -v ncu || echo "${CUDA_HOME:-/usr/local/cuda}/bin/ncu")
RANKD_BENCH_B=${shape#*:} timeout 300 "$ncu" --kernel-name "regex:$kernel" --launch-skip "$skip" --launch-count 1 \
  --section SourceCounters --section WarpStateStats --section SpeedOfLight -o "$tmp/rep" \
  "$tmp/bench" "$tmp" "${shape%%:*}" > "$tmp/ncu.log" 2>&1 || { tail -20 "$tmp/ncu.log"; exit 1; }
timeout 120 "$ncu" -i "$tmp/rep.ncu-rep" --page source --csv --print-source sass | gzip -9 > "$OUT/$name.csv.gz"
timeout 60 "$ncu" -i "$tmp/rep.ncu-rep" --page details --section SpeedOfLight --section WarpStateStats |
  grep -E "Duration|Warp Cycles Per Issued|Active Warps Per Scheduler|Compute \(SM\) Throughput|Memory Throughput|L2 Cache Throughput|DRAM Throughput" || true
python3 "$root/bench/stalls.py" "$OUT/$name.csv.gz"
