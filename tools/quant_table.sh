#!/usr/bin/env bash
# The quantization table (docs/quant.md, README): trains every spec of
# models/quant/ through `cargo nl` with the recipe of its f32 twin (the main
# job's: deep 4000 steps x 16 x 128 at lr 3e-3, weight decay 0.1, warmup 200,
# 2 threads; micro_memory 11000 steps x 16 x 32 at lr 1e-2, 1 thread), then
# measures it (`cargo nl bench`: train and serve tokens/s, one core) and
# exports its deployable checkpoint. Results in target/quant-table/.
#   bash tools/quant_table.sh [model ...]      # default: all of models/quant/
set -euo pipefail
cd "$(dirname "$0")/.."
out=target/quant-table
mkdir -p "$out"
cargo build -q --release -p cargo-nl
NL=target/release/cargo-nl
models=("$@")
if [ ${#models[@]} -eq 0 ]; then
    models=(micro_int8 micro_ternary micro_memory_int8 micro_memory_ternary micro_memory_ternary_2x deep_int8 deep_ternary deep_ternary_2x)
fi
for m in "${models[@]}"; do
    case $m in
        deep*) recipe=(--steps 4000 --batch 16 --lr 3e-3 --warmup 200 --weight-decay 0.1 --threads 2) ;;
        *) recipe=(--steps 11000 --batch 16 --lr 1e-2 --warmup 100 --weight-decay 0 --threads 1) ;;
    esac
    echo "== $m" >&2
    $NL train "models/quant/$m.toml" --corpus data/corpus.txt --out "$out/$m.safetensors" "${recipe[@]}" \
        --quiet --sample-len 0 --eval-every 1000 > "$out/$m.train.log"
    grep -E "^held-out \(|^trained" "$out/$m.train.log" >&2
done
