// The browser test: serves www/ on 127.0.0.1 (an ephemeral port, nothing
// else is reached), drives the system Chromium headless with puppeteer-core
// and checks what a person would do on the page against the native
// reference (target/release/nl-web-scores: the same checkpoint through the
// same generated code, compiled for x86-64):
//   - typed text: every byte's surprise matches the native scores (1e-5);
//   - the inner-loop toggle: frozen scores differ and match the native
//     --frozen scores; a repeated phrase is less surprising the second time;
//   - non-ASCII text, a binary file, the empty text, a 200 KB paste (cut to
//     the page's cap, the page answering while it is scored), and wrong or
//     corrupted checkpoints (a clear message; the model in use unchanged);
//   - fine-tuning lowers the loss and the text's bits/byte;
// then measures the page's speed (simd128 and the scalar fallback), writes
// out/browser-bench.json and saves the screenshot docs/img/web.png.
// Prints "N passed, M failed"; exits 1 on any failure.
//
// Usage (in web/, after build-wasm.sh and cargo build --release): node test.mjs
import { createServer } from "node:http";
import { readFile, writeFile, mkdir, mkdtemp, rm } from "node:fs/promises";
import { execFileSync } from "node:child_process";
import { tmpdir } from "node:os";
import { join, extname, normalize } from "node:path";
import puppeteer from "puppeteer-core";

const ROOT = new URL("./www/", import.meta.url).pathname;
const CKPT = join(ROOT, "model/deep_memory.safetensors");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const SCREENSHOT = new URL("../docs/img/web.png", import.meta.url).pathname;
const MAX_BYTES = 20000; // the page's cap (www/app.js)
const TOL = 1e-5;

let passed = 0;
let failed = 0;
function check(ok, what, detail = "") {
  if (ok) passed++;
  else failed++;
  console.log(`${ok ? "ok  " : "FAIL"} ${what}${detail ? ": " + detail : ""}`);
  return ok;
}

// ---- a static server for www/ on loopback only
const TYPES = { ".html": "text/html", ".js": "text/javascript", ".css": "text/css", ".wasm": "application/wasm", ".safetensors": "application/octet-stream" };
const server = createServer(async (req, res) => {
  const path = normalize(decodeURIComponent(new URL(req.url, "http://x").pathname)).replace(/^\/+/, "");
  if (path.startsWith("..")) return res.writeHead(403).end();
  try {
    const body = await readFile(join(ROOT, path === "" ? "index.html" : path));
    res.writeHead(200, { "content-type": TYPES[extname(path)] || "application/octet-stream" }).end(body);
  } catch {
    res.writeHead(404).end("not found");
  }
});
await new Promise((r) => server.listen(0, "127.0.0.1", r));
const BASE = `http://127.0.0.1:${server.address().port}/`;

// ---- the native reference
const work = await mkdtemp(join(tmpdir(), "nl-web-test-"));
let nfile = 0;
async function native(bytes, frozen = false) {
  const f = join(work, `text${nfile++}.bin`);
  await writeFile(f, bytes);
  const args = [CKPT, f];
  if (frozen) args.push("--frozen");
  return JSON.parse(execFileSync("target/release/nl-web-scores", args, { maxBuffer: 1 << 26 }).toString());
}

/** Largest scaled difference between page and native scores (Infinity on a length or NaN mismatch). */
function compare(page, want) {
  if (page.length !== want.length) return { worst: Infinity, why: `${page.length} scores, native ${want.length}` };
  let worst = 0;
  for (let i = 0; i < want.length; i++) {
    const a = page[i], b = want[i];
    if (b === null) {
      if (a !== null) return { worst: Infinity, why: `byte ${i}: ${a}, native has no prediction` };
      continue;
    }
    if (a === null) return { worst: Infinity, why: `byte ${i}: no score, native ${b}` };
    worst = Math.max(worst, Math.abs(a - b) / Math.max(1, Math.abs(b)));
  }
  return { worst, why: "" };
}

function matches(page, want, what) {
  const { worst, why } = compare(page, want);
  return check(worst <= TOL, what, why || `${want.length} bytes, largest difference ${worst.toExponential(2)} (tolerance ${TOL})`);
}

const mean = (xs) => xs.reduce((a, b) => a + b, 0) / xs.length;

