#!/usr/bin/env bash
# make bench: rankd's CPU scorer and the PyTorch CPU anchor, measured in the
# same run on the same machine, and the ratio between them per shape.
#   bench/run_cpu.sh BENCH_BINARY
set -euo pipefail
bin=${1:?usage: run_cpu.sh BENCH_BINARY}
here=$(cd "$(dirname "$0")" && pwd)
ref="$here/../../shared/reference/ranker_v1.py"
py=/usr/bin/python3   # Debian's python3-torch lives in the system python
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

echo "== machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
echo "== rankd (bench/bench_cpu.c)"
"$bin" "$out" | tee "$out/rankd.jsonl"

if [ -f "$ref" ] && "$py" -c 'import torch' 2>/dev/null; then
  echo "== PyTorch anchor: $ref bench-cpu"
  (cd "$out" && "$py" "$ref" bench-cpu) | tee "$out/anchor.jsonl"
else
  echo "== PyTorch anchor not run: needs $ref and python3-torch (scripts/install-deps.sh --bench)"
  : > "$out/anchor.jsonl"
fi
if [ -n "${RANKD_SERVICE_BENCH:-}" ]; then
  echo "== rankd serve under load (bench/bench_service.c)"
  "$RANKD_SERVICE_BENCH" | tee -a "$out/rankd.jsonl"
fi
"$py" "$here/report.py" "$out/rankd.jsonl" "$out/anchor.jsonl"

if [ -n "${RANKD_BIN:-}" ]; then
  echo
  echo "== int8 against fp32 on the golden cases (bench/quant_error.sh)"
  bash "$here/quant_error.sh" "$RANKD_BIN" || echo "(golden cases not found: ../shared/golden)"
fi
