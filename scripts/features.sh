#!/usr/bin/env bash
# proxy-core's cargo features: the crate alone with each feature, with none
# and with all, lint-clean (so a forgotten `cfg` fails); the OIDC-only
# example lint-clean and built with `--no-default-features --features oidc`;
# the unit tests passing with only that feature and with none; and an
# OIDC-only build depending on none of the crates the other parts bring.
# Installs cargo-hack when missing.
#
# `scripts/features.sh lints` runs the checks, `scripts/features.sh tests`
# the example's build and the unit tests (CI runs the two side by side, each
# with a build folder of its own); no argument runs both.
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
  # The unit tests of the OIDC-only build and of the bare one: what a part left
  # out leaves behind still works, and its configuration sections are refused.
  # Both are built first, then run side by side, three test threads each:
  # many of their tests wait on timers and sockets (others, the property
  # tests, keep a core busy).
  test_binary() { # cargo test arguments -> the unit-test executable
    cargo test -p proxy-core --lib --locked --no-run --message-format=json-render-diagnostics "$@" |
      sed -nE 's/.*"executable":"([^"]+)".*/\1/p' | tail -n 1
  }
  oidc_only=$(test_binary --no-default-features --features oidc)
  bare=$(test_binary --no-default-features)
  if [ -z "$oidc_only" ] || [ -z "$bare" ]; then
    echo "error: the unit tests of proxy-core without default features did not build" >&2
    exit 1
  fi
  out=$(mktemp -d)
  trap 'rm -rf "$out"' EXIT
  (cd proxy-core && "$oidc_only" --test-threads 3) >"$out/oidc" 2>&1 &
  oidc_run=$!
  (cd proxy-core && "$bare" --test-threads 3) >"$out/bare" 2>&1 &
  bare_run=$!
  status=0
  wait "$oidc_run" || status=1
  echo "proxy-core's unit tests with only the oidc feature:"
  cat "$out/oidc"
  wait "$bare_run" || status=2
  echo "proxy-core's unit tests with no feature:"
  cat "$out/bare"
  if [ "$status" != 0 ]; then
    echo "error: proxy-core's unit tests failed without their default features (see above)" >&2
    exit 1
  fi
}

if [ "$part" != tests ]; then
  lints
fi
if [ "$part" != lints ]; then
  run_unit_tests
fi