// ---- the browser
const userDir = await mkdtemp(join(tmpdir(), "nl-web-chromium-"));
const browser = await puppeteer.launch({
  executablePath: CHROMIUM,
  headless: true,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", `--user-data-dir=${userDir}`],
  defaultViewport: { width: 1280, height: 720, deviceScaleFactor: 1 },
});
const version = await browser.version();
console.log(`browser: ${version}; page: ${BASE}`);
const page = await browser.newPage();
const pageErrors = [];
page.on("pageerror", (e) => pageErrors.push(e.message));
page.on("console", (m) => m.type() === "error" && !/favicon/.test(m.location()?.url || "") && pageErrors.push(m.text()));
// Nothing but the local server is asked for (checked at the end).
const foreign = [];
page.on("request", (r) => r.url().startsWith(BASE) || r.url().startsWith("data:") || foreign.push(r.url()));

async function open(query = "") {
  await page.goto(BASE + "index.html" + query, { waitUntil: "load" });
  await page.waitForFunction(() => window.nl && window.nl.ready && window.nl.done, { timeout: 120000 });
}

/** Waits for the scoring of the current text to finish; returns its bytes and surprises (null: no prediction). */
async function scored(timeout = 120000) {
  await page.waitForFunction(() => window.nl.done, { timeout });
  return page.evaluate(() => ({
    bytes: Array.from(window.nl.bytes),
    surprise: Array.from(window.nl.surprise, (s) => (Number.isFinite(s) ? s : null)),
    error: window.nl.lastError,
    bpb: document.getElementById("bpb").textContent,
    note: document.getElementById("note").textContent,
  }));
}

async function typeText(text) {
  await page.$eval("#text", (t) => {
    t.value = "";
    t.dispatchEvent(new Event("input"));
  });
  await page.focus("#text");
  await page.keyboard.type(text);
  await page.waitForFunction((n) => window.nl.bytes.length === n, { timeout: 30000 }, Buffer.byteLength(text));
  return scored();
}

async function paste(text) {
  await page.$eval("#text", (t, v) => {
    t.value = v;
    t.dispatchEvent(new Event("input"));
  }, text);
  await page.waitForFunction(() => !window.nl.done, { timeout: 5000 }).catch(() => {});
}

async function setMemory(on) {
  const checked = await page.$eval("#memory", (c) => c.checked);
  if (checked !== on) await page.click("#memory");
}

async function upload(selector, bytes, name) {
  const f = join(work, name);
  await writeFile(f, bytes);
  const input = await page.$(selector);
  await input.uploadFile(f);
}

