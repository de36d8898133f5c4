// Runs the wasm32 build of nl-deploy under node: instantiates the module
// (no imports: no allocator, no WASI), calls the exported `nl_scores` and
// prints `index score` lines like the native reference binary.
// Usage: node run.mjs target/wasm32-unknown-unknown/release/nl_deploy.wasm
import { readFileSync } from "node:fs";

const path = process.argv[2];
const { instance } = await WebAssembly.instantiate(readFileSync(path), {});
const { memory, nl_scores } = instance.exports;
// The crate has no allocator: take a fresh page past everything it uses.
const ptr = memory.grow(1) * 65536;
const n = nl_scores(ptr, 65536 / 4);
if (n === 0) {
  console.error("nl_scores failed (invalid embedded checkpoint?)");
  process.exit(1);
}
const scores = new Float32Array(memory.buffer, ptr, n);
const lines = [];
for (let i = 0; i < n; i++) lines.push(`${i} ${scores[i].toExponential(9)}`);
console.log(lines.join("\n"));
