// The page: sends the text's bytes to the model's worker and draws what
// comes back (each byte coloured by its surprise, the next-byte
// predictions, the running bits per byte, the fine-tuning loss). All the
// model's work is in worker.js; nothing here waits on it.
//
// window.nl exposes the page's state read-only for the browser test
// (test.mjs): the scored bytes, their surprises, whether scoring is done.

const MAX_BYTES = 20000; // longer texts are cut (the first MAX_BYTES bytes are scored)
const TRAIN_SECONDS = 5;
const TRAIN_LR = 2e-3;
const TRAIN_BATCH = 4;

const SAMPLES = {
  "A repeated phrase (watch the memory)":
    "The memory keeps learning while the model serves. It reads every byte, and after each one its inner loop " +
    "takes a small gradient step on what it just saw, so by the time a phrase comes round again the model " +
    "has already stored it. Attention only sees the last 128 bytes; the memory sees everything.\n\n" +
    "Here is the phrase again, far beyond the attention window: The memory keeps learning while the model serves.\n",
  "Shakespeare":
    "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n" +
    "The slings and arrows of outrageous fortune,\nOr to take arms against a sea of troubles\n" +
    "And by opposing end them. To die: to sleep;\nNo more; and by a sleep to say we end\n" +
    "The heart-ache and the thousand natural shocks\nThat flesh is heir to.\n",
  "Code": "fn main() {\n    let mut total = 0;\n    for i in 0..10 {\n        total += i * i;\n    }\n    println!(\"{total}\");\n}\n",
  "Non-ASCII": "Grüße aus Köln! Ça va? 日本語のテキスト, emoji 🙂 and math: ∑ x² ≤ ∞.\n",
};

const $ = (id) => document.getElementById(id);
const enc = new TextEncoder();

const state = {
  ready: false,
  variant: null,
  id: 0, // id of the latest request sent
  scoreId: 0, // id of the scoring whose results are shown
  bytes: new Uint8Array(0), // the bytes being scored
  total: 0, // the text's length before the cap
  surprise: new Float32Array(0),
  topB: new Uint8Array(0),
  topP: new Float32Array(0),
  k: 5,
  scored: 0,
  done: false,
  units: [],
  rendered: 0,
  losses: [],
  training: false,
  trainDone: 0,
  fileBytes: null, // bytes of an opened file (shown in the textarea as decoded text)
  bpb: { on: null, off: null }, // last bits/byte with the memory on / off, for this text
  lastError: "",
  loadedModel: "",
};
window.nl = state;

const worker = new Worker("worker.js", { type: "module" });
worker.onerror = (e) => showError(`the model's worker failed: ${e.message || "unknown error"}`);

function showError(msg) {
  state.lastError = msg;
  const el = $("error");
  el.textContent = msg;
  el.hidden = !msg;
}

function send(msg, transfer) {
  msg.id = ++state.id;
  worker.postMessage(msg, transfer || []);
  return msg.id;
}

// ---- text to display units (one per UTF-8 character, or per raw byte)

function utf8Len(b, i) {
  const c = b[i];
  let n, min;
  if (c < 0x80) return 1;
  if (c >= 0xc2 && c <= 0xdf) [n, min] = [2, 0x80];
  else if (c >= 0xe0 && c <= 0xef) [n, min] = [3, 0x800];
  else if (c >= 0xf0 && c <= 0xf4) [n, min] = [4, 0x10000];
  else return 0;
  if (i + n > b.length) return 0;
  let cp = c & (0xff >> (n + 1));
  for (let j = 1; j < n; j++) {
    if ((b[i + j] & 0xc0) !== 0x80) return 0;
    cp = (cp << 6) | (b[i + j] & 0x3f);
  }
  if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
  return n;
}

function hex(c) {
  return "\\x" + c.toString(16).padStart(2, "0");
}

