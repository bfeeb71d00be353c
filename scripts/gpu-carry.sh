#!/usr/bin/env bash
# Fills .carry/ for a run of make test-gpu or make bench-gpu on the GPU
# machine (docs/gpu.md). That machine gets a copy of the working tree, but
# not ../shared, and has no -dev packages; a device call that names
# ".carry" in carry takes this along:
#   .carry/debs     Check (static libcheck_pic.a), subunit and jansson
#                   (static libjansson.a): the Makefile unpacks them into
#                   .carry/sysroot where check.h or jansson.h is missing;
#   .carry/shared   ../shared/reference and ../shared/golden.
# Run it on this machine (Debian, apt), from anywhere in the repository.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
shared="$root/../shared"
carry="$root/.carry"
debs=(check libsubunit0 libsubunit-dev libjansson-dev)

for d in reference golden; do
  [ -d "$shared/$d" ] || { echo "gpu-carry.sh: $shared/$d not found" >&2; exit 1; }
done
rm -rf "$carry/debs" "$carry/shared" "$carry/sysroot"
mkdir -p "$carry/debs" "$carry/shared"
# apt-get download writes into the current directory; as root it warns that
# the download is not sandboxed, which is harmless here.
(cd "$carry/debs" && apt-get download -q "${debs[@]}")
for p in "${debs[@]}"; do
  ls "$carry/debs/${p}"_*.deb >/dev/null 2>&1 || { echo "gpu-carry.sh: $p was not downloaded" >&2; exit 1; }
done
cp -r "$shared/reference" "$shared/golden" "$carry/shared/"
echo "gpu-carry.sh: $(du -sh "$carry" | cut -f1) in $carry: $(cd "$carry/debs" && ls | tr '\n' ' ')and shared/{reference,golden}"
