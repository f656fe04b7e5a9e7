#!/usr/bin/env bash
# Builds every fuzz target and runs each, one after another, for SECONDS
# (default 600), starting from the seed corpus in fuzz/seeds/<target>/.
# Prints, per target: runs, execs/s and crashes (with the saved input).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# Runs on the stable toolchain (RUSTC_BOOTSTRAP=1 lets it take the sanitizer
# flags cargo-fuzz passes), so it needs only crates.io: cargo-fuzz is
# installed from there when missing.
# Working corpora grow in fuzz/corpus/<target>/, crashing inputs land in
# fuzz/artifacts/<target>/; both are ignored by git.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds="${1:-600}"
shift || true
case "$seconds" in
  '' | *[!0-9]*) echo "usage: scripts/fuzz.sh [SECONDS] [TARGET...]" >&2; exit 2 ;;
esac

export RUSTC_BOOTSTRAP=1
cargo fuzz --version >/dev/null 2>&1 || cargo install cargo-fuzz --locked

if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo fuzz list)
fi

for target in "${targets[@]}"; do
  echo "== building $target"
  cargo fuzz build "$target"
done

# Fixture folders the targets make go here, and are removed at the end.
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

summary=()
for target in "${targets[@]}"; do
  corpus="corpus/$target"
  artifacts="artifacts/$target"
  mkdir -p "$corpus" "$artifacts"
  [ -d "seeds/$target" ] && cp -n seeds/"$target"/* "$corpus"/ 2>/dev/null || true
  before="$(ls "$artifacts" | wc -l)"
  log="$scratch/$target.log"
  echo "== $target: ${seconds}s"
  # One job in one worker process; libFuzzer writes that job's output to
  # fuzz-0.log in the working folder.
  rm -f fuzz-0.log
  set +e
  TMPDIR="$scratch" cargo fuzz run "$target" "$corpus" -- \
    -max_total_time="$seconds" -jobs=1 -workers=1 -print_final_stats=1 \
    -artifact_prefix="$artifacts/" >"$log" 2>&1
  status=$?
  set -e
  if [ -f fuzz-0.log ]; then
    cat fuzz-0.log >>"$log"
    rm -f fuzz-0.log
  fi
  runs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -n 1)"
  rate="$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -n 1)"
  after="$(ls "$artifacts" | wc -l)"
  crashes=$((after - before))
  line="$(printf '%-22s runs %-10s execs/s %-8s crashes %s' "$target" "${runs:-?}" "${rate:-?}" "$crashes")"
  if [ "$crashes" -gt 0 ] || [ "$status" -ne 0 ]; then
    input="$(grep -o "Test unit written to .*" "$log" | tail -n 1 | sed 's/Test unit written to //')"
    line="$line  (exit $status${input:+, input $input})"
    grep -m 1 -E "panicked at|ERROR: (AddressSanitizer|libFuzzer)" "$log" | sed 's/^/    /' || true
    cp "$log" "$artifacts/last-run.log"
  fi
  echo "$line"
  summary+=("$line")
done

echo
echo "== summary (${seconds}s per target)"
printf '%s\n' "${summary[@]}"