function units(b) {
  const out = [];
  for (let i = 0; i < b.length; ) {
    const n = utf8Len(b, i);
    const c = b[i];
    if (n === 0) out.push({ start: i, len: 1, text: hex(c), raw: true });
    else if (n === 1 && (c === 10 || c === 9)) out.push({ start: i, len: 1, text: c === 10 ? "↵\n" : "\t", raw: false });
    else if (n === 1 && (c < 32 || c === 127)) out.push({ start: i, len: 1, text: hex(c), raw: true });
    else out.push({ start: i, len: n, text: new TextDecoder().decode(b.subarray(i, i + n)), raw: false });
    i += n === 0 ? 1 : n;
  }
  return out;
}

function showByte(c) {
  if (c === 32) return "␣";
  if (c === 10) return "↵";
  if (c === 9) return "⇥";
  if (c > 32 && c < 127) return String.fromCharCode(c);
  return hex(c);
}

function colour(bits) {
  if (!Number.isFinite(bits)) return "transparent";
  const t = Math.max(0, Math.min(1, bits / 8));
  return `hsl(${120 - 120 * t}, ${70 + 15 * t}%, ${88 - 26 * t}%)`;
}

// ---- scoring

function currentBytes() {
  if (state.fileBytes) return state.fileBytes;
  return enc.encode($("text").value);
}

function rescore() {
  if (!state.ready) return;
  const all = currentBytes();
  state.total = all.length;
  const bytes = all.slice(0, MAX_BYTES);
  state.bytes = bytes;
  state.surprise = new Float32Array(bytes.length);
  state.topB = new Uint8Array(bytes.length * state.k);
  state.topP = new Float32Array(bytes.length * state.k);
  state.scored = 0;
  state.done = false;
  state.units = units(bytes);
  state.rendered = 0;
  $("bytes").textContent = "";
  $("note").textContent =
    all.length > MAX_BYTES
      ? `Long text: the first ${MAX_BYTES.toLocaleString()} of ${all.length.toLocaleString()} bytes are scored.`
      : state.fileBytes
        ? `Scoring the opened file's ${all.length.toLocaleString()} bytes (edit the text to score the text instead).`
        : "";
  updateStats();
  showPreds(-1);
  if (bytes.length === 0) {
    state.done = true;
    state.scoreId = send({ type: "score", bytes: new Uint8Array(0), frozen: !$("memory").checked });
    return;
  }
  state.scoreId = send({ type: "score", bytes: bytes.slice(), frozen: !$("memory").checked });
}

function renderUpTo(n) {
  const frag = document.createDocumentFragment();
  const u = state.units;
  while (state.rendered < u.length && u[state.rendered].start + u[state.rendered].len <= n) {
    const x = u[state.rendered];
    let bits = 0;
    const per = [];
    for (let j = x.start; j < x.start + x.len; j++) {
      const s = state.surprise[j];
      if (Number.isFinite(s)) bits += s;
      per.push(Number.isFinite(s) ? s.toFixed(2) : "–");
    }
    const sp = document.createElement("span");
    sp.textContent = x.text;
    if (x.raw) sp.className = "raw";
    sp.dataset.i = x.start;
    sp.style.background = colour(x.start === 0 && x.len === 1 ? NaN : bits);
    sp.title = `${per.join(" + ")} bits`;
    frag.appendChild(sp);
    state.rendered++;
  }
  $("bytes").appendChild(frag);
}

function meanBits() {
  let sum = 0;
  let n = 0;
  for (let i = 0; i < state.scored; i++) {
    const s = state.surprise[i];
    if (Number.isFinite(s)) {
      sum += s;
      n++;
    }
  }
  return n ? sum / n : NaN;
}

function updateStats() {
  const m = meanBits();
  $("bpb").textContent = Number.isFinite(m) ? m.toFixed(3) : "–";
  $("nbytes").textContent = state.scored.toLocaleString();
  const on = state.bpb.on, off = state.bpb.off;
  const parts = [];
  if (on !== null) parts.push(`memory on: ${on.toFixed(3)}`);
  if (off !== null) parts.push(`memory off: ${off.toFixed(3)}`);
  $("compare").textContent = parts.join(" · ");
}

