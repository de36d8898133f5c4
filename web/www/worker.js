// The model's thread: every wasm call runs here, so the page never blocks.
// Work is cut into small pieces (CHUNK bytes of scoring, one fine-tuning
// step) with a return to the event loop between them, so a newer request
// (new text, toggle, stop) takes over at once: a request carries an id and
// older ids are dropped.
import { NlWasm, simdSupported, wasmFile, bench } from "./nl.js";

const CHUNK = 64;
const K = 5;
let nl = null;
let current = 0; // id of the request being served; older ones stop
let variant = "scalar";

const tick = () => new Promise((r) => setTimeout(r, 0));
const post = (m, transfer = []) => self.postMessage(m, transfer);

async function init(msg) {
  variant = msg.variant || (simdSupported() ? "simd128" : "scalar");
  try {
    const wasm = await fetch(`pkg/${wasmFile(variant)}`);
    if (!wasm.ok) throw new Error(`cannot fetch pkg/${wasmFile(variant)}: HTTP ${wasm.status}`);
    nl = await NlWasm.create(await wasm.arrayBuffer());
  } catch (e) {
    post({ type: "fatal", error: `the wasm module did not load: ${e.message}` });
    return;
  }
  try {
    const r = await fetch(msg.modelUrl);
    if (!r.ok) throw new Error(`cannot fetch ${msg.modelUrl}: HTTP ${r.status}`);
    const bytes = new Uint8Array(await r.arrayBuffer());
    nl.load(bytes);
    post({ type: "ready", variant, params: nl.paramCount, model: msg.modelUrl, bytes: bytes.length });
  } catch (e) {
    post({ type: "ready", variant, params: nl.paramCount, model: null, error: e.message });
  }
}

async function score(msg) {
  const id = msg.id;
  current = id;
  const bytes = msg.bytes;
  try {
    nl.setFrozen(msg.frozen);
    nl.reset();
    const t0 = performance.now();
    for (let off = 0; off < bytes.length; off += CHUNK) {
      const part = bytes.subarray(off, Math.min(bytes.length, off + CHUNK));
      const r = nl.feed(part, K);
      post({ type: "scores", id, offset: off, surprise: r.surprise, topB: r.topB, topP: r.topP, k: K },
        [r.surprise.buffer, r.topB.buffer, r.topP.buffer]);
      await tick();
      if (current !== id) return;
    }
    post({ type: "scored", id, n: bytes.length, ms: performance.now() - t0 });
  } catch (e) {
    post({ type: "error", id, error: e.message });
  }
}

async function train(msg) {
  const id = msg.id;
  current = id;
  try {
    nl.trainStart(msg.bytes, msg.lr, msg.batch, msg.seed || 1);
    const t0 = performance.now();
    let step = 0;
    while (performance.now() - t0 < msg.seconds * 1000) {
      const loss = nl.trainStep();
      step += 1;
      post({ type: "loss", id, step, loss, ms: performance.now() - t0 });
      await tick();
      if (current !== id) break;
    }
    const ms = performance.now() - t0;
    post({ type: "trained", id, steps: step, ms, tokens: step * msg.batch * nl.seq, stopped: current !== id });
  } catch (e) {
    post({ type: "error", id, error: e.message });
  }
}

self.onmessage = async (ev) => {
  const msg = ev.data;
  if (msg.type === "init") return init(msg);
  if (!nl) return post({ type: "error", id: msg.id, error: "the wasm module is not loaded" });
  switch (msg.type) {
    case "score":
      return score(msg);
    case "train":
      return train(msg);
    case "stop":
      current = msg.id;
      return post({ type: "stopped", id: msg.id });
    case "restore":
      current = msg.id;
      try {
        nl.restore();
        return post({ type: "restored", id: msg.id });
      } catch (e) {
        return post({ type: "error", id: msg.id, error: e.message });
      }
    case "load":
      current = msg.id;
      try {
        nl.load(msg.bytes);
        return post({ type: "loaded", id: msg.id, name: msg.name, bytes: msg.bytes.length });
      } catch (e) {
        return post({ type: "loadError", id: msg.id, name: msg.name, error: e.message });
      }
    case "bench":
      current = msg.id;
      try {
        const r = bench(nl, msg.text, msg.streamTokens, msg.trainSteps, msg.batch, () => performance.now());
        return post({ type: "bench", id: msg.id, variant, ...r });
      } catch (e) {
        return post({ type: "error", id: msg.id, error: e.message });
      }
  }
};
