#!/usr/bin/env bash
# Runs every cargo-fuzz target of fuzz/ for SECONDS each (default 60) on the stable
# toolchain: `cargo fuzz run -s none` (libFuzzer with coverage feedback, no sanitizer, so no
# -Z flag). Seeds come from fuzz/corpus/TARGET (checked in, read only); what a run finds is
# kept in fuzz/target/corpus/TARGET for the next run. A crash stops the script with the
# input under fuzz/artifacts/TARGET/ (reproduce: cargo fuzz run -s none TARGET FILE).
#
# Usage: ./scripts/fuzz.sh [SECONDS] [TARGET...]
# Prints, per target: executions, executions per second, coverage (edges) and corpus size.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"

seconds="${1:-60}"
shift || true
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "scripts/fuzz.sh: installing cargo-fuzz 0.13.2 (about 3 minutes)" >&2
    cargo install cargo-fuzz --version 0.13.2 --locked
fi
targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
    mapfile -t targets < <(cargo fuzz list)
fi

cargo fuzz build -s none
printf '%-16s %12s %10s %8s %8s\n' target executions exec/s cov corpus
for target in "${targets[@]}"; do
    work="target/corpus/$target"
    mkdir -p "$work"
    log="target/fuzz-$target.log"
    if ! cargo fuzz run -s none "$target" "$work" "corpus/$target" -- \
        -max_total_time="$seconds" -print_final_stats=1 >"$log" 2>&1; then
        echo "scripts/fuzz.sh: $target failed; its log: fuzz/$log" >&2
        tail -n 40 "$log" >&2
        exit 1
    fi
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
    corpus=$(grep -o 'corp: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
    printf '%-16s %12s %10s %8s %8s\n' "$target" "${execs:-?}" "${rate:-?}" "${cov:-?}" "${corpus:-?}"
done
