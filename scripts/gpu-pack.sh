#!/usr/bin/env bash
# Packs GPU binaries built here for a device call (bench/ab_gpu.sh and
# bench/profile_gpu.sh run them there, scripts/gpu-unpack.sh unpacks
# them): each stripped into build/pack/NAME, then all of build/pack as one
# xz'd tar, .carry/bin.tar.xz. Variants of one build share all but the
# changed code, and xz's 64 MiB window stores what they share once: ten
# binaries of 20 MB (six bench, four suites) were 32 MB,
# gzipped one by one 12 MB each (docs/gpu.md, "A/B on the device").
#   scripts/gpu-pack.sh NAME=PATH ...    e.g. new=build/bench/bench_gpu
#   scripts/gpu-pack.sh --clear          empty build/pack first
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
pack="$root/build/pack" bundle="$root/.carry/bin.tar.xz"
mkdir -p "$pack" "$root/.carry"
for a in "$@"; do
  if [ "$a" = --clear ]; then
    rm -f "$pack"/*
    continue
  fi
  name=${a%%=*} path=${a#*=}
  if [ "$name" = "$a" ] || [ -z "$name" ] || [[ "$name" = */* ]]; then
    echo "gpu-pack.sh: '$a' is not NAME=PATH" >&2
    exit 1
  fi
  [ -x "$path" ] || { echo "gpu-pack.sh: $path is not an executable" >&2; exit 1; }
  strip -o "$pack/$name" "$path"
done
names=$(cd "$pack" && ls)
[ -n "$names" ] || { echo "gpu-pack.sh: nothing packed (NAME=PATH ...)" >&2; exit 1; }
rm -rf "$root/.carry/bin" # the one-gzip-a-binary form this replaced
# one xz block, so that every binary sees the others in its window
# shellcheck disable=SC2086 # names are single words (no '/', from ls)
(cd "$pack" && tar cf - $names) | xz -9 -T1 > "$bundle.tmp"
mv "$bundle.tmp" "$bundle"
total=$(du -sm "$root/.carry" | cut -f1)
echo "gpu-pack.sh: $bundle: ${names//$'\n'/ } ($(du -m "$bundle" | cut -f1) MB; .carry: $total MB of the 64 MiB a call carries)"
[ "$total" -lt 64 ] || { echo "gpu-pack.sh: .carry is over 64 MB: the device call would refuse it" >&2; exit 1; }
