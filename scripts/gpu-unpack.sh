#!/usr/bin/env bash
# On the GPU machine: unpacks the binaries scripts/gpu-pack.sh carried
# (.carry/bin.tar.xz) into DIR, once per bundle (a stamp of its checksum
# in DIR), and prints DIR. Python's tarfile reads the xz, so the machine
# needs no xz-utils.
#   scripts/gpu-unpack.sh [DIR]          default /tmp/rankd-bin
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bundle="$root/.carry/bin.tar.xz" dir=${1:-/tmp/rankd-bin}
[ -f "$bundle" ] || { echo "gpu-unpack.sh: no $bundle (scripts/gpu-pack.sh)" >&2; exit 1; }
sum=$(cksum < "$bundle")
if [ "$(cat "$dir/.stamp" 2>/dev/null)" != "$sum" ]; then
  rm -rf "$dir" && mkdir -p "$dir"
  python3 - "$bundle" "$dir" <<'PY'
import sys, tarfile
with tarfile.open(sys.argv[1]) as t:
    try:
        t.extractall(sys.argv[2], filter="data")
    except TypeError:  # a Python before tarfile's filters
        t.extractall(sys.argv[2])
PY
  chmod +x "$dir"/*
  echo "$sum" > "$dir/.stamp"
fi
echo "$dir"