function showPreds(i) {
  // Predictions made after byte i (for byte i + 1); -1: the last byte scored.
  const at = i < 0 ? state.scored - 1 : i;
  const ol = $("preds");
  ol.textContent = "";
  if (at < 0 || at >= state.scored) {
    $("predsTitle").textContent = "next-byte predictions (type something)";
    return;
  }
  const ctx = [];
  for (let j = Math.max(0, at - 11); j <= at; j++) ctx.push(showByte(state.bytes[j]));
  $("predsTitle").textContent = i < 0 ? `what the model expects next, after “…${ctx.join("")}”:` : `after “…${ctx.join("")}” the model expected:`;
  for (let j = 0; j < state.k; j++) {
    const li = document.createElement("li");
    const b = document.createElement("b");
    b.textContent = showByte(state.topB[at * state.k + j]);
    li.append(b, `${(100 * state.topP[at * state.k + j]).toFixed(1)}%`);
    ol.appendChild(li);
  }
}

// ---- the loss plot

function drawPlot() {
  const c = $("plot");
  const g = c.getContext("2d");
  const W = c.width, H = c.height, L = 36, B = 20;
  g.clearRect(0, 0, W, H);
  g.font = "11px sans-serif";
  g.fillStyle = "#6b7385";
  const xs = state.losses;
  if (xs.length === 0) {
    g.fillText("press “Fine-tune” to train on your text", L, H / 2);
    return;
  }
  const lo = Math.min(...xs) * 0.95, hi = Math.max(...xs) * 1.02;
  const n = Math.max(xs.length - 1, 1);
  const X = (i) => L + ((W - L - 8) * i) / n;
  const Y = (v) => 6 + ((H - B - 6) * (hi - v)) / (hi - lo || 1);
  g.strokeStyle = "#e3e5ee";
  g.beginPath();
  g.moveTo(L, 6);
  g.lineTo(L, H - B);
  g.lineTo(W - 8, H - B);
  g.stroke();
  g.fillText(hi.toFixed(2), 2, 14);
  g.fillText(lo.toFixed(2), 2, H - B);
  g.fillText("step " + xs.length, W - 60, H - 5);
  g.strokeStyle = "#3456d1";
  g.lineWidth = 2;
  g.beginPath();
  xs.forEach((v, i) => (i ? g.lineTo(X(i), Y(v)) : g.moveTo(X(i), Y(v))));
  g.stroke();
}

// ---- messages from the worker

// The browser's speed measurement (test.mjs calls it; the same work as bench.mjs in node).
let benchWaiter = null;
window.nlBench = (text, streamTokens, trainSteps, batch) =>
  new Promise((resolve) => {
    benchWaiter = resolve;
    send({ type: "bench", text: enc.encode(text), streamTokens, trainSteps, batch });
  });

