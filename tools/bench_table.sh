#!/usr/bin/env bash
# The README's benchmark table, in one command: the bench example
# (examples/bench.rs) built twice, the default build (no RUSTFLAGS: kernels
# chosen at run time) and the native build (-C target-cpu=native, its own
# target directory), each run for every model in train, serve and serve-n
# (16 streams) modes on one thread and in train mode on two threads; the
# JSON lines go to target/bench-table/ and tools/bench_table.py prints the
# markdown table (tokens/s, GFLOP/s and the fraction of the measured
# one-core peak, medians of --runs timed runs).
#   bash tools/bench_table.sh [--runs N] [--min-time S]   # defaults: 5, 0.5
# Takes about 5 minutes on 2 cores once the two builds exist. Run it on an
# otherwise idle machine: the numbers are only as quiet as the machine.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=5
min_time=0.5
while [ $# -gt 0 ]; do
    case $1 in
        --runs) runs=$2; shift 2 ;;
        --min-time) min_time=$2; shift 2 ;;
        *) echo "usage: bash tools/bench_table.sh [--runs N] [--min-time S]" >&2; exit 2 ;;
    esac
done
out=target/bench-table
mkdir -p "$out"
cargo build -q --release --example bench
RUSTFLAGS="-C target-cpu=native" cargo build -q --release --target-dir target/native --example bench
for build in default native; do
    bin=target/release/examples/bench
    [ "$build" = default ] || bin=target/native/release/examples/bench
    echo "== $build build, 1 thread" >&2
    "$bin" --json --runs "$runs" --min-time "$min_time" >"$out/$build.1.jsonl"
    echo "== $build build, train on 2 threads" >&2
    "$bin" --json --runs "$runs" --min-time "$min_time" --mode train --threads 2 >"$out/$build.2.jsonl"
done
python3 tools/bench_table.py "$out"/default.1.jsonl "$out"/default.2.jsonl "$out"/native.1.jsonl "$out"/native.2.jsonl |
    tee "$out/table.md"
