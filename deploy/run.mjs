// Runs the wasm32 build of nl-deploy under node: instantiates the module
// (no imports: no allocator, no WASI) and prints, through the C ABI, what
// the native reference binary prints (nl_deploy::print_run): `index score`
// lines (nl_scores), then for an f32 model the training demo's `train i
// loss` lines (nl_train_init / nl_train_step / nl_train_loss) and, for the
// default model, `head i loss` lines (nl_head_*), and `ram part bytes`
// lines (nl_train_ram); then `time` lines (medians under node: the
// per-token nl_step latency in us, each form's step in ms), which
// check.py does not compare.
// Usage: node run.mjs target/wasm32-unknown-unknown/release/nl_deploy.wasm
import { readFileSync } from "node:fs";

const path = process.argv[2];
const { instance } = await WebAssembly.instantiate(readFileSync(path), {});
const x = instance.exports;
const fail = (msg) => {
  console.error(msg);
  process.exit(1);
};
// The crate has no allocator: take fresh pages past everything it uses.
const ptr = x.memory.grow(2) * 65536;
const n = x.nl_scores(ptr, 65536 / 4);
if (n === 0) fail("nl_scores failed (invalid embedded checkpoint?)");
const lines = [];
const scores = new Float32Array(x.memory.buffer, ptr, n);
for (let i = 0; i < n; i++) lines.push(`${i} ${scores[i].toExponential(9)}`);
const median = (a) => [...a].sort((p, q) => p - q)[a.length >> 1];

// Codes (deploy/src/lib.rs).
const OK = 0, ERR_TOKEN = -1, ERR_LENGTH = -4, ERR_UNINIT = -5, ERR_UNSUPPORTED = -7;
const STEPS = 5; // train::DEMO_STEPS
const tokPtr = ptr + 65536;
const lossPtr = ptr;
const len = x.nl_train_tokens(tokPtr, 16384);
const tokens = new Uint32Array(x.memory.buffer, tokPtr, len);
const times = [];
// Per-token serving latency: nl_step over the demo stream.
if (len > 0) {
  x.nl_reset();
  const ts = [];
  for (let i = 0; i < len; i++) {
    const t0 = performance.now();
    if (x.nl_step(tokens[i], lossPtr) !== OK) fail("nl_step failed");
    ts.push((performance.now() - t0) * 1000);
  }
  times.push(`time step_us ${median(ts).toFixed(3)}`);
}
for (const [name, init, step, loss] of [
  ["train", x.nl_train_init, x.nl_train_step, x.nl_train_loss],
  ["head", x.nl_head_init, x.nl_head_step, x.nl_head_loss],
]) {
  if (len === 0) break;
  const before = step(tokPtr, len, lossPtr);
  if (before === ERR_UNSUPPORTED) continue;
  if (before !== ERR_UNINIT) fail(`${name}: a step before init gave ${before}`);
  if (init() !== OK) fail(`${name}: init failed`);
  if (step(tokPtr, len - 1, lossPtr) !== ERR_LENGTH || step(0, len, lossPtr) !== ERR_LENGTH)
    fail(`${name}: a bad length was not refused`);
  const saved = tokens[len >> 1];
  tokens[len >> 1] = 256;
  if (step(tokPtr, len, lossPtr) !== ERR_TOKEN) fail(`${name}: token 256 was not refused`);
  tokens[len >> 1] = saved;
  const ts = [];
  for (let i = 0; i <= STEPS; i++) {
    const t0 = performance.now();
    const rc = i < STEPS ? step(tokPtr, len, lossPtr) : loss(tokPtr, len, lossPtr);
    if (i < STEPS) ts.push(performance.now() - t0);
    if (rc !== OK) fail(`${name}: step ${i} gave ${rc}`);
    lines.push(`${name} ${i} ${new Float32Array(x.memory.buffer, lossPtr, 1)[0].toExponential(9)}`);
  }
  times.push(`time ${name}_step_ms ${median(ts).toFixed(3)}`);
}
for (let part = 0; part < 9; part++) lines.push(`ram ${part} ${x.nl_train_ram(part)}`);
console.log([...lines, ...times].join("\n"));
