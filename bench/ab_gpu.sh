#!/usr/bin/env bash
# An A/B of GPU binaries built on the build machine and carried to the GPU
# machine (scripts/gpu-pack.sh packs them into .carry/bin.tar.xz), in one
# device call: optionally the GPU suite of one of them plain and under the
# compute-sanitizer (make test-gpu's three steps, without its build), then
# each shape scored by every variant in turn, REPS rounds, interleaved so
# that a drift of the machine falls on all of them alike (docs/gpu.md,
# "A/B on the device").
#   VARIANTS="old new:wide"    NAME[:RANKD_GPU_FAST way[:VAR=VALUE,...]], default way
#                              auto; the settings go to that variant's runs alone,
#                              e.g. new:auto:RANKD_GPU_LEAN_HIST_B=1
#   SHAPES="teacher:16,512 student:1"   model:batch sizes (bench_gpu's B)
#   REPS=2                     rounds
#   SUITE=NAME                 the suite binary to run first (none: skip)
#   SANITIZE=1                 and memcheck, racecheck on it
#   TIMEOUT=600                seconds for each run of the suite, 120 for a
#                              bench run: a hung kernel ends the run, not the call
# Prints one line per shape, variant and round: the call's median us and
# the GPU's part of it (bench_gpu's "us" and "device_us").
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=$(bash "$root/scripts/gpu-unpack.sh") || exit 1
golden=${RANKD_GOLDEN_DIR:-$root/.carry/shared/golden}
out=${OUT:-$bin}
rc=0

if [ -n "${SUITE:-}" ]; then
  [ -x "$bin/$SUITE" ] || { echo "ab_gpu.sh: SUITE=$SUITE is not in .carry/bin.tar.xz" >&2; exit 1; }
  RANKD_GOLDEN_DIR=$golden timeout "${TIMEOUT:-600}" "$bin/$SUITE" > "$out/suite.log" 2>&1 || rc=1
  echo "suite $SUITE: $(grep -E '^[0-9]+%: Checks' "$out/suite.log" | tail -1)"
  grep -E ':[0-9]+:[EF]:' "$out/suite.log" | head -20
  if [ "${SANITIZE:-0}" = 1 ]; then
    cs=$(command -v compute-sanitizer || echo "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer")
    for t in "memcheck:sanitize big:--leak-check full" "racecheck:sanitize:"; do
      IFS=: read -r tool tags opts <<<"$t"
      # shellcheck disable=SC2086 # opts is a list of options
      RANKD_GOLDEN_DIR=$golden CK_INCLUDE_TAGS="$tags" CK_FORK=no timeout "${TIMEOUT:-600}" "$cs" --tool "$tool" $opts \
        --error-exitcode 1 \
        "$bin/$SUITE" > "$out/$tool.log" 2>&1 || rc=1
      grep -q 'SUMMARY: [1-9]' "$out/$tool.log" && rc=1
      echo "$tool: $(grep -E '^[0-9]+%: Checks' "$out/$tool.log" | tail -1); $(grep -E '(ERROR|LEAK|RACECHECK) SUMMARY' \
        "$out/$tool.log" | sed 's/^=* *//' | tr '\n' ' ')"
    done
  fi
  [ $rc = 0 ] || { echo "ab_gpu.sh: the suite failed: no A/B (logs in $out)"; exit 1; }
fi

for v in ${VARIANTS:?VARIANTS: the binaries to compare, NAME[:way]}; do
  [ -x "$bin/${v%%:*}" ] || { echo "ab_gpu.sh: ${v%%:*} is not in .carry/bin.tar.xz" >&2; exit 1; }
done
for spec in ${SHAPES:-teacher:16,128,512}; do
  model=${spec%%:*}
  for B in $(tr ',' ' ' <<<"${spec#*:}"); do
    for rep in $(seq "${REPS:-2}"); do
      for v in $VARIANTS; do
        IFS=: read -r name way sets <<<"$v"
        way=${way:-auto}
        # shellcheck disable=SC2046 # the settings are words VAR=VALUE
        line=$(env $(tr ',' ' ' <<<"$sets") RANKD_GPU_FAST="$way" RANKD_BENCH_B="$B" timeout 120 "$bin/$name" "$bin" \
          "$model" 2>&1 | grep '"bench": "score"')
        fig=$(python3 -c 'import json, sys; d = json.loads(sys.argv[1]); print("%.1f us (device %.1f)" % (d["us"], d["device_us"]))' \
          "$line" 2>/dev/null) || { fig="failed"; rc=1; }
        echo "$model B=$B $name:$way${sets:+:$sets} round $rep: $fig"
      done
    done
  done
done
exit $rc
