// The nl-web wasm module's C ABI (src/abi.rs) as a small JS class, shared
// by the page's worker (worker.js) and the node speed script (bench.mjs).
// The module has no imports; its exported memory holds every buffer, taken
// with nl_alloc and given back with nl_free. Views of memory.buffer are made
// after each call (a call may grow the memory, which detaches old views).

/** Whether this engine validates a module using a simd128 instruction. */
export function simdSupported() {
  // A module with one function `() -> v128` whose body is
  // `i32.const 0; i8x16.splat; end` (written out by hand, 8-byte header +
  // type, function and code sections).
  const bytes = new Uint8Array([
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // "\0asm", version 1
    0x01, 0x05, 0x01, 0x60, 0x00, 0x01, 0x7b, // type section: [] -> [v128]
    0x03, 0x02, 0x01, 0x00, // function section: one function of type 0
    0x0a, 0x08, 0x01, 0x06, 0x00, 0x41, 0x00, 0xfd, 0x0f, 0x0b, // code: i32.const 0, i8x16.splat, end
  ]);
  try {
    return WebAssembly.validate(bytes);
  } catch {
    return false;
  }
}

/** The wasm file name of a variant: "simd128" or "scalar". */
export function wasmFile(variant) {
  return variant === "simd128" ? "nl_web_simd.wasm" : "nl_web.wasm";
}

const DECODER = new TextDecoder();

/** One instance of the module: one engine (model, stream, fine-tuning state). */
export class NlWasm {
  /** Instantiates the module from its bytes (an ArrayBuffer or typed array). */
  static async create(wasmBytes) {
    const { instance } = await WebAssembly.instantiate(wasmBytes, {});
    return new NlWasm(instance.exports);
  }

  constructor(exports) {
    this.x = exports;
    this.paramCount = exports.nl_param_count();
    this.seq = exports.nl_seq();
  }

  /** The last error's message. */
  error() {
    const ptr = this.x.nl_error_ptr();
    const len = this.x.nl_error_len();
    return DECODER.decode(new Uint8Array(this.x.memory.buffer, ptr, len).slice());
  }

  check(rc) {
    if (rc !== 0) throw new Error(this.error());
  }

  /** Copies `bytes` into a fresh buffer; returns [ptr, len] (ptr 0 for no bytes). */
  put(bytes) {
    if (bytes.length === 0) return [0, 0];
    const ptr = this.x.nl_alloc(bytes.length);
    if (ptr === 0) throw new Error(`out of memory for ${bytes.length} bytes`);
    new Uint8Array(this.x.memory.buffer, ptr, bytes.length).set(bytes);
    return [ptr, bytes.length];
  }

  free(ptr, len) {
    if (ptr !== 0) this.x.nl_free(ptr, len);
  }

  /** Loads a checkpoint (safetensors bytes); throws the loader's message on a bad file. */
  load(bytes) {
    const [p, n] = this.put(bytes);
    try {
      this.check(this.x.nl_load(p, n));
    } finally {
      this.free(p, n);
    }
  }

  reset() {
    this.check(this.x.nl_reset());
  }

  setFrozen(frozen) {
    this.check(this.x.nl_set_frozen(frozen ? 1 : 0));
  }

  /**
   * Feeds bytes (carrying on the stream); returns per byte its surprise in
   * bits (NaN for the first after a reset) and the k most likely next bytes
   * after it with their probabilities (row-major, k per byte).
   */
  feed(bytes, k = 5) {
    const n = bytes.length;
    if (n === 0) return { surprise: new Float32Array(0), topB: new Uint8Array(0), topP: new Float32Array(0) };
    const [tp] = this.put(bytes);
    const sp = this.x.nl_alloc(4 * n);
    const bp = k > 0 ? this.x.nl_alloc(n * k) : 0;
    const pp = k > 0 ? this.x.nl_alloc(4 * n * k) : 0;
    try {
      if (sp === 0 || (k > 0 && (bp === 0 || pp === 0))) throw new Error("out of memory");
      this.check(this.x.nl_feed(tp, n, sp, bp, pp, k));
      const buf = this.x.memory.buffer;
      return {
        surprise: new Float32Array(buf, sp, n).slice(),
        topB: k > 0 ? new Uint8Array(buf, bp, n * k).slice() : new Uint8Array(0),
        topP: k > 0 ? new Float32Array(buf, pp, n * k).slice() : new Float32Array(0),
      };
    } finally {
      this.free(tp, n);
      this.free(sp, 4 * n);
      this.free(bp, n * k);
      this.free(pp, 4 * n * k);
    }
  }

  /** Starts fine-tuning on `bytes` (AdamW at lr, `batch` windows of 129 bytes a step). */
  trainStart(bytes, lr, batch, seed = 1) {
    const [p, n] = this.put(bytes);
    try {
      this.check(this.x.nl_train_start(p, n, lr, batch, seed));
    } finally {
      this.free(p, n);
    }
  }

  /** One fine-tuning step; returns the batch's loss (bits per byte) before it. */
  trainStep() {
    const p = this.x.nl_alloc(4);
    try {
      this.check(this.x.nl_train_step(p));
      return new Float32Array(this.x.memory.buffer, p, 1)[0];
    } finally {
      this.free(p, 4);
    }
  }

  /** Back to the loaded checkpoint's parameters. */
  restore() {
    this.check(this.x.nl_restore());
  }
}

/**
 * Times streaming and fine-tuning on `text` (bytes): `streamTokens` bytes fed
 * one chunk at a time with the top-5 predictions (as the page does), then
 * `trainSteps` steps of `batch` windows. `now` is a millisecond clock.
 * Leaves the engine restored to the loaded checkpoint.
 */
export function bench(nl, text, streamTokens, trainSteps, batch, now) {
  const chunk = 256;
  const buf = new Uint8Array(streamTokens);
  for (let i = 0; i < streamTokens; i++) buf[i] = text[i % text.length];
  nl.setFrozen(false);
  nl.reset();
  const t0 = now();
  for (let i = 0; i < streamTokens; i += chunk) nl.feed(buf.subarray(i, Math.min(streamTokens, i + chunk)), 5);
  const streamMs = now() - t0;
  nl.trainStart(text, 1e-3, batch, 1);
  const t1 = now();
  for (let s = 0; s < trainSteps; s++) nl.trainStep();
  const trainMs = now() - t1;
  nl.restore();
  return {
    stream_tok_s: (streamTokens * 1000) / streamMs,
    train_tok_s: (trainSteps * batch * nl.seq * 1000) / trainMs,
  };
}
