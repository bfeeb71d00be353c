#!/usr/bin/env bash
# The int8 model's error against fp32 on the golden cases of ../shared/golden:
# max abs error of scores and user vectors, and top-10 agreement of the
# candidate rankings, all printed by `rankd score --expect`.
#   bench/quant_error.sh RANKD_BINARY
set -euo pipefail
rankd=${1:?usage: quant_error.sh RANKD_BINARY}
golden=${RANKD_GOLDEN_DIR:-$(cd "$(dirname "$0")/../.." && pwd)/shared/golden}
[ -d "$golden" ] || { echo "quant_error.sh: no golden cases at $golden" >&2; exit 1; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for c in tiny small odd; do
  echo "== $c"
  "$rankd" quantize "$golden/$c.weights.safetensors" "$tmp/$c.int8.safetensors" 2>/dev/null
  "$rankd" score "$golden/$c.weights.safetensors" "$golden/$c.io.safetensors" "$tmp/$c.fp32.out" \
    --expect "$golden/$c.io.safetensors" --tol 1e-4 2>/dev/null | sed 's/^/fp32 vs reference: /;2,$s/^fp32 vs reference: /  /'
  "$rankd" score "$tmp/$c.int8.safetensors" "$golden/$c.io.safetensors" "$tmp/$c.int8.out" \
    --expect "$tmp/$c.fp32.out" 2>/dev/null | sed 's/^/int8 vs fp32: /;2,$s/^int8 vs fp32: /  /'
done
