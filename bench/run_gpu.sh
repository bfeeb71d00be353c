#!/usr/bin/env bash
# make bench-gpu: rankd's GPU engine and the PyTorch GPU anchor, measured in
# the same run on the same GPU, and the ratio between them per shape.
#   bench/run_gpu.sh BENCH_BINARY
# RANKD_SHARED: where reference/ranker_v1.py is (default ../shared; the
# Makefile passes .carry/shared where ../shared is absent, as on the GPU
# machine). RANKD_ANCHOR=0 skips the anchor (its torch.compile runs take
# minutes). RANKD_BENCH_OUT=DIR keeps the JSON lines there.
set -euo pipefail
bin=${1:?usage: run_gpu.sh BENCH_BINARY}
here=$(cd "$(dirname "$0")" && pwd)
shared=${RANKD_SHARED:-$here/../../shared}
ref="$(cd "$shared" 2>/dev/null && pwd)/reference/ranker_v1.py"
py=python3 # on the GPU machine, the python3 on PATH is the one with CUDA PyTorch
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

echo "== rankd (bench/bench_gpu.c)"
"$bin" "$out" | tee "$out/rankd.jsonl"

if [ "${RANKD_ANCHOR:-1}" = 0 ]; then
  echo "== PyTorch GPU anchor skipped (RANKD_ANCHOR=0)"
  : > "$out/anchor.jsonl"
elif [ -f "$ref" ] && "$py" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
  echo "== PyTorch GPU anchor: $ref bench-gpu"
  (cd "$out" && PYTHONUNBUFFERED=1 "$py" "$ref" bench-gpu) | tee "$out/anchor.jsonl"
else
  echo "== PyTorch GPU anchor not run: needs $ref and a python3 whose torch sees a GPU"
  : > "$out/anchor.jsonl"
fi
"$py" "$here/report_gpu.py" "$out/rankd.jsonl" "$out/anchor.jsonl"
if [ -n "${RANKD_BENCH_OUT:-}" ]; then
  mkdir -p "$RANKD_BENCH_OUT"
  cp "$out/rankd.jsonl" "$out/anchor.jsonl" "$RANKD_BENCH_OUT/"
fi
