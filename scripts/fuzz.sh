#!/usr/bin/env bash
# Runs rankd's libFuzzer targets (built by make fuzz-build into
# build/fuzz/tests/fuzz/) and prints one line per target: executions,
# corpus size, result. Exits 1 when any target found a crash, a leak,
# undefined behaviour or a timeout; the input lands in
# build/fuzz/artifacts/<target>/ and the log beside it.
#
#   scripts/fuzz.sh SECONDS TARGET...   run each TARGET for SECONDS
#   scripts/fuzz.sh --probe             exit 0 when clang can build and link
#                                       a libFuzzer target here, else say why
#
# Each target starts from a scratch copy of its seeds, so that the inputs
# it finds never land in tests/corpus/fuzz/<target> (the seeds are
# reviewed files; add a regression input there by hand, named after the bug).
set -uo pipefail

out=build/fuzz
cc=${FUZZ_CC:-clang}

if [ "${1:-}" = "--probe" ]; then
  command -v "$cc" >/dev/null || { echo "fuzz: $cc not found (scripts/install-deps.sh installs clang)"; exit 1; }
  mkdir -p "$out/probe"
  printf '#include <stddef.h>\n#include <stdint.h>\nint LLVMFuzzerTestOneInput(const uint8_t *d, size_t n);\nint LLVMFuzzerTestOneInput(const uint8_t *d, size_t n) { (void)d; (void)n; return 0; }\n' \
    > "$out/probe/probe.c"
  if ! "$cc" -fsanitize=fuzzer,address,undefined "$out/probe/probe.c" -o "$out/probe/probe" 2> "$out/probe/log"; then
    echo "fuzz: $cc cannot link a libFuzzer target (libclang-rt-dev missing?): $(head -c 300 "$out/probe/log")"
    exit 1
  fi
  exit 0
fi

[ $# -ge 2 ] || { echo "usage: scripts/fuzz.sh SECONDS TARGET... | --probe" >&2; exit 2; }
secs=$1
shift
case "$secs" in ''|*[!0-9]*) echo "fuzz: SECONDS must be a whole number, got '$secs'" >&2; exit 2 ;; esac

fail=0
printf '%-12s %10s %8s %12s  %s\n' target executions corpus bytes result
for t in "$@"; do
  bin=$out/tests/fuzz/fuzz_$t
  seeds=tests/corpus/fuzz/$t
  work=$out/corpus/$t
  art=$out/artifacts/$t
  log=$art/log
  [ -x "$bin" ] || { echo "fuzz: $bin not built (make fuzz-build)" >&2; exit 2; }
  rm -rf "$work" "$art"
  mkdir -p "$work" "$art"
  [ -d "$seeds" ] && cp "$seeds"/* "$work"/ 2>/dev/null
  # -timeout: an input that takes 10 s is a hang; -rss_limit_mb: libFuzzer's
  # default, written down; -detect_leaks: LeakSanitizer after each input
  # that allocated more than it freed. UBSan aborts (-fno-sanitize-recover).
  # stdin is /dev/null: a config naming /dev/stdin as a file must not wait.
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    "$bin" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -detect_leaks=1 -print_final_stats=1 \
      -artifact_prefix="$art/" "$work" < /dev/null > "$log" 2>&1
  rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  # the last status line: "#N  DONE  cov: .. ft: .. corp: UNITS/SIZE ..."
  corp=$(grep -o 'corp: [0-9]*/[0-9]*[bKM]*' "$log" | tail -1 | sed 's/corp: //')
  if [ $rc -eq 0 ] && ! grep -qE 'ERROR: (AddressSanitizer|LeakSanitizer|libFuzzer)|runtime error:' "$log"; then
    result=ok
  else
    fail=1
    found=$(ls "$art" | grep -v '^log$' | head -1)
    why=$(grep -oE 'ERROR: [A-Za-z]+: [^(]*|runtime error: .*|SUMMARY: .*' "$log" | head -1)
    result="FAIL (rc $rc: ${why:-see log}; input ${found:+$art/$found}; log $log)"
  fi
  printf '%-12s %10s %8s %12s  %s\n' "$t" "${execs:-?}" "${corp%%/*}" "${corp#*/}" "$result"
done
exit $fail
