#!/usr/bin/env bash
# proxy-core's cargo features: the crate alone with each feature, with none
# and with all, lint-clean (so a forgotten `cfg` fails); the OIDC-only
# example lint-clean and built with `--no-default-features --features oidc`;
# the unit tests passing with only that feature; and an
# OIDC-only build depending on none of the crates the other parts bring.
# Installs cargo-hack when missing.
#
# `scripts/features.sh lints` runs the checks, `scripts/features.sh tests`
# the example's build and the OIDC-only unit tests (CI runs the two side by
# side, each with a build folder of its own); no argument runs both.
set -euo pipefail
cd "$(dirname "$0")/.."
part=${1:-all}
case $part in
  lints | tests | all) ;;
  *)
    echo "usage: scripts/features.sh [lints|tests]" >&2
    exit 2
    ;;
esac

lints() {
  hack_version=0.6.46
  if ! cargo hack --version 2>/dev/null | grep -q " $hack_version\$"; then
    echo "installing cargo-hack $hack_version"
    cargo install cargo-hack --locked --version "$hack_version"
  fi

  # Each feature alone and none (`default` is left out: the workspace's own
  # clippy run checks it), then all of them.
  cargo hack clippy -p proxy-core --each-feature --exclude-features default --locked -- -D warnings
  cargo clippy -p proxy-core --all-features --locked -- -D warnings
  # The OIDC-only example, lint-clean with only that feature (the tests part
  # builds it).
  cargo clippy -p proxy-core --example embed_oidc_only --no-default-features --features oidc --locked -- -D warnings
  tree=$(cargo tree -p proxy-core -e normal --no-default-features --features oidc --prefix none --locked)
  for crate in ldap3 cel prometheus-client flate2; do
    if grep -q "^$crate v" <<<"$tree"; then
      echo "error: proxy-core with only the oidc feature depends on $crate" >&2
      exit 1
    fi
  done
  echo "proxy-core with only the oidc feature: $(sed 's/ (\*)$//' <<<"$tree" | sort -u | wc -l) crates"
}

run_unit_tests() {
  # The OIDC-only example builds with only that feature.
  cargo build -p proxy-core --example embed_oidc_only --no-default-features --features oidc --locked
  # The unit tests of the OIDC-only build, the embedder's case: what the
  # parts left out leave behind still works, and their configuration
  # sections are refused. (The bare build is linted above; its tests would
  # repeat these, for one more build of the crate.)
  # Three test threads: many of these tests wait on timers and sockets.
  cargo test -p proxy-core --lib --no-default-features --features oidc --locked -- --test-threads 3
}

if [ "$part" != tests ]; then
  lints
fi
if [ "$part" != lints ]; then
  run_unit_tests
fi
