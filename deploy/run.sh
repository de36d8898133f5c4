#!/usr/bin/env bash
# Deploy anywhere: builds nl-deploy (the seed's memory model, no_std, no
# allocator, weights embedded and used in place) for
#   thumbv7em-none-eabihf, riscv32imac-unknown-none-elf   (staticlib; size table)
#   wasm32-unknown-unknown                                (cdylib, run by node)
#   aarch64-unknown-linux-gnu                             (run under qemu-aarch64)
# and checks that every build gives the native scores (1e-5 relative): the
# two bare-metal builds also run as bare Linux processes under qemu-arm and
# qemu-riscv32 (src/bin/bare.rs: raw system calls, no libc).
# Called by .ci/run; runs as root on Debian (apt-get for missing tools).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export CARGO_TERM_COLOR=never
export CARGO_INCREMENTAL=0
export DEBIAN_FRONTEND=noninteractive

echo "== deploy: tools"
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
HOST=$(rustc -vV | sed -n 's/^host: //p')
LLD="$(rustc --print sysroot)/lib/rustlib/$HOST/bin/rust-lld"

echo "== deploy: weights (init(seed 1), f32, safetensors)"
cargo run --quiet --release --example make_deploy_weights
WEIGHTS=deploy/weights/micro_memory.safetensors
WEIGHT_BYTES=$(stat -c %s "$WEIGHTS")

cd deploy
OUT=target/deploy-run
mkdir -p "$OUT"

echo "== deploy: fmt, clippy"
cargo fmt -- --check
cargo clippy --quiet --release --all-targets -- -D warnings
for t in thumbv7em-none-eabihf riscv32imac-unknown-none-elf; do
    cargo clippy --quiet --release --lib --bin nl-deploy-bare --target "$t" -- -D warnings
done

echo "== deploy: builds"
for t in thumbv7em-none-eabihf riscv32imac-unknown-none-elf; do
    cargo rustc --quiet --release --lib --target "$t" --crate-type staticlib
    # Link the archive (no linker script needed: only sizes are wanted) with
    # unused sections dropped, keeping what `nl_scores` reaches.
    "$LLD" -flavor gnu --gc-sections -e nl_scores -o "target/$t/release/nl_deploy.elf" "target/$t/release/libnl_deploy.a"
    cargo build --quiet --release --bin nl-deploy-bare --target "$t"
done
cargo rustc --quiet --release --lib --target wasm32-unknown-unknown --crate-type cdylib
CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
    cargo build --quiet --release --bin nl-deploy-scores --target aarch64-unknown-linux-gnu
cargo build --quiet --release --bin nl-deploy-scores

echo "== deploy: sizes (bytes; linked with --gc-sections from nl_scores)"
printf '%-30s %10s %12s %12s %10s\n' target "code" "weights" "other ro" "RAM (bss)"
for t in thumbv7em-none-eabihf riscv32imac-unknown-none-elf; do
    llvm-size -A "target/$t/release/nl_deploy.elf" | awk -v t="$t" -v w="$WEIGHT_BYTES" '
        $1 == ".text" { text += $2 } $1 == ".rodata" { ro += $2 } $1 == ".bss" { bss += $2 }
        END {
            printf "%-30s %10d %12d %12d %10d\n", t, text, w, ro - w, bss
            if (text >= 65536) { print "code is 64 KiB or more" > "/dev/stderr"; exit 1 }
            if (ro < w) { print "weights not in .rodata" > "/dev/stderr"; exit 1 }
        }'
done
printf '%-30s %10s\n' "wasm32-unknown-unknown (file)" "$(stat -c %s target/wasm32-unknown-unknown/release/nl_deploy.wasm)"

echo "== deploy: scores"
target/release/nl-deploy-scores >"$OUT/native.txt"
echo "native ($HOST): $(wc -l <"$OUT/native.txt") scores; first: $(head -1 "$OUT/native.txt")"
node run.mjs target/wasm32-unknown-unknown/release/nl_deploy.wasm >"$OUT/wasm32.txt"
python3 check.py "$OUT/native.txt" "$OUT/wasm32.txt" "wasm32-unknown-unknown under node $(node --version)"
qemu-aarch64 -L /usr/aarch64-linux-gnu target/aarch64-unknown-linux-gnu/release/nl-deploy-scores >"$OUT/aarch64.txt"
python3 check.py "$OUT/native.txt" "$OUT/aarch64.txt" "aarch64-unknown-linux-gnu under qemu-aarch64"
# qemu-user cannot emulate M-profile cores (cortex-m4 asserts), so the
# Thumb-2 + VFPv4-SP code runs on qemu-arm's default A-profile cpu; the
# riscv32 build runs on a real rv32imac core model (SiFive E31, no FPU).
qemu-arm target/thumbv7em-none-eabihf/release/nl-deploy-bare >"$OUT/thumbv7em.txt"
python3 check.py "$OUT/native.txt" "$OUT/thumbv7em.txt" "thumbv7em-none-eabihf (bare-metal build) under qemu-arm"
qemu-riscv32 -cpu sifive-e31 target/riscv32imac-unknown-none-elf/release/nl-deploy-bare >"$OUT/riscv32imac.txt"
python3 check.py "$OUT/native.txt" "$OUT/riscv32imac.txt" "riscv32imac-unknown-none-elf (bare-metal build) under qemu-riscv32 -cpu sifive-e31"
cd "$ROOT"