try {
  await open();
  check(pageErrors.length === 0, "the page loads without errors", pageErrors.join("; "));
  const variant = await page.evaluate(() => window.nl.variant);
  check(variant === "simd128", "simd128 is detected in Chromium", variant);

  // 1. Typed text, memory on: the surprises match the native scores.
  const phrase = "the memory keeps learning while the model serves";
  const filler = " Attention sees only the last one hundred and twenty-eight bytes, so this sentence pushes the first phrase out of its window before it comes back: ";
  const typed = `${phrase}.${filler}${phrase}.`;
  await setMemory(true);
  const on = await typeText(typed);
  check(on.surprise.filter((s) => s !== null).length === Buffer.byteLength(typed) - 1, "every typed byte but the first has a surprise");
  const nativeOn = await native(Buffer.from(typed));
  matches(on.surprise, nativeOn, "typed text, memory on: page = native");
  const first = on.surprise.slice(1, phrase.length);
  const secondStart = phrase.length + 1 + filler.length;
  const second = on.surprise.slice(secondStart + 1, secondStart + phrase.length);
  check(mean(second) < mean(first), "the repeated phrase is less surprising the second time (memory on)",
    `${mean(first).toFixed(3)} -> ${mean(second).toFixed(3)} bits/byte`);

  // 2. The toggle: frozen memory gives other scores, the native frozen ones.
  await setMemory(false);
  const off = await scored();
  const nativeOff = await native(Buffer.from(typed), true);
  matches(off.surprise, nativeOff, "typed text, memory off: page = native --frozen");
  const diff = Math.max(...off.surprise.map((s, i) => (s === null ? 0 : Math.abs(s - on.surprise[i]))));
  check(diff > 1e-3, "the toggle changes the scores", `largest change ${diff.toFixed(4)} bits`);
  const secondOff = off.surprise.slice(secondStart + 1, secondStart + phrase.length);
  console.log(`     repeated phrase, second time: ${mean(second).toFixed(3)} bits/byte with the memory on, ${mean(secondOff).toFixed(3)} frozen`);
  await setMemory(true);
  matches((await scored()).surprise, nativeOn, "toggled back on: the memory-on scores again");

  // 3. Non-ASCII text (multi-byte UTF-8), typed.
  const uni = "Grüße, 日本語 🙂 ∑x² ≤ ∞ — ça va?";
  const u = await typeText(uni);
  matches(u.surprise, await native(Buffer.from(uni)), "non-ASCII text: page = native");

  // 4. Binary bytes from a file (every byte value, invalid UTF-8 included).
  const bin = new Uint8Array(600);
  let x = 12345;
  for (let i = 0; i < bin.length; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    bin[i] = i < 256 ? i : x >>> 24;
  }
  await upload("#textfile", bin, "binary.bin");
  await page.waitForFunction((n) => window.nl.bytes.length === n, { timeout: 30000 }, bin.length);
  const b = await scored();
  check(b.bytes.every((v, i) => v === bin[i]), "the binary file's bytes are scored as they are");
  matches(b.surprise, await native(bin), "binary bytes: page = native");
  const raws = await page.$$eval(".bytes span.raw", (s) => s.length);
  check(raws > 0, "bytes that are not text are shown as escapes", `${raws} shown`);

  // 5. The empty text.
  await paste("");
  const e = await scored();
  check(e.bytes.length === 0 && e.error === "" && e.bpb === "–", "the empty text: nothing scored, no error", JSON.stringify({ err: e.error, bpb: e.bpb }));

  // 6. A very long paste: cut to the cap, scored in chunks, the page answers meanwhile.
  const corpus = await readFile(new URL("../data/corpus.txt", import.meta.url));
  const long = corpus.subarray(0, 200000).toString("latin1").replace(/[^\x20-\x7e\n]/g, " ");
  const t0 = Date.now();
  await paste(long);
  const lat = [];
  for (let i = 0; i < 5; i++) {
    const s = Date.now();
    const busy = await page.evaluate(() => new Promise((r) => requestAnimationFrame(() => r(!window.nl.done))));
    lat.push(Date.now() - s);
    if (!busy) break;
    await new Promise((r) => setTimeout(r, 200));
  }
  check(Math.max(...lat) < 500, "the page keeps answering while a long paste is scored", `frame latencies ${lat.join(", ")} ms`);
  const l = await scored(300000);
  const longMs = Date.now() - t0;
  check(l.bytes.length === MAX_BYTES && /first 20,000 of 200,000/.test(l.note), "a 200,000-byte paste is cut to the first 20,000 bytes", l.note);
  matches(l.surprise, await native(Buffer.from(long.slice(0, MAX_BYTES), "latin1")), `the long paste's 20,000 bytes (${(longMs / 1000).toFixed(1)} s): page = native`);

  // 7. Wrong and corrupted checkpoints: a clear message, the model unchanged.
  await typeText(typed);
  const good = await readFile(CKPT);
  const headerLen = Number(good.readBigUInt64LE(0));
  const header = good.subarray(8, 8 + headerLen).toString();
  const badSpec = Buffer.from(good);
  const sha = header.match(/"spec_sha256":"([0-9a-f]{64})"/);
  check(sha !== null, "the checkpoint header names its spec's sha256");
  const shaAt = 8 + header.indexOf(sha[1]);
  badSpec.write(sha[1][0] === "0" ? "1" : "0", shaAt, "latin1");
  const nanData = Buffer.from(good);
  nanData.writeFloatLE(NaN, 8 + headerLen + 4 * 100);
  const badJson = Buffer.from(good);
  badJson.write("#", 8 + 10, "latin1");
  const bads = [
    ["empty.safetensors", Buffer.alloc(0), /truncated/i],
    ["truncated.safetensors", good.subarray(0, 1000), /header|truncated/i],
    ["random.safetensors", Buffer.from(bin), /header|truncated/i],
    ["bad-json.safetensors", badJson, /json|header/i],
    ["other-spec.safetensors", badSpec, /spec/i],
    ["nan.safetensors", nanData, /nan|finite/i],
    ["short-data.safetensors", good.subarray(0, good.length - 4), /data|length/i],
  ];
  for (const [name, bytes, want] of bads) {
    await page.evaluate(() => (window.nl.lastError = ""));
    await upload("#modelfile", bytes, name);
    await page.waitForFunction(() => window.nl.lastError !== "", { timeout: 30000 });
    const msg = await page.$eval("#error", (el) => (el.hidden ? "" : el.textContent));
    check(want.test(msg) && msg.includes(name), `a bad checkpoint (${name}) shows a clear message`, msg);
  }
  await page.waitForFunction(() => window.nl.done, { timeout: 60000 });
  matches((await scored()).surprise, nativeOn, "after the bad checkpoints the loaded model is unchanged");
  // The good file loads again and clears the message.
  await upload("#modelfile", good, "deep_memory.safetensors");
  await page.waitForFunction(() => window.nl.lastError === "" || document.getElementById("error").hidden, { timeout: 30000 });
  await page.waitForFunction(() => window.nl.loadedModel === "deep_memory.safetensors" && window.nl.done, { timeout: 60000 });
  matches((await scored()).surprise, nativeOn, "the good checkpoint loads from a file: page = native");

  // 8. Fine-tuning in the browser lowers the loss.
  await page.select("#sample", "Shakespeare");
  const before = await scored();
  const bpbBefore = mean(before.surprise.filter((s) => s !== null));
  const trained = await page.evaluate(() => window.nl.trainDone);
  await page.click("#train");
  await page.waitForFunction((n) => window.nl.trainDone > n, { timeout: 120000 }, trained);
  const losses = await page.evaluate(() => window.nl.losses.slice());
  const after = await scored();
  const bpbAfter = mean(after.surprise.filter((s) => s !== null));
  const k = Math.max(1, Math.floor(losses.length / 4));
  check(losses.length >= 4 && mean(losses.slice(-k)) < mean(losses.slice(0, k)), "fine-tuning lowers the training loss",
    `${losses.length} steps, ${losses[0]?.toFixed(3)} -> ${losses[losses.length - 1]?.toFixed(3)} bits/byte`);
  check(bpbAfter < bpbBefore, "after fine-tuning the text is less surprising", `${bpbBefore.toFixed(3)} -> ${bpbAfter.toFixed(3)} bits/byte`);
  check(pageErrors.length === 0, "no errors on the page", pageErrors.join("; "));
  check(foreign.length === 0, "no request beyond the local server", foreign.join(", "));

  // 9. The screenshot: after fine-tuning on the sample, a new line typed
  // under it (the tuned text green, the new line not), the memory off then
  // on (both bits/byte), the predictions under the pointer, the loss curve.
  await page.focus("#text");
  await page.keyboard.down("Control");
  await page.keyboard.press("End");
  await page.keyboard.up("Control");
  const extra = "The rest is silence; the memory keeps learning.\n";
  const n0 = (await scored()).bytes.length;
  await page.keyboard.type(extra);
  await page.waitForFunction((n) => window.nl.bytes.length === n, { timeout: 30000 }, n0 + extra.length);
  await scored();
  await setMemory(false);
  await scored();
  await setMemory(true);
  await scored();
  const spans = await page.$$eval(".bytes span", (s) => s.length);
  await page.hover(`.bytes span:nth-child(${spans - 20})`);
  await mkdir(new URL("../docs/img/", import.meta.url).pathname, { recursive: true });
  await page.screenshot({ path: SCREENSHOT });
  console.log(`     screenshot: docs/img/web.png`);

  // 10. Speed in the browser, simd128 then the scalar fallback.
  const benchText = corpus.subarray(0, 65536).toString("latin1");
  const speeds = { browser: version };
  for (const v of ["simd128", "scalar"]) {
    if (v === "scalar") await open("?wasm=scalar");
    check((await page.evaluate(() => window.nl.variant)) === v, `the ${v} build runs in the page`);
    const runs = [];
    for (let r = 0; r < 3; r++) runs.push(await page.evaluate((t) => window.nlBench(t, 2048, 4, 4), benchText));
    const med = (key) => runs.map((r) => r[key]).sort((a, c) => a - c)[1];
    check(runs.every((r) => !r.error), `browser speed run (${v})`, runs.find((r) => r.error)?.error || "");
    speeds[v] = { stream_tok_s: med("stream_tok_s"), train_tok_s: med("train_tok_s") };
    console.log(`     ${v} in ${version}: ${Math.round(speeds[v].stream_tok_s)} streaming tok/s, ${Math.round(speeds[v].train_tok_s)} fine-tuning tok/s`);
  }
  await mkdir("out", { recursive: true });
  await writeFile("out/browser-bench.json", JSON.stringify(speeds, null, 2));
  // The scalar build gives the same scores.
  await typeText(typed);
  matches((await scored()).surprise, nativeOn, "scalar build: typed text = native");
} catch (err) {
  check(false, "the browser test ran to the end", err.stack || String(err));
} finally {
  await browser.close();
  server.close();
  await rm(work, { recursive: true, force: true });
  await rm(userDir, { recursive: true, force: true });
}
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
