#!/usr/bin/env bash
# Runs every test binary of the workspace, several at once, and the
# doc-tests; called by scripts/test.sh once the services' binaries are built.
#
# `cargo test` runs its test binaries one after another, and most of their
# time is spent waiting on kube-apiserver, slapd, the OIDC provider or kubectl,
# not on a core: running AUTHPROXY_TEST_JOBS binaries at once (default: the
# number of cores plus one) makes the whole suite about half as long. Each
# binary still runs its own tests on its own threads, as under `cargo test`,
# and servers that tests start take ports no other binary can be given
# (`authproxy_tests::free_port`).
#
# The slowest binaries start first, from the times of the last run kept in
# the build folder's suite-times (and a built-in list on a first run), so
# that no long binary starts last. Each binary's output is printed whole when
# it ends, in `cargo test`'s own form, and the run ends with one line of
# totals. A binary that fails runs once more, alone, at the end, and the
# log says whether it then passed (a failure that needs the load of the
# others); the suite fails either way.
set -euo pipefail
cd "$(dirname "$0")/.."

jobs=${AUTHPROXY_TEST_JOBS:-$(($(nproc) + 1))}
case $jobs in
  '' | *[!0-9]*) jobs=0 ;;
  *) jobs=$((10#$jobs)) ;;
esac
if [ "$jobs" -lt 1 ]; then
  echo "error: AUTHPROXY_TEST_JOBS must be a whole number of at least 1, not '${AUTHPROXY_TEST_JOBS:-}'" >&2
  exit 2
fi
logs=$(mktemp -d)
# An interrupted suite stops the test binaries still running, each with the
# servers it started (a process group per binary), before it removes their
# logs.
stop_all() {
  local pid
  for pid in "$logs"/*.pid; do
    [ -f "$pid" ] || continue
    kill -TERM -- -"$(cat "$pid")" 2>/dev/null || true
  done
  rm -rf "$logs"
}
trap stop_all EXIT

# Build every test binary (and the authproxy binary they run) first.
cargo test --workspace --locked --no-run --message-format=json-render-diagnostics >"$logs/build.json"

# One line per test binary: manifest folder, source file, executable.
# (Built as tests, or a test target of its own harness.)
grep '"executable":"/' "$logs/build.json" | grep -E '"profile":\{[^}]*"test":true\}|"target":\{"kind":\["test"\]' |
  sed -E 's/.*"manifest_path":"([^"]*)\/Cargo\.toml".*"src_path":"([^"]*)".*"executable":"([^"]*)".*/\1 \2 \3/' \
    >"$logs/binaries"

times=${CARGO_TARGET_DIR:-target}/suite-times
# Known long binaries, for a first run with no times kept.
first_guess='streaming streaming_limits shared_kube oidc jwt_oracle proxy-core chart impersonation_oracle goaway_kube'
order() {
  while read -r dir src exe; do
    # Named by its source file, which is one per test binary.
    name=${src#"$PWD"/}
    name=${name//\//:}
    secs=$(awk -v n="$name" '$1 == n {print $2}' "$times" 2>/dev/null || true)
    if [ -z "$secs" ]; then
      secs=0
      for slow in $first_guess; do
        case $name in *:"$slow".rs | *:"$slow":main.rs | "$slow":src:lib.rs) secs=60 ;; esac
      done
    fi
    echo "$secs $name $dir $src $exe"
  done <"$logs/binaries" | sort -rn -k1,1
}
order >"$logs/queue"
if [ "$(sort -u -k2,2 "$logs/queue" | wc -l)" -ne "$(wc -l <"$logs/queue")" ]; then
  echo "error: two test binaries have the same source file" >&2
  exit 1
fi

run_one() { # name dir src exe
  local name=$1 dir=$2 src=$3 exe=$4 start end status=0
  start=$(date +%s.%N)
  # No test reads the terminal: stdin is empty, never this script's input.
  # A process group of its own (setsid execs in place: the pid is the
  # group's), for stop_all.
  # A binary whose tests mostly wait may ask for more test threads than
  # cores, with a line `// suite.sh: --test-threads N` in its main file.
  local threads
  threads=$(grep -m1 -oE '^// suite\.sh: --test-threads [0-9]+$' "$src" | awk '{print $NF}' || true)
  (cd "$dir" && exec setsid "$exe" ${threads:+--test-threads "$threads"}) </dev/null >"$logs/$name.out" 2>&1 &
  echo "$!" >"$logs/$name.pid"
  wait "$!" || status=$?
  rm -f "$logs/$name.pid"
  end=$(date +%s.%N)
  awk -v a="$start" -v b="$end" -v n="$name" 'BEGIN {printf "%s %.1f\n", n, b - a}' >"$logs/$name.time"
  # Whole or not at all: the status file is what marks a binary as done.
  echo "$status" >"$logs/$name.status.tmp"
  mv "$logs/$name.status.tmp" "$logs/$name.status"
}

report() { # name src exe
  local name=$1 src=$2 exe=$3
  echo "     Running ${src#"$PWD"/} ($exe)"
  cat "$logs/$name.out" 2>/dev/null || echo "(no output)"
  if [ "$(cat "$logs/$name.status")" != 0 ]; then
    echo "error: test binary $name exited with status $(cat "$logs/$name.status")"
  fi
}

declare -A pending=()
# After `wait -n`: reports the binaries that ended. Its status 127 says no
# job is left: a binary still pending then ended without a status (its
# runner died), and is reported as such.
report_finished() {
  local waited=$1
  local done_name
  for done_name in "${!pending[@]}"; do
    if [ ! -f "$logs/$done_name.status" ] && [ "$waited" = 127 ]; then
      echo "missing" >"$logs/$done_name.status"
    fi
    if [ -f "$logs/$done_name.status" ]; then
      # shellcheck disable=SC2086 # "src exe", two words
      report "$done_name" ${pending[$done_name]}
      unset "pending[$done_name]"
    fi
  done
}

mapfile -t queue <"$logs/queue"
for line in "${queue[@]}"; do
  read -r _ name dir src exe <<<"$line"
  while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do
    waited=0
    wait -n || waited=$?
    report_finished "$waited"
  done
  pending[$name]="$src $exe"
  run_one "$name" "$dir" "$src" "$exe" &
done

# The doc-tests, beside the last binaries.
doc_status=0
cargo test --workspace --locked --doc --no-fail-fast </dev/null >"$logs/doc-tests.out" 2>&1 || doc_status=$?
while [ "${#pending[@]}" -gt 0 ]; do
  waited=0
  wait -n || waited=$?
  report_finished "$waited"
done
echo "   Doc-tests"
cat "$logs/doc-tests.out"

cat "$logs"/*.time | sort >"$times.new" && mv "$times.new" "$times"

# A binary that failed runs once more, alone, to tell a failure that needs
# the others' load from one that does not. The suite fails either way: the
# totals are the first run's.
under_load=()
for line in "${queue[@]}"; do
  read -r _ name dir src exe <<<"$line"
  [ "$(cat "$logs/$name.status")" = 0 ] && continue
  for kept in out status; do
    mv "$logs/$name.$kept" "$logs/$name.first-$kept" 2>/dev/null || true
  done
  echo "     Running ${src#"$PWD"/} again, alone, after it failed (the suite fails either way)"
  run_one "$name" "$dir" "$src" "$exe"
  report "$name" "$src" "$exe"
  [ "$(cat "$logs/$name.status")" = 0 ] && under_load+=("$name")
  for kept in out status; do
    mv "$logs/$name.first-$kept" "$logs/$name.$kept" 2>/dev/null || true
  done
done

# The totals, binary by binary from the queue (one that left no status, or
# failed without a failed test, counts as one failure), then the doc-tests.
sums() { # file: its "test result" lines' passed and failed, added up
  sed -nE 's/^test result: [a-zA-Z]+\. ([0-9]+) passed; ([0-9]+) failed.*/\1 \2/p' "$1" 2>/dev/null |
    awk '{p += $1; f += $2} END {print p + 0, f + 0}'
}
passed=0
failed=0
broken=0
tally() { # output status
  local p f
  read -r p f < <(sums "$1")
  passed=$((passed + p))
  failed=$((failed + f))
  if [ "$2" != 0 ]; then
    broken=$((broken + 1))
    [ "$f" -eq 0 ] && failed=$((failed + 1))
  fi
  return 0
}
for line in "${queue[@]}"; do
  read -r _ name _ _ _ <<<"$line"
  tally "$logs/$name.out" "$(cat "$logs/$name.status" 2>/dev/null || echo missing)"
done
tally "$logs/doc-tests.out" "$doc_status"

echo
if [ "${#under_load[@]}" -gt 0 ]; then
  echo "error: ${under_load[*]} failed among the others and passed alone: a failure under load, to be found"
fi
echo "suite: $passed passed, $failed failed"
if [ "$failed" -gt 0 ] || [ "$broken" -gt 0 ]; then
  echo "error: $broken test binaries failed" >&2
  exit 1
fi
