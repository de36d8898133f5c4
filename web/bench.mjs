// Speed of the page's work: streaming tokens/s (one byte at a time, with the
// top-5 predictions) and fine-tuning tokens/s (loss_and_grad_batch + AdamW)
// for the scalar and simd128 wasm builds under node, beside the native
// build (target/release/nl-web-bench, same code) and, if test.mjs has
// written out/browser-bench.json, the browser's numbers. Medians of REPS
// interleaved runs; prints a markdown table and writes out/bench.json.
//
// Usage (in web/, after build-wasm.sh and cargo build --release):
//   node bench.mjs [STREAM_TOKENS [TRAIN_STEPS [BATCH [REPS]]]]   # defaults 2048 4 4 3
import { readFileSync, writeFileSync, existsSync, mkdirSync } from "node:fs";
import { execFileSync } from "node:child_process";
import { performance } from "node:perf_hooks";
import { NlWasm, wasmFile, bench } from "./www/nl.js";

const [streamTokens, trainSteps, batch, reps] = [2048, 4, 4, 3].map((d, i) => {
  const a = process.argv[2 + i];
  const v = a === undefined ? d : Number(a);
  if (!Number.isInteger(v) || v <= 0) {
    console.error(`bench.mjs: argument ${i + 1} must be a positive integer, got '${a}'`);
    process.exit(2);
  }
  return v;
});
const CKPT = "www/model/deep_memory.safetensors";
const TEXT = "../data/corpus.txt";
const ckpt = readFileSync(CKPT);
const text = new Uint8Array(readFileSync(TEXT)).subarray(0, 65536);
mkdirSync("out", { recursive: true });
writeFileSync("out/bench-text.txt", text);

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

const engines = {};
for (const v of ["scalar", "simd128"]) {
  engines[v] = await NlWasm.create(readFileSync(`www/pkg/${wasmFile(v)}`));
  engines[v].load(ckpt);
}
const runs = { native: [], scalar: [], simd128: [] };
for (let r = 0; r < reps; r++) {
  const out = execFileSync("target/release/nl-web-bench", [CKPT, "out/bench-text.txt", String(streamTokens), String(trainSteps), String(batch)]);
  runs.native.push(JSON.parse(out.toString()));
  for (const v of ["scalar", "simd128"]) runs[v].push(bench(engines[v], text, streamTokens, trainSteps, batch, () => performance.now()));
}
const row = (xs) => ({ stream_tok_s: median(xs.map((x) => x.stream_tok_s)), train_tok_s: median(xs.map((x) => x.train_tok_s)) });
const result = {
  node: process.version,
  stream_tokens: streamTokens,
  train_tokens: trainSteps * batch * engines.scalar.seq,
  reps,
  native: row(runs.native),
  node_scalar: row(runs.scalar),
  node_simd128: row(runs.simd128),
};
if (existsSync("out/browser-bench.json")) {
  const b = JSON.parse(readFileSync("out/browser-bench.json", "utf8"));
  result.browser = b.browser;
  result.browser_scalar = b.scalar;
  result.browser_simd128 = b.simd128;
}
writeFileSync("out/bench.json", JSON.stringify(result, null, 2));

const f = (x) => (x === undefined ? "–" : Math.round(x).toLocaleString("en-US"));
const lines = [
  `| build | streaming (tok/s) | fine-tuning (tok/s) |`,
  `|---|---:|---:|`,
  `| native x86-64 (release, no target-cpu) | ${f(result.native.stream_tok_s)} | ${f(result.native.train_tok_s)} |`,
  `| wasm32 scalar, node ${process.version} | ${f(result.node_scalar.stream_tok_s)} | ${f(result.node_scalar.train_tok_s)} |`,
  `| wasm32 simd128, node ${process.version} | ${f(result.node_simd128.stream_tok_s)} | ${f(result.node_simd128.train_tok_s)} |`,
];
if (result.browser) {
  lines.push(`| wasm32 scalar, ${result.browser} | ${f(result.browser_scalar.stream_tok_s)} | ${f(result.browser_scalar.train_tok_s)} |`);
  lines.push(`| wasm32 simd128, ${result.browser} | ${f(result.browser_simd128.stream_tok_s)} | ${f(result.browser_simd128.train_tok_s)} |`);
}
console.log(`speed: ${streamTokens} streamed tokens, ${result.train_tokens} training tokens, median of ${reps}`);
console.log(lines.join("\n"));
