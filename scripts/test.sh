#!/usr/bin/env bash
# Installs every test dependency that is missing (idempotent), then runs the
# whole test suite. Safe to run again and again; installs only what is absent.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# Debian packages: curl and kubectl for the end-to-end tests.
missing=()
command -v curl >/dev/null 2>&1 || missing+=(curl)
command -v kubectl >/dev/null 2>&1 || missing+=(kubernetes-client)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "installing: ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

for tool in curl kubectl; do
  command -v "$tool" >/dev/null 2>&1 || { echo "error: $tool is still missing after install" >&2; exit 1; }
done

# The suite: unit, property, doc and end-to-end tests of every crate.
cargo test --workspace --locked "$@"
