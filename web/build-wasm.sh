#!/usr/bin/env bash
# Builds the two wasm variants of nl-web into www/pkg/: nl_web.wasm (scalar,
# the fallback) and nl_web_simd.wasm (`-C target-feature=+simd128`), each in
# its own target dir so the flags do not rebuild each other.
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p www/pkg
cargo rustc --quiet --release --lib --target wasm32-unknown-unknown --crate-type cdylib
cp target/wasm32-unknown-unknown/release/nl_web.wasm www/pkg/nl_web.wasm
RUSTFLAGS="-C target-feature=+simd128" cargo rustc --quiet --release --lib --target wasm32-unknown-unknown \
    --target-dir target/simd128 --crate-type cdylib
cp target/simd128/wasm32-unknown-unknown/release/nl_web.wasm www/pkg/nl_web_simd.wasm
ls -l www/pkg/*.wasm
