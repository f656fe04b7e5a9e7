#!/usr/bin/env bash
# Runs every test binary of the workspace, several at once, and the
# doc-tests; called by scripts/test.sh once the services' binaries are built.
#
# `cargo test` runs its test binaries one after another, and most of their
# time is spent waiting on kube-apiserver, slapd, the OIDC provider or kubectl,
# not on a core: running AUTHPROXY_TEST_JOBS binaries at once (default: the
# number of cores plus two) makes the whole suite several times shorter. Each
# binary still runs its own tests on its own threads, as under `cargo test`.
#
# The slowest binaries start first, from the times of the last run kept in
# target/suite-times (and a built-in list on a first run), so that no long
# binary starts last. Each binary's output is printed whole when it ends, in
# `cargo test`'s own form, and the run ends with one line of totals. A binary
# that fails runs once more, alone, at the end: the suite fails if it fails
# again, and names it as flaky otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."

jobs=${AUTHPROXY_TEST_JOBS:-$(($(nproc) + 2))}
logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT

# Build every test binary (and the authproxy binary they run) first.
cargo test --workspace --locked --no-run --message-format=json-render-diagnostics >"$logs/build.json"

# One line per test binary: manifest folder, source file, executable.
grep '"executable":"/' "$logs/build.json" | grep -E '"profile":\{[^}]*"test":true\}' |
  sed -E 's/.*"manifest_path":"([^"]*)\/Cargo\.toml".*"src_path":"([^"]*)".*"executable":"([^"]*)".*/\1 \2 \3/' \
    >"$logs/binaries"

times=${CARGO_TARGET_DIR:-target}/suite-times
# Known long binaries, for a first run with no times kept.
first_guess='streaming streaming_limits impersonation_oracle jwt_oracle proxy-core oidc chart upstream_health goaway_kube'
order() {
  while read -r dir src exe; do
    # Named by its source file, which is one per test binary.
    name=${src#"$PWD"/}
    name=${name//\//:}
    secs=$(awk -v n="$name" '$1 == n {print $2}' "$times" 2>/dev/null || true)
    if [ -z "$secs" ]; then
      secs=0
      for slow in $first_guess; do
        case $name in *:"$slow".rs | "$slow":src:lib.rs) secs=60 ;; esac
      done
    fi
    echo "$secs $name $dir $src $exe"
  done <"$logs/binaries" | sort -rn -k1,1
}
order >"$logs/queue"

run_one() { # name dir src exe
  local name=$1 dir=$2 src=$3 exe=$4 start end status=0
  start=$(date +%s.%N)
  (cd "$dir" && "$exe") >"$logs/$name.out" 2>&1 || status=$?
  end=$(date +%s.%N)
  echo "$status" >"$logs/$name.status"
  awk -v a="$start" -v b="$end" -v n="$name" 'BEGIN {printf "%s %.1f\n", n, b - a}' >"$logs/$name.time"
}

report() { # name src exe
  local name=$1 src=$2 exe=$3
  echo "     Running ${src#"$PWD"/} ($exe)"
  cat "$logs/$name.out"
  if [ "$(cat "$logs/$name.status")" != 0 ]; then
    echo "error: test binary $name exited with status $(cat "$logs/$name.status")"
  fi
}

declare -A pending=()
while read -r _ name dir src exe; do
  while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do
    wait -n || true
    for done_name in "${!pending[@]}"; do
      if [ -f "$logs/$done_name.status" ]; then
        report "$done_name" ${pending[$done_name]}
        unset "pending[$done_name]"
      fi
    done
  done
  pending[$name]="$src $exe"
  run_one "$name" "$dir" "$src" "$exe" &
done <"$logs/queue"

# The doc-tests, alongside the last binaries.
(cargo test --workspace --locked --doc >"$logs/doc-tests.out" 2>&1 && echo 0 || echo $?) >"$logs/doc-tests.status.tmp"
mv "$logs/doc-tests.status.tmp" "$logs/doc-tests.status"
wait
for done_name in "${!pending[@]}"; do
  report "$done_name" ${pending[$done_name]}
done
echo "   Doc-tests"
cat "$logs/doc-tests.out"

cat "$logs"/*.time | sort >"$times.new" && mv "$times.new" "$times"

# A binary that failed among the others runs once more, alone: a failure
# that does not come back is named as flaky in the totals (and its first
# output stays above), one that does fails the suite.
flaky=()
while read -r _ name dir src exe; do
  [ "$(cat "$logs/$name.status")" = 0 ] && continue
  mv "$logs/$name.out" "$logs/$name.first"
  echo "     Running ${src#"$PWD"/} again, alone, after it failed among the others"
  run_one "$name" "$dir" "$src" "$exe"
  report "$name" "$src" "$exe"
  [ "$(cat "$logs/$name.status")" = 0 ] && flaky+=("$name")
done <"$logs/queue"

passed=$(cat "$logs"/*.out | sed -nE 's/^test result: [a-zA-Z]+\. ([0-9]+) passed; ([0-9]+) failed.*/\1/p' | awk '{s += $1} END {print s + 0}')
failed=$(cat "$logs"/*.out | sed -nE 's/^test result: [a-zA-Z]+\. ([0-9]+) passed; ([0-9]+) failed.*/\2/p' | awk '{s += $1} END {print s + 0}')
broken=0
for status in "$logs"/*.status; do
  [ "$(cat "$status")" = 0 ] || broken=$((broken + 1))
done
echo
if [ "${#flaky[@]}" -gt 0 ]; then
  echo "warning: flaky: ${flaky[*]} failed among the others and passed alone (first output above)"
fi
# A binary that failed without a failed test (a crash, a panic outside the
# tests) counts as one failure.
[ "$failed" -eq 0 ] && failed=$broken
echo "suite: $passed passed, $failed failed"
if [ "$failed" -gt 0 ] || [ "$broken" -gt 0 ]; then
  echo "error: $broken test binaries failed" >&2
  exit 1
fi
