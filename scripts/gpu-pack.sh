#!/usr/bin/env bash
# Packs GPU binaries built here for a device call (bench/ab_gpu.sh runs
# them there): each stripped and gzipped into .carry/bin/NAME.gz, so that
# several fit the device tool's 64 MiB for carried paths (about 11 MB
# each; docs/gpu.md, "A/B on the device").
#   scripts/gpu-pack.sh NAME=PATH ...    e.g. new=build/bench/bench_gpu
#   scripts/gpu-pack.sh --clear          empty .carry/bin first
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir="$root/.carry/bin"
mkdir -p "$dir"
for a in "$@"; do
  if [ "$a" = --clear ]; then
    rm -f "$dir"/*.gz
    continue
  fi
  name=${a%%=*} path=${a#*=}
  if [ "$name" = "$a" ] || [ -z "$name" ]; then
    echo "gpu-pack.sh: '$a' is not NAME=PATH" >&2
    exit 1
  fi
  [ -x "$path" ] || { echo "gpu-pack.sh: $path is not an executable" >&2; exit 1; }
  strip -o "$dir/$name" "$path"
  gzip -9 -f "$dir/$name"
done
total=$(du -sm "$root/.carry" | cut -f1)
echo "gpu-pack.sh: .carry/bin: $(find "$dir" -name '*.gz' -printf '%f ')(.carry: $total MB of the 64 MiB a call carries)"
[ "$total" -lt 64 ] || { echo "gpu-pack.sh: .carry is over 64 MB: the device call would refuse it" >&2; exit 1; }
