#!/usr/bin/env bash
# proxy-core's cargo features: the crate alone with each feature, with none and
# with all, lint-clean (so a forgotten `cfg` fails); the OIDC-only example
# builds with `--no-default-features --features oidc`, and the unit tests pass
# with it and with no feature; and an OIDC-only build
# depends on none of the crates the other parts bring. Installs cargo-hack
# when missing.
set -euo pipefail
cd "$(dirname "$0")/.."

hack_version=0.6.46
if ! cargo hack --version 2>/dev/null | grep -q " $hack_version\$"; then
  echo "installing cargo-hack $hack_version"
  cargo install cargo-hack --locked --version "$hack_version"
fi

cargo hack clippy -p proxy-core --each-feature --locked -- -D warnings
cargo build -p proxy-core --example embed_oidc_only --no-default-features --features oidc --locked
# The unit tests of the OIDC-only build and of the bare one: what a part left
# out leaves behind still works, and its configuration sections are refused.
cargo test -p proxy-core --lib --no-default-features --features oidc --locked
cargo test -p proxy-core --lib --no-default-features --locked

tree=$(cargo tree -p proxy-core -e normal --no-default-features --features oidc --prefix none --locked)
for crate in ldap3 cel prometheus-client flate2; do
  if grep -q "^$crate v" <<<"$tree"; then
    echo "error: proxy-core with only the oidc feature depends on $crate" >&2
    exit 1
  fi
done
echo "proxy-core with only the oidc feature: $(sed 's/ (\*)$//' <<<"$tree" | sort -u | wc -l) crates"
