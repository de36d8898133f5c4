#!/usr/bin/env bash
# Deploy anywhere: builds nl-deploy (no_std, no allocator, weights embedded
# and used in place) with the seed's memory model
# (models/micro_memory.toml, the default), the deep language model
# (models/deep.toml, `--features deep`) and both quantized as int8 and
# ternary (models/quant/, `--features int8|ternary|deep_int8|deep_ternary`),
# each for
#   thumbv7em-none-eabihf, riscv32imac-unknown-none-elf   (staticlib; size table)
#   wasm32-unknown-unknown                                (cdylib, run by node)
#   aarch64-unknown-linux-gnu                             (run under qemu-aarch64)
# and checks that every build gives its native build's scores (1e-5 relative): the
# two bare-metal builds also run as bare Linux processes under qemu-arm and
# qemu-riscv32 (src/bin/bare.rs: raw system calls, no libc). Every run also
# trains the f32 models on the device (src/train.rs: 5 AdamW steps on one
# sequence, the full model and, for micro_memory, the head only) and checks
# the losses against the native build's (1e-4 relative); report.py prints
# the training RAM table and one JSON line per model, target and form.
# Called by .ci/run; runs as root on Debian (apt-get for missing tools).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export CARGO_TERM_COLOR=never
export CARGO_INCREMENTAL=0
export DEBIAN_FRONTEND=noninteractive

echo "== deploy: tools [${SECONDS}s]"
missing=()
command -v qemu-aarch64 >/dev/null && command -v qemu-arm >/dev/null && command -v qemu-riscv32 >/dev/null ||
    missing+=(qemu-user)
