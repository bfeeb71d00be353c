#!/usr/bin/env bash
# Installs the Debian packages rankd's build, tests and benchmarks need.
# Idempotent: asks apt-get only for what is missing, and prints nothing when
# everything is already there.
#
#   scripts/install-deps.sh            build + test dependencies
#   scripts/install-deps.sh --bench    also the PyTorch CPU anchor (python3-torch)
#
# clang and its compiler-rt (libclang-rt-dev holds libFuzzer and clang's
# sanitizer runtimes) build the fuzz targets of tests/fuzz (make fuzz).
# They are optional: where this distribution does not package them, the
# script says so and goes on, and make test skips the fuzz runs saying why.
set -euo pipefail

pkgs=(
  build-essential pkg-config
  libjansson-dev libyaml-dev librdkafka-dev libhiredis-dev libmicrohttpd-dev
  libopenblas-dev check
  redis-server curl
  # Go, sprig and go-yaml build scripts/helm-render, which renders the Helm
  # chart for tests/check_helm.c (Helm itself is not packaged).
  golang-go golang-github-masterminds-sprig-dev golang-gopkg-yaml.v2-dev
)
optional=(clang libclang-rt-dev)
for a in "$@"; do
  case "$a" in
    --bench) pkgs+=(python3-torch python3-numpy) ;;
    *) echo "install-deps.sh: unknown option '$a' (known: --bench)" >&2; exit 2 ;;
  esac
done

installed() {
  [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" = "install ok installed" ]
}
missing=() missing_opt=()
for p in "${pkgs[@]}"; do installed "$p" || missing+=("$p"); done
for p in "${optional[@]}"; do installed "$p" || missing_opt+=("$p"); done
[ ${#missing[@]} -eq 0 ] && [ ${#missing_opt[@]} -eq 0 ] && exit 0

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "install-deps.sh: need root or sudo to install: ${missing[*]} ${missing_opt[*]}" >&2; exit 1; }
  sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq
# An optional package joins the install only where apt knows a candidate.
for p in ${missing_opt[@]+"${missing_opt[@]}"}; do
  if apt-cache policy "$p" 2>/dev/null | grep -q 'Candidate: [^(]'; then
    missing+=("$p")
  else
    echo "install-deps.sh: $p is not packaged here; the fuzz targets (make fuzz) will be skipped" >&2
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "install-deps.sh: installing ${missing[*]}"
$sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# redis-server's package starts a system instance on 6379; rankd's tests and
# `make run` start their own on free ports, so the system one is left alone.