worker.onmessage = (ev) => {
  const m = ev.data;
  switch (m.type) {
    case "fatal":
      $("status").textContent = "the model could not start";
      showError(m.error);
      break;
    case "ready":
      state.ready = true;
      state.variant = m.variant;
      $("status").textContent = `wasm32 (${m.variant}) · ${m.params.toLocaleString()} parameters`;
      if (m.error) showError(`The model file ${m.model || ""} could not be loaded: ${m.error}`);
      else state.loadedModel = m.model;
      rescore();
      break;
    case "scores":
      if (m.id !== state.scoreId) break;
      state.surprise.set(m.surprise, m.offset);
      state.topB.set(m.topB, m.offset * m.k);
      state.topP.set(m.topP, m.offset * m.k);
      state.scored = m.offset + m.surprise.length;
      renderUpTo(state.scored);
      updateStats();
      showPreds(-1);
      break;
    case "scored":
      if (m.id !== state.scoreId) break;
      state.done = true;
      if (m.n > 0) {
        const key = $("memory").checked ? "on" : "off";
        state.bpb[key] = meanBits();
        $("speed").textContent = `${Math.round((1000 * m.n) / m.ms).toLocaleString()} bytes/s`;
      }
      updateStats();
      break;
    case "loss":
      state.losses.push(m.loss);
      $("trainInfo").textContent = `step ${m.step}: ${m.loss.toFixed(3)} bits/byte (${(m.ms / 1000).toFixed(1)} s)`;
      drawPlot();
      break;
    case "trained":
      state.training = false;
      state.trainDone++;
      $("train").textContent = `Fine-tune ${TRAIN_SECONDS} s on this text`;
      $("trainInfo").textContent +=
        ` · ${m.steps} steps, ${Math.round((1000 * m.tokens) / m.ms).toLocaleString()} training tokens/s`;
      state.bpb = { on: null, off: null };
      rescore();
      break;
    case "loaded":
      showError("");
      state.loadedModel = m.name;
      $("status").textContent = `wasm32 (${state.variant}) · checkpoint ${m.name}`;
      state.losses = [];
      drawPlot();
      state.bpb = { on: null, off: null };
      rescore();
      break;
    case "loadError":
      showError(`Could not load “${m.name}”: ${m.error}. The previous model is still in use.`);
      rescore();
      break;
    case "restored":
      state.losses = [];
      drawPlot();
      $("trainInfo").textContent = "";
      state.bpb = { on: null, off: null };
      rescore();
      break;
    case "bench":
      if (benchWaiter) benchWaiter(m);
      benchWaiter = null;
      break;
    case "error":
      if (benchWaiter) {
        benchWaiter({ error: m.error });
        benchWaiter = null;
      }
      state.training = false;
      $("train").textContent = `Fine-tune ${TRAIN_SECONDS} s on this text`;
      showError(m.error);
      state.done = true;
      break;
  }
};

// ---- controls

let timer = 0;
$("text").addEventListener("input", () => {
  state.fileBytes = null;
  $("textfile").value = "";
  state.bpb = { on: null, off: null };
  clearTimeout(timer);
  timer = setTimeout(rescore, 120);
});
$("memory").addEventListener("change", rescore);
const sel = $("sample");
for (const name of Object.keys(SAMPLES)) sel.add(new Option(name, name));
sel.addEventListener("change", () => {
  state.fileBytes = null;
  $("textfile").value = "";
  state.bpb = { on: null, off: null };
  $("text").value = SAMPLES[sel.value];
  rescore();
});
$("text").value = SAMPLES[sel.value];

$("textfile").addEventListener("change", async (ev) => {
  const f = ev.target.files[0];
  if (!f) return;
  const b = new Uint8Array(await f.arrayBuffer());
  state.fileBytes = b;
  state.bpb = { on: null, off: null };
  $("text").value = new TextDecoder().decode(b.subarray(0, MAX_BYTES));
  rescore();
});

$("modelfile").addEventListener("change", async (ev) => {
  const f = ev.target.files[0];
  if (!f) return;
  const b = new Uint8Array(await f.arrayBuffer());
  send({ type: "load", bytes: b, name: f.name }, [b.buffer]);
});

$("train").addEventListener("click", () => {
  if (state.training) {
    send({ type: "stop" });
    return;
  }
  const bytes = currentBytes().slice(0, MAX_BYTES);
  if (bytes.length < 2) {
    showError("Type at least 2 bytes of text to fine-tune on.");
    return;
  }
  showError("");
  state.training = true;
  state.losses = [];
  drawPlot();
  $("train").textContent = "Stop";
  send({ type: "train", bytes, seconds: TRAIN_SECONDS, lr: TRAIN_LR, batch: TRAIN_BATCH });
});

$("restore").addEventListener("click", () => send({ type: "restore" }));

$("bytes").addEventListener("mouseover", (ev) => {
  const i = ev.target.dataset && ev.target.dataset.i;
  if (i === undefined) return;
  document.querySelectorAll(".bytes .hover").forEach((e) => e.classList.remove("hover"));
  ev.target.classList.add("hover");
  showPreds(Number(i) - 1);
});
$("bytes").addEventListener("mouseleave", () => showPreds(-1));

drawPlot();
const params = new URLSearchParams(location.search);
send({ type: "init", modelUrl: params.get("model") || "model/deep_memory.safetensors", variant: params.get("wasm") || undefined });