command -v aarch64-linux-gnu-gcc >/dev/null || missing+=(gcc-aarch64-linux-gnu)
[ -e /usr/aarch64-linux-gnu/lib/libc.so.6 ] || missing+=(libc6-dev-arm64-cross)
command -v llvm-size >/dev/null || missing+=(llvm)
command -v node >/dev/null || missing+=(nodejs)
if [ ${#missing[@]} -gt 0 ]; then
    echo "apt-get install ${missing[*]}"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
rustup target add thumbv7em-none-eabihf riscv32imac-unknown-none-elf wasm32-unknown-unknown aarch64-unknown-linux-gnu
node --version
# NL_TOOLS_ONLY=1: install the tools and stop (.ci/run, before it runs this
# script beside web/run.sh, so the two never run apt-get at once).
[ "${NL_TOOLS_ONLY:-}" != 1 ] || exit 0
HOST=$(rustc -vV | sed -n 's/^host: //p')
LLD="$(rustc --print sysroot)/lib/rustlib/$HOST/bin/rust-lld"

# The models deploy/ embeds: NAME (models/NAME.toml, weights/NAME.safetensors)
# and the cargo features that select it; the first is the crate's default.
MODELS=("micro_memory:" "deep:deep" "micro_memory_int8:int8" "micro_memory_ternary:ternary" "deep_int8:deep_int8" "deep_ternary:deep_ternary")

echo "== deploy: weights (init(seed 1); f32 checkpoints, or exported deployable checkpoints of the quantized models) [${SECONDS}s]"
for m in "${MODELS[@]}"; do
    cargo run --quiet --release --example make_deploy_weights -- --model "${m%%:*}"
done

cd deploy
OUT=target/deploy-run
mkdir -p "$OUT"
SIZES="$OUT/sizes.txt"
: >"$SIZES"
RECORDS="$OUT/records.txt"
: >"$RECORDS"

echo "== deploy: fmt [${SECONDS}s]"
cargo fmt -- --check

# Builds, measures and checks one model: NAME FEATURES (comma-separated, may
# be empty). The builds of each model overwrite the previous model's
# artifacts in target/, so each model is built, sized and run in turn.
deploy_model() {
    local name=$1 features=$2
    local feat=(--no-default-features)
    [ -z "$features" ] || feat+=(--features "$features")
    local weights="weights/$name.safetensors"
    local weight_bytes out="$OUT/$name"
    weight_bytes=$(stat -c %s "$weights")
    mkdir -p "$out"

    echo "== deploy [$name]: tests (training vs the generated backward, finite differences, AdamW by hand) [${SECONDS}s]"
    [ "$name" != micro_memory ] || cargo test --quiet --release "${feat[@]}"

    echo "== deploy [$name]: clippy [${SECONDS}s]"
    cargo clippy --quiet --release --all-targets "${feat[@]}" -- -D warnings
    for t in thumbv7em-none-eabihf riscv32imac-unknown-none-elf; do
        cargo clippy --quiet --release --lib --bin nl-deploy-bare --target "$t" "${feat[@]}" -- -D warnings
    done

    echo "== deploy [$name]: builds [${SECONDS}s]"
    for t in thumbv7em-none-eabihf riscv32imac-unknown-none-elf; do
        cargo rustc --quiet --release --lib --target "$t" "${feat[@]}" --crate-type staticlib
        # Link the archive (no linker script needed: only sizes are wanted) with
        # unused sections dropped, keeping what `nl_scores` reaches.
        "$LLD" -flavor gnu --gc-sections -e nl_scores -o "$out/$t.elf" "target/$t/release/libnl_deploy.a"
        # Firmwares that serve and train (f32 models): the whole model, and
        # the head only (micro_memory); their .bss is the training RAM.
        "$LLD" -flavor gnu --gc-sections -e nl_scores -u nl_step -u nl_reset -u nl_train_init -u nl_train_step \
            -u nl_train_loss -o "$out/$t.full.elf" "target/$t/release/libnl_deploy.a"
        "$LLD" -flavor gnu --gc-sections -e nl_scores -u nl_step -u nl_reset -u nl_head_init -u nl_head_step \
            -u nl_head_loss -o "$out/$t.head.elf" "target/$t/release/libnl_deploy.a"
        cargo build --quiet --release --bin nl-deploy-bare --target "$t" "${feat[@]}"
    done
    cargo rustc --quiet --release --lib --target wasm32-unknown-unknown "${feat[@]}" --crate-type cdylib
    cp target/wasm32-unknown-unknown/release/nl_deploy.wasm "$out/"
    CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
        cargo build --quiet --release --bin nl-deploy-scores --target aarch64-unknown-linux-gnu "${feat[@]}"
    cargo build --quiet --release --bin nl-deploy-scores "${feat[@]}"

    # Sizes: only the seed's memory model is held to code < 64 KiB.
    local limit=0
    [ "$name" != micro_memory ] || limit=65536
    for t in thumbv7em-none-eabihf riscv32imac-unknown-none-elf; do
        llvm-size -A "$out/$t.elf" | awk -v m="$name" -v t="$t" -v w="$weight_bytes" -v limit="$limit" '
            $1 == ".text" { text += $2 } $1 == ".rodata" { ro += $2 } $1 == ".bss" { bss += $2 }
            END {
                printf "%-22s %-30s %10d %12d %12d %10d\n", m, t, text, w, ro - w, bss
                if (limit > 0 && text >= limit) { print m " " t ": code is " limit " bytes or more" > "/dev/stderr"; exit 1 }
                if (ro < w) { print m " " t ": weights not in .rodata" > "/dev/stderr"; exit 1 }
            }' >>"$SIZES"
    done
    printf '%-22s %-30s %10s\n' "$name" "wasm32-unknown-unknown (file)" "$(stat -c %s "$out/nl_deploy.wasm")" >>"$SIZES"
    local forms=(full)
    case "$name" in *int8 | *ternary) forms=(serve) ;; micro_memory) forms=(full head) ;; esac
    for t in thumbv7em-none-eabihf riscv32imac-unknown-none-elf; do
        for f in "${forms[@]}"; do
            local elf="$out/$t.$f.elf"
            [ "$f" != serve ] || elf="$out/$t.elf"
            llvm-size -A "$elf" | awk -v m="$name" -v t="$t" -v f="$f" -v r="$out/${t%%-*}.txt" '
                $1 == ".text" || $1 == ".rodata" { flash += $2 } $1 == ".bss" { bss += $2 }
                END { print m, t, f, bss, flash, r }' >>"$RECORDS"
        done
    done
    for f in "${forms[@]}"; do
        echo "$name wasm32-unknown-unknown $f - $(stat -c %s "$out/nl_deploy.wasm") $out/wasm32.txt" >>"$RECORDS"
    done

    echo "== deploy [$name]: scores [${SECONDS}s]"
    target/release/nl-deploy-scores >"$out/native.txt"
    echo "native ($HOST): $(wc -l <"$out/native.txt") scores; first: $(head -1 "$out/native.txt")"
    node run.mjs "$out/nl_deploy.wasm" >"$out/wasm32.txt"
    python3 check.py "$out/native.txt" "$out/wasm32.txt" "$name, wasm32-unknown-unknown under node $(node --version)"
    qemu-aarch64 -L /usr/aarch64-linux-gnu target/aarch64-unknown-linux-gnu/release/nl-deploy-scores >"$out/aarch64.txt"
    python3 check.py "$out/native.txt" "$out/aarch64.txt" "$name, aarch64-unknown-linux-gnu under qemu-aarch64"
    # qemu-user cannot emulate M-profile cores (cortex-m4 asserts), so the
    # Thumb-2 + VFPv4-SP code runs on qemu-arm's default A-profile cpu; the
    # riscv32 build runs on a real rv32imac core model (SiFive E31, no FPU).
    # Only the default model trains under qemu (nl_deploy::TRAIN_ON_BARE:
    # the deep model's training takes minutes under riscv32 soft float).
    local bare=()
    [ "$name" = micro_memory ] || bare=(--no-train)
    qemu-arm target/thumbv7em-none-eabihf/release/nl-deploy-bare >"$out/thumbv7em.txt"
    python3 check.py "${bare[@]}" "$out/native.txt" "$out/thumbv7em.txt" "$name, thumbv7em-none-eabihf (bare-metal build) under qemu-arm"
    qemu-riscv32 -cpu sifive-e31 target/riscv32imac-unknown-none-elf/release/nl-deploy-bare >"$out/riscv32imac.txt"
    python3 check.py "${bare[@]}" "$out/native.txt" "$out/riscv32imac.txt" "$name, riscv32imac-unknown-none-elf (bare-metal build) under qemu-riscv32 -cpu sifive-e31"
}

for m in "${MODELS[@]}"; do
    deploy_model "${m%%:*}" "${m#*:}"
done

echo "== deploy: sizes (bytes; linked with --gc-sections from nl_scores) [${SECONDS}s]"
printf '%-22s %-30s %10s %12s %12s %10s\n' model target "code" "weights" "other ro" "RAM (bss)"
cat "$SIZES"
echo "== deploy: on-device training RAM (bytes; parts from size_of on each target, .bss of the firmware that serves and trains) and the report (JSON lines) [${SECONDS}s]"
python3 report.py "$RECORDS"
cd "$ROOT"
