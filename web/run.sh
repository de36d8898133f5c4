#!/usr/bin/env bash
# The web page (issue #15), end to end: installs what is missing (the
# wasm32 target, Debian's chromium and nodejs, the node packages from
# package-lock.json), checks fmt and clippy, builds the native reference
# binaries and both wasm variants (scalar and simd128), runs the node speed
# script and the browser test (headless Chromium driven by puppeteer-core;
# screenshot docs/img/web.png). Exits non-zero on any failure.
# Called by .ci/run. Takes (clean clone, idle 2 cores): see docs/web.md.
# Called by .ci/run; runs as root on Debian (apt-get for missing tools).
set -euo pipefail
cd "$(dirname "$0")"
export CARGO_TERM_COLOR=never
export CARGO_INCREMENTAL=0
export DEBIAN_FRONTEND=noninteractive
start=$(date +%s)

echo "== web: tools [${SECONDS}s]"
missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
fc-list 2>/dev/null | grep -qi dejavu || missing+=(fonts-dejavu-core)
if [ ${#missing[@]} -gt 0 ]; then
    echo "apt-get install ${missing[*]}"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO=sudo
    $SUDO apt-get update -qq
    $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
rustup target add wasm32-unknown-unknown
node --version
/usr/bin/chromium --version
# puppeteer-core never downloads a browser; the lockfile pins every package.
PUPPETEER_SKIP_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error
# NL_TOOLS_ONLY=1: install the tools and stop (.ci/run, before it runs this
# script beside deploy/run.sh, so the two never run apt-get at once).
[ "${NL_TOOLS_ONLY:-}" != 1 ] || exit 0

echo "== web: fmt, clippy [${SECONDS}s]"
cargo fmt -- --check
cargo clippy --quiet --release --all-targets -- -D warnings
cargo clippy --quiet --release --lib --target wasm32-unknown-unknown -- -D warnings

echo "== web: unit tests, builds [${SECONDS}s]"
cargo test --quiet --release
cargo build --quiet --release
bash build-wasm.sh

echo "== web: browser test [${SECONDS}s]"
rm -f out/browser-bench.json
node test.mjs

echo "== web: speed (node and the browser's numbers from the test, beside native) [${SECONDS}s]"
node bench.mjs
echo "== web: done in $(($(date +%s) - start)) s [${SECONDS}s]"
