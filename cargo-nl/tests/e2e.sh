#!/usr/bin/env bash
# `cargo nl` end to end on a spec that is not in models/ (cargo-nl/tests/wren.toml):
# check, expand, train a few steps, stop, resume, eval, sample, serve, bench, report,
# then the Python wheel and its pytest suite against the Rust results.
# Run from the repository root (CI: .ci/run). Prints every command and its output.
set -euo pipefail
cd "$(dirname "$0")/../.."
export NL_CACHE_DIR="${NL_CACHE_DIR:-$PWD/target/nl-cache}"
W=target/e2e
rm -rf "$W"
mkdir -p "$W"
SPEC=cargo-nl/tests/wren.toml
CK="$W/wren.safetensors"
# The user's text: the first 200 kB of the corpus, and a short piece to serve.
head -c 200000 data/corpus.txt > "$W/text.txt"
tail -c 3000 data/corpus.txt > "$W/serve.txt"

cargo build -q -p cargo-nl
NL() {
    echo "\$ cargo nl $*" >&2
    target/debug/cargo-nl nl "$@"
}

NL check "$SPEC"
NL expand "$SPEC" > "$W/wren.rs"
grep -q "pub mod wren" "$W/wren.rs"
echo "expand: $(wc -l < "$W/wren.rs") lines of Rust" >&2

NL train "$SPEC" --corpus "$W/text.txt" --out "$CK" --steps 60 --stop-after 30 \
    --eval-every 10 --checkpoint-every 10 --threads 2 --quiet --sample-len 0
NL train "$SPEC" --corpus "$W/text.txt" --out "$CK" --resume "$CK" --threads 2 --quiet --sample-len 80
test -s "$W/wren.loss.png" && test -s "$W/wren.log.jsonl" && test -s "$W/wren.train.safetensors"
python3 - "$W/wren.log.jsonl" <<'PY'
import json, sys
lines = [json.loads(l) for l in open(sys.argv[1])]
steps = [l["step"] for l in lines if l["kind"] == "train"]
assert steps == sorted(steps) and steps[-1] == 60, steps
evals = [l for l in lines if l["kind"] == "eval"]
assert evals[0]["step"] == 0 and evals[-1]["step"] == 60, evals
assert evals[-1]["bits"] < evals[0]["bits"] - 1.0, evals
print(f"log: {len(lines)} lines, held-out {evals[0]['bits']:.2f} -> {evals[-1]['bits']:.2f} bits/byte", file=sys.stderr)
PY

NL eval "$SPEC" --checkpoint "$CK" --corpus "$W/text.txt"
NL eval "$SPEC" --checkpoint "$CK" --corpus "$W/serve.txt" --whole --json | tee "$W/eval.json"
NL sample "$SPEC" --checkpoint "$CK" --prompt "The memory " --len 120 --temperature 0.7
NL serve "$SPEC" --checkpoint "$CK" --input "$W/serve.txt" > "$W/serve.jsonl"
head -3 "$W/serve.jsonl"
test "$(wc -l < "$W/serve.jsonl")" -eq 2999
NL serve "$SPEC" --checkpoint "$CK" --chunk 1000 < "$W/serve.txt"
NL bench "$SPEC" --runs 3 --min-time 0.2
NL report "$SPEC" --tokens 500 --train-steps 5 --batch 4 | tee "$W/report.json"
python3 -c 'import json, sys; r = json.load(open(sys.argv[1])); s = r["step_us"]; assert r["target"] == "native" and 0 < s["p50"] <= s["p95"] <= s["p99"] <= s["max"] and r["tokens"] == 500, r' "$W/report.json"

# Bad input: one line on stderr, exit code 1.
if NL eval "$SPEC" --checkpoint "$W/text.txt" --corpus "$W/text.txt" 2> "$W/err.txt"; then
    echo "a text file was accepted as a checkpoint" >&2; exit 1
fi
cat "$W/err.txt" >&2
test "$(wc -l < "$W/err.txt")" -eq 1 && grep -q '^error: ' "$W/err.txt"

# Python: the wheel, installed, checked by pytest against the Rust results.
WHEEL=$(NL python "$SPEC" --out "$W/wheels")
echo "wheel: $WHEEL" >&2
python3 -m pip install --quiet --force-reinstall --no-deps "$WHEEL"
OTHER=()
if [ -f target/ci-checkpoint.safetensors ]; then OTHER=(NL_OTHER_CHECKPOINT=target/ci-checkpoint.safetensors); fi
env "${OTHER[@]}" NL_PY_MODULE=nl_wren NL_CHECKPOINT="$CK" NL_SERVE_TEXT="$W/serve.txt" \
    NL_SERVE_JSONL="$W/serve.jsonl" NL_EVAL_JSON="$W/eval.json" \
    python3 -m pytest -q -rs tests/python/test_model.py
echo "cargo nl end to end: ok" >&2
