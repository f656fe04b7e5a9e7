#!/usr/bin/env bash
# The shipped (`dist` profile) binary, optimized with a profile of itself under load
# (profile-guided optimization). An instrumented build serves the load
# benchmark's requests: static tokens, OIDC, metrics and audit, to HTTP/2 and
# HTTP/1.1 upstreams, at 1 and 64 connections. The release build is then
# compiled with the counts it gathered, so the compiler lays out and inlines
# the code for the path requests take.
#
# Result: target/pgo/authproxy. Needs wrk and the llvm-profdata of rustc's
# LLVM version; both are installed from Debian when missing (as root, with
# apt-get). Takes about three release builds' time.
set -euo pipefail
cd "$(dirname "$0")/.."

llvm=$(rustc -vV | sed -n 's/^LLVM version: \([0-9]*\).*/\1/p')
profdata=/usr/lib/llvm-$llvm/bin/llvm-profdata
missing=()
[ -x "$profdata" ] || missing+=("llvm-$llvm")
command -v wrk >/dev/null || missing+=(wrk)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    else
        echo "pgo-build.sh: ${missing[*]} missing, and installing needs root and apt-get" >&2
        exit 1
    fi
fi

out=$PWD/target/pgo
mkdir -p "$out"
# Each build in a target folder of its own: their flags differ from every
# other build's, and sharing one would rebuild everything each time.
RUSTFLAGS="-Cprofile-generate=$out/build-scripts" \
    cargo build --profile dist --locked -p proxy-bin --bin authproxy --target-dir target/pgo-generate

# Only the proxy's own runs count (build scripts ran instrumented too). The
# bench's own upstream serves them, nginx or not on this machine, so the image
# build (without nginx) and a build here profile the same answers.
rm -rf "$out/runs"
LLVM_PROFILE_FILE="$out/runs/authproxy-%p.profraw" \
    LOAD_BINARY="$PWD/target/pgo-generate/dist/authproxy" \
    LOAD_UPSTREAM_SERVER=builtin \
    LOAD_TARGETS=authproxy-h2,authproxy-h1,oidc-h2,oidc-h1,obs-h2 \
    LOAD_SECONDS=3 LOAD_ROUNDS=1 LOAD_CALLGRIND=0 \
    cargo bench --locked -p authproxy-benches --bench load
"$profdata" merge -o "$out/authproxy.profdata" "$out"/runs/*.profraw

RUSTFLAGS="-Cprofile-use=$out/authproxy.profdata" \
    cargo build --profile dist --locked -p proxy-bin --bin authproxy --target-dir target/pgo-use
install -m 0755 target/pgo-use/dist/authproxy "$out/authproxy"
echo "pgo-build.sh: $out/authproxy"
