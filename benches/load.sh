#!/usr/bin/env bash
# The load benchmark, authproxy beside nginx, a bare pass-through proxy and
# the upstream itself, then the instructions each proxy executes per request.
# Installs wrk, nginx and valgrind from Debian when they are missing (as root
# with apt-get; otherwise the bench says what it skipped), builds the binary
# the container ships (profile-guided, scripts/pgo-build.sh; `LOAD_PGO=0`: the
# plain release build), and runs both parts. Knobs: see benches/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
command -v valgrind >/dev/null || missing+=(valgrind)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" ||
            echo "load.sh: could not install ${missing[*]}"
    else
        echo "load.sh: ${missing[*]} missing, and installing needs root and apt-get"
    fi
fi

if [ -z "${LOAD_BINARY:-}" ] && [ "${LOAD_PGO:-1}" != 0 ]; then
    scripts/pgo-build.sh
    export LOAD_BINARY="$PWD/target/pgo/authproxy"
elif [ -z "${LOAD_BINARY:-}" ]; then
    cargo build --profile dist --locked -p proxy-bin
    export LOAD_BINARY="$PWD/target/dist/authproxy"
fi
cargo bench -p authproxy-benches --bench load
if [ "${LOAD_CALLGRIND:-1}" != 0 ]; then
    if command -v valgrind >/dev/null; then
        LOAD_CALLGRIND=1 cargo bench -p authproxy-benches --bench load
    else
        echo "load.sh: valgrind is not installed: instructions per request skipped"
    fi
fi
