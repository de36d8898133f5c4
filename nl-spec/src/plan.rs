//! The plan: what the generator, the runtime tools and the docs read.
//!
//! # Tensors
//!
//! In struct and checkpoint order: `embed` `[V, d]`; then per block `b`
//! (names prefixed `blocks.{b}.`): `norm_a.g` (and `norm_a.beta` for
//! `layer`) `[d]`, `attn.wq`, `attn.wk`, `attn.wv`, `attn.wo` `[d, d]`,
//! `attn.pos_bias` `[heads, window]` (positions `bias`), per memory level
//! `l`: `mem.{l}.wk`, `mem.{l}.wv`, `mem.{l}.wq` `[d, d]`, `mem.{l}.w_alpha`
//! `[2d]`, `mem.{l}.b_alpha` `[1]`, `mem.{l}.w_theta` `[2d]`,
//! `mem.{l}.b_theta` `[1]`, and for `titans` `mem.{l}.w_eta` `[2d]`,
//! `mem.{l}.b_eta` `[1]`; with an MLP `norm_m.g` (`.beta`), `mlp.w_up`
//! `[hidden, d]`, `mlp.w_gate` `[hidden, d]` (`swiglu`), `mlp.w_down`
//! `[d, hidden]`; then `norm_f.g` (`.beta`) `[d]` and `unembed` `[V, d]`
//! (absent with `tie_embeddings`). Weights are `[out, in]`, row-major.
//!
//! # Initialisation
//!
//! Deterministic from a seed: tensor `i` draws from its own SplitMix64-seeded
//! xoshiro256++ stream (seed mixed with `i`), so adding a tensor never
//! changes another's values. `embed` ~ N(0, 1) (with `tie_embeddings`,
//! U(-1/sqrt(d), 1/sqrt(d)) like the output layer it also is); every `[out, in]` weight
//! ~ U(-1/sqrt(in), 1/sqrt(in)); gate weights are 0; gate biases are the
//! spec's `b_alpha`, `b_theta`, `b_eta`.
//!
//! # Footprint
//!
//! [`Footprint`] is the size in bytes of the generated `Params`,
//! `Workspace` and `Stream` for `f32`, computed field by field with the
//! `#[repr(C)]` layout rules (the tests check it against `size_of` of the
//! generated structs, exactly). Per block the workspace keeps the branch
//! input `u`, the attention's `q`, `k`, `v`, probabilities (`T h W`) and
//! output, the MLP's `mid`, `w`, `up`, `gate_pre`, `act`, the norms'
//! statistics, the packed transposed weights, and per memory level its
//! trace (`7 T d + 6 T` plus the history `2 T d^2`: `M` and `S` after each
//! fire) and start and end states (`4 d^2` each); the residual stream
//! `(layers + 1) T d`, logits and their gradient (`2 T V`) and one backward
//! scratch shared by the blocks come once (with, when a level has a period
//! above 1, the chunk-wise memory path's scratch, `5 d^2 + 2 T d + 2 T`). `Stream` holds per block the
//! attention ring (`2 W d`) and the levels' states, and one token's vectors.
//! The memory history dominates as soon as `d_model` is more than a few
//! times `vocab / seq_len`: a spec whose workspace exceeds its
//! `workspace_limit_mib` (default 1024) is rejected.
//!
//! # FLOPs per token
//!
//! A multiply-add counts 2. Counted: every matrix product and dot product;
//! not counted: softmax, exponentials, norms and other elementwise work.
//! With `avg_w = sum_{t=1..T} min(t, W) / T` (the mean attention span over a
//! training sequence):
//!
//! - per block, attention: `4 * 2 d^2` (projections q, k, v, o) `+ 2 * 2 d avg_w`
//!   (scores and weighted sum over all heads);
//! - per block, MLP: `2 * 2 d hidden` (`3 * 2 d hidden` for `swiglu`);
//! - unembedding: `2 d V`;
//! - per block and memory level: `3 * 2 d^2` (projections) `+ 2 * 2 * 2d * gates`
//!   (gate dot products, `gates` = 2, or 3 for titans) `+ 2 d^2` (read
//!   `M q`) `+ 2 d^2` (accumulate `theta (Mk - v) k^T` into G) `+ 2 d^2`
//!   (`M k`; not for hebbian) `[+ 2 d^2` (titans: accumulate `theta v k^T`
//!   into W)`] + (2 d^2 [+ 2 d^2 titans]) / p` (the fire);
//! - forward + backward = 3 x forward (the backward of a product costs two
//!   products);
//! - a streaming step is the forward with `avg_w = W` (a full window).

use crate::spec::{Activation, Composition, MlpSpec, Norm, Positions, Rule, Spec};

/// How a tensor is initialised (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    /// Standard normal entries.
    Normal,
    /// Uniform in `[-bound, bound]`.
    Uniform {
        /// Half-width.
        bound: f64,
    },
    /// Every entry equal to the value.
    Const(f64),
}

/// One parameter tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorPlan {
    /// Checkpoint name, e.g. `mem.0.wk`.
    pub name: String,
    /// Field name in the generated `Params` struct, e.g. `mem0_wk`.
    pub field: String,
    /// Shape, outermost first.
    pub shape: Vec<usize>,
    /// Offset in elements in the flat parameter vector.
    pub offset: usize,
    /// Number of elements.
    pub len: usize,
    /// Initialisation.
    pub init: Init,
    /// The block it belongs to (`None` for `embed`, `norm_f`, `unembed`);
    /// `field` is then a field of the generated `Block` struct.
    pub block: Option<usize>,
    /// Index of its initialisation stream (see [`Plan::new`]'s docs and the
    /// module docs, "Initialisation").
    pub stream: u64,
    /// Whether the forward pass reads it quantized (`[quant] weights`
    /// other than `f32`; only the `[out, in]` matrices that multiply an
    /// activation: attention, memory projections, MLP and an untied
    /// `unembed`).
    pub quantized: bool,
}

/// The memory branch of the plan.
#[derive(Clone, Debug, PartialEq)]
pub struct MemoryPlan {
    /// Update rule.
    pub rule: Rule,
    /// Whether keys and queries are normalised.
    pub normalize_keys: bool,
    /// Period of each level.
    pub periods: Vec<usize>,
}

/// Bytes of the generated structs in `f32` (formulas in the module docs,
/// "Footprint"): what a model costs in RAM before it is compiled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Footprint {
    /// `Params` (also the gradient buffer, and each of AdamW's two moments).
    pub params: usize,
    /// `Workspace`: everything one training sequence keeps for its backward.
    pub workspace: usize,
    /// The part of `workspace` that is the memory levels' history (`M` and
    /// `S` after every fire: `2 * levels * seq_len * d_model^2` values).
    pub memory_history: usize,
    /// `Stream`: the serving state (attention ring, memory levels).
    pub stream: usize,
}

/// FLOP counts per token (formulas in the module docs).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Flops {
    /// Forward, per token of a training sequence.
    pub forward: u64,
    /// Forward + backward, per token of a training sequence.
    pub train: u64,
    /// One streaming step with a full window.
    pub step: u64,
}

/// Everything the generator needs, with every size a constant.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Module name.
    pub name: String,
    /// `d_model`.
    pub d: usize,
    /// `heads`.
    pub heads: usize,
    /// `d / heads`.
    pub head_dim: usize,
    /// `vocab`.
    pub vocab: usize,
    /// `seq_len`.
    pub seq_len: usize,
    /// `window`.
    pub window: usize,
    /// Composition of the memory and attention branches.
    pub composition: Composition,
    /// Memory branch of every block, if any.
    pub memory: Option<MemoryPlan>,
    /// Number of blocks.
    pub layers: usize,
    /// Whether each branch adds to a residual stream.
    pub residual: bool,
    /// Pre-norms and final norm.
    pub norm: Norm,
    /// Position scheme of attention.
    pub positions: Positions,
    /// The MLP of every block, if any.
    pub mlp: Option<MlpSpec>,
    /// Whether `unembed` is `embed`.
    pub tie_embeddings: bool,
    /// The `[quant]` table (which tensors: [`TensorPlan::quantized`]).
    pub quant: crate::spec::QuantSpec,
    /// Every tensor in struct order.
    pub tensors: Vec<TensorPlan>,
    /// Total parameters.
    pub param_count: usize,
    /// Bytes of the parameters in f32.
    pub bytes_f32: usize,
    /// FLOPs per token.
    pub flops: Flops,
    /// Bytes of `Params`, `Workspace` and `Stream` in f32.
    pub footprint: Footprint,
    /// SHA-256 of the spec's source text, 64 lowercase hex digits; checkpoints
    /// carry it so a file is never loaded into another spec's model.
    /// [`crate::plan_from_str`] fills it; [`Plan::new`] (which has no source
    /// text) leaves it empty.
    pub spec_sha256: String,
}

impl Plan {
    /// Builds the plan of a validated spec.
    pub fn new(spec: &Spec) -> Plan {
        let d = spec.d_model;
        let v = spec.vocab;
        let w_bound = 1.0 / (d as f64).sqrt();
        // With a residual stream the branches' output projections start
        // smaller, so the stream's variance does not grow with depth.
        let out_scale = if spec.residual { 1.0 / ((2 * spec.layers) as f64).sqrt() } else { 1.0 };
        let mut tensors: Vec<TensorPlan> = Vec::new();
        let mut push = |block: Option<usize>, name: &str, shape: Vec<usize>, init: Init| {
            let offset = tensors.last().map_or(0, |t| t.offset + t.len);
            let len = shape.iter().product();
            let field = name.replace('.', "_").replace("mem_", "mem");
            let name = match block {
                Some(b) => format!("blocks.{b}.{name}"),
                None => name.to_string(),
            };
            tensors.push(TensorPlan { name, field, block, shape, offset, len, init, stream: 0, quantized: false });
        };
        // Tied, `embed` is also the output layer: it starts like `unembed`
        // (N(0, 1) rows would give logits of size d at initialisation).
        let embed_init = if spec.tie_embeddings { Init::Uniform { bound: w_bound } } else { Init::Normal };
        push(None, "embed", vec![v, d], embed_init);
        for b in 0..spec.layers {
            let blk = Some(b);
            let norm = |push: &mut Push<'_>, which: &str| match spec.norm {
                Norm::None => {}
                Norm::Rms => push(blk, &format!("{which}.g"), vec![d], Init::Const(1.0)),
                Norm::Layer => {
                    push(blk, &format!("{which}.g"), vec![d], Init::Const(1.0));
                    push(blk, &format!("{which}.beta"), vec![d], Init::Const(0.0));
                }
            };
            norm(&mut push, "norm_a");
            for w in ["wq", "wk", "wv"] {
                push(blk, &format!("attn.{w}"), vec![d, d], Init::Uniform { bound: w_bound });
            }
            push(blk, "attn.wo", vec![d, d], Init::Uniform { bound: w_bound * out_scale });
            if spec.positions == Positions::Bias {
                push(blk, "attn.pos_bias", vec![spec.heads, spec.window], Init::Const(0.0));
            }
            if let Some(m) = &spec.memory {
                for l in 0..m.periods.len() {
                    for w in ["wk", "wv", "wq"] {
                        push(blk, &format!("mem.{l}.{w}"), vec![d, d], Init::Uniform { bound: w_bound });
                    }
                    let mut gates = vec![("alpha", m.b_alpha), ("theta", m.b_theta)];
                    if m.rule == Rule::Titans {
                        gates.push(("eta", m.b_eta));
                    }
                    for (g, bias) in gates {
                        push(blk, &format!("mem.{l}.w_{g}"), vec![2 * d], Init::Const(0.0));
                        push(blk, &format!("mem.{l}.b_{g}"), vec![1], Init::Const(bias));
                    }
                }
            }
            if let Some(mlp) = &spec.mlp {
                norm(&mut push, "norm_m");
                let hid = mlp.hidden;
                push(blk, "mlp.w_up", vec![hid, d], Init::Uniform { bound: w_bound });
                if mlp.activation == Activation::Swiglu {
                    push(blk, "mlp.w_gate", vec![hid, d], Init::Uniform { bound: w_bound });
                }
                let down = 1.0 / (hid as f64).sqrt() * out_scale;
                push(blk, "mlp.w_down", vec![d, hid], Init::Uniform { bound: down });
            }
        }
        match spec.norm {
            Norm::None => {}
            Norm::Rms => push(None, "norm_f.g", vec![d], Init::Const(1.0)),
            Norm::Layer => {
                push(None, "norm_f.g", vec![d], Init::Const(1.0));
                push(None, "norm_f.beta", vec![d], Init::Const(0.0));
            }
        }
        if !spec.tie_embeddings {
            push(None, "unembed", vec![v, d], Init::Uniform { bound: w_bound });
        }
        assign_streams(&mut tensors);
        if spec.quant.is_quantized() {
            for t in tensors.iter_mut() {
                t.quantized = is_quantizable(&t.name);
            }
        }
        let param_count = tensors.last().map_or(0, |t| t.offset + t.len);
        debug_assert_eq!(param_count, spec.param_count());
        let memory = spec.memory.as_ref().map(|m| MemoryPlan {
            rule: m.rule,
            normalize_keys: m.normalize_keys,
            periods: m.periods.clone(),
        });
        let flops = flops(spec);
        let footprint = footprint(spec);
        Plan {
            name: spec.name.clone(),
            d,
            heads: spec.heads,
            head_dim: d / spec.heads,
            vocab: v,
            seq_len: spec.seq_len,
            window: spec.window,
            composition: spec.composition,
            memory,
            layers: spec.layers,
            residual: spec.residual,
            norm: spec.norm,
            positions: spec.positions,
            mlp: spec.mlp,
            tie_embeddings: spec.tie_embeddings,
            quant: spec.quant,
            tensors,
            param_count,
            bytes_f32: param_count * 4,
            flops,
            footprint,
            spec_sha256: String::new(),
        }
    }

    /// Bytes of the deployable parameters (`QParams`; docs/quant.md): the
    /// f32 tensors and the quantized matrices' f32 scales (one per row for
    /// int8, one per tensor for ternary), then the codes (a byte each for
    /// int8; 4 per byte, each row padded to whole bytes, for ternary), then
    /// padding to a multiple of 4. The f32 bytes for an f32 model.
    pub fn deploy_bytes(&self) -> usize {
        if !self.quant.is_quantized() {
            return self.bytes_f32;
        }
        let ternary = self.quant.weights == crate::spec::WeightQuant::Ternary;
        let (mut f, mut i) = (0usize, 0usize);
        for t in &self.tensors {
            if !t.quantized {
                f += 4 * t.len;
            } else if ternary {
                f += 4;
                i += t.shape[0] * t.shape[1].div_ceil(4);
            } else {
                f += 4 * t.shape[0];
                i += t.len;
            }
        }
        f + i.next_multiple_of(4)
    }

    /// Number of memory levels per block.
    pub fn levels(&self) -> usize {
        self.memory.as_ref().map_or(0, |m| m.periods.len())
    }

    /// Whether a memory level has a period above 1 (see
    /// [`Spec::has_periodic_levels`]).
    pub fn has_periodic_levels(&self) -> bool {
        self.memory.as_ref().is_some_and(|m| m.periods.iter().any(|&p| p > 1))
    }

    /// The tensor with checkpoint name `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorPlan> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The tensors of one block (every block has the same fields), in struct order.
    pub fn block_tensors(&self, block: usize) -> impl Iterator<Item = &TensorPlan> {
        self.tensors.iter().filter(move |t| t.block == Some(block))
    }
}

/// Whether the tensor called `name` is one of the matrices `[quant]`
/// quantizes: `attn.wq/wk/wv/wo`, `mem.{l}.wk/wv/wq`, `mlp.w_up/w_gate/w_down`
/// and `unembed` (absent when tied: the output product then reads `embed`,
/// which stays f32, as do norms, gates, position biases and the memory state).
fn is_quantizable(name: &str) -> bool {
    let local = name.strip_prefix("blocks.").and_then(|r| r.split_once('.')).map_or(name, |(_, l)| l);
    let last = local.rsplit('.').next().unwrap_or(local);
    match local.split('.').next().unwrap_or(local) {
        "attn" => matches!(last, "wq" | "wk" | "wv" | "wo"),
        "mem" => matches!(last, "wk" | "wv" | "wq"),
        "mlp" => true,
        "unembed" => true,
        _ => false,
    }
}

/// Adds a tensor to the plan: block, name within the block, shape, init.
type Push<'a> = dyn FnMut(Option<usize>, &str, Vec<usize>, Init) + 'a;

/// Initialisation streams: the first version's tensors keep their numbers
/// (`embed` 0, `attn.wq..wo` 1..=4, `unembed` 5, then block 0's memory
/// tensors), so a spec with every block key at its default draws exactly
/// the values it drew before; every other tensor follows in struct order.
fn assign_streams(tensors: &mut [TensorPlan]) {
    let legacy = |t: &TensorPlan| -> Option<u64> {
        let first =
            ["embed", "blocks.0.attn.wq", "blocks.0.attn.wk", "blocks.0.attn.wv", "blocks.0.attn.wo", "unembed"];
        first.iter().position(|n| *n == t.name).map(|i| i as u64)
    };
    let mut next = 6u64;
    for t in tensors.iter_mut() {
        if let Some(i) = legacy(t) {
            t.stream = i;
        } else if t.block == Some(0) && t.name.starts_with("blocks.0.mem.") {
            t.stream = next;
            next += 1;
        }
    }
    for t in tensors.iter_mut() {
        if legacy(t).is_none() && !(t.block == Some(0) && t.name.starts_with("blocks.0.mem.")) {
            t.stream = next;
            next += 1;
        }
    }
}

/// SHA-256 (FIPS 180-4) of `data`, as 64 lowercase hex digits.
pub fn sha256_hex(data: &[u8]) -> String {
    sha256(data).iter().map(|b| format!("{b:02x}")).collect()
}

/// SHA-256 (FIPS 180-4) of `data`.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    const K: [u32; 64] = [
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98,
        0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
        0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8,
        0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
        0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819,
        0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
        0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
        0xc67178f2,
    ];
    let mut h: [u32; 8] =
        [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];
    let mut msg = data.to_vec();
    msg.push(0x80);
    while msg.len() % 64 != 56 {
        msg.push(0);
    }
    msg.extend_from_slice(&((data.len() as u64).wrapping_mul(8)).to_be_bytes());
    for block in msg.chunks_exact(64) {
        let mut w = [0u32; 64];
        for (i, word) in block.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16].wrapping_add(s0).wrapping_add(w[i - 7]).wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut hh] = h;
        for i in 0..64 {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = hh.wrapping_add(s1).wrapping_add(ch).wrapping_add(K[i]).wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            hh = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e, f, g, hh]) {
            *x = x.wrapping_add(y);
        }
    }
    let mut out = [0u8; 32];
    for (o, x) in out.chunks_exact_mut(4).zip(h) {
        o.copy_from_slice(&x.to_be_bytes());
    }
    out
}

/// A `#[repr(C)]` struct's layout, field by field: each field starts at
/// the next multiple of its alignment, and the size is rounded up to the
/// largest alignment.
#[derive(Clone, Copy, Default)]
struct Layout {
    size: usize,
    align: usize,
}

impl Layout {
    fn field(&mut self, size: usize, align: usize) {
        self.size = self.size.next_multiple_of(align) + size;
        self.align = self.align.max(align);
    }
    /// `n` f32 values.
    fn f32s(&mut self, n: usize) {
        self.field(4 * n, 4);
    }
    /// `n` copies of a finished struct.
    fn structs(&mut self, inner: Layout, n: usize) {
        let inner = inner.finish();
        if n > 0 {
            self.field(inner.size * n, inner.align.max(1));
        }
    }
    fn finish(self) -> Layout {
        Layout { size: self.size.next_multiple_of(self.align.max(1)), align: self.align.max(1) }
    }
}

/// Whether the generated training pass runs attention as per-head matrix
/// products (`nl_runtime::attn`, with its scratch in the workspace) rather
/// than row by row: without a learned position bias, and when the window
/// covers at least half the sequence (the products compute every (query,
/// key) pair of the sequence, the masked ones included).
pub fn attention_as_gemm(seq_len: usize, window: usize, positions: Positions) -> bool {
    positions != Positions::Bias && 2 * window >= seq_len
}

/// The bytes of the generated `Params`, `Workspace` and `Stream` in f32:
/// the `#[repr(C)]` layout of the generated structs, field by field (the
/// module docs list the fields).
pub fn footprint(spec: &Spec) -> Footprint {
    let (t, d, h, w, v) = (spec.seq_len, spec.d_model, spec.heads, spec.window, spec.vocab);
    let lv = spec.levels();
    let layers = spec.layers;
    let mag = spec.composition == Composition::Mag;
    let mal = spec.composition == Composition::Mal;
    let norm = spec.norm != Norm::None;
    let layer_norm = spec.norm == Norm::Layer;
    let rope = spec.positions == Positions::Rope;
    let half = d / spec.heads / 2;
    let (hid, swiglu) = spec.mlp.map_or((0, false), |m| (m.hidden, m.activation == Activation::Swiglu));
    let mlp = spec.mlp.is_some();
    let quantized = spec.quant.is_quantized();
    // int8 activations keep each quantized product's input as it reads it.
    let acts = quantized && spec.quant.activations == crate::spec::ActQuant::Int8;
    let mut state = Layout::default();
    state.f32s(4 * d * d);
    state.field(8, 8);
    let mut trace = Layout::default();
    trace.f32s(7 * t * d + 6 * t + 2 * t * d * d);

    // Workspace: the blocks first (8-aligned memory states lead them).
    let mut bw = Layout::default();
    if lv > 0 {
        bw.structs(state, 2 * lv);
        bw.structs(trace, lv);
        bw.f32s(t * d); // y
        if mag {
            bw.f32s(t * d); // gate
        }
    }
    bw.f32s(t * d); // u
    if norm {
        bw.f32s(t * if layer_norm { 2 } else { 1 });
    }
    if mal {
        bw.f32s(t * d); // h
    }
    // q, k, v, p (a square per head in the matrix-product form), a
    let p_len = if attention_as_gemm(t, w, spec.positions) { h * t * t } else { t * h * w };
    bw.f32s(3 * t * d + p_len + t * d);
    if mag {
        bw.f32s(t * d); // o
    }
    if mlp {
        bw.f32s(t * d); // mid
        if norm {
            bw.f32s(t * d + t * if layer_norm { 2 } else { 1 });
        }
        bw.f32s(t * hid * if swiglu { 3 } else { 2 });
    }
    bw.f32s(4 * d * d); // packed attention weights
    if mlp {
        bw.f32s(d * hid * if swiglu { 3 } else { 2 });
    }
    if acts {
        bw.f32s(t * d * if mal { 3 } else { 2 }); // uq, [hq,] oq
        if mlp {
            bw.f32s(t * d + t * hid); // mq, actq
        }
    }
    let mut ws = Layout::default();
    ws.structs(bw, layers);
    ws.f32s((layers + 1) * t * d); // xs
    if norm {
        ws.f32s(t * d + t * if layer_norm { 2 } else { 1 }); // xf and its statistics
    }
    ws.f32s(2 * t * v + d * v); // logits, dlogits, unembed_t
    if rope {
        ws.f32s(2 * t * half);
    }
    // Backward scratch: dx, da, dq, dk, dv, dh.
    ws.f32s(6 * t * d);
    if attention_as_gemm(t, w, spec.positions) {
        ws.f32s(2 * t * (d / h) + t * t); // attn (nl_runtime::attn::AttnScratch)
    }
    if mag {
        ws.f32s(t * d);
    }
    if norm {
        ws.f32s(t * d); // dxf
    }
    if mlp {
        // [dmid (no residual stream: with one it accumulates in dx),] dw, dact, dup, dgate
        let dmid = if spec.residual { 0 } else { t * d };
        ws.f32s(dmid + t * d + t * hid * if swiglu { 3 } else { 2 });
    }
    if lv > 0 {
        ws.f32s(t * d + 4 * d * d); // dy, adjoint
    }
    if spec.has_periodic_levels() {
        ws.f32s(5 * d * d + 2 * t * d + 2 * t); // chunk (nl_runtime::memory::ChunkScratch)
    }
    if acts && !spec.tie_embeddings {
        ws.f32s(t * d); // xfq
    }
    if lv > 0 {
        ws.field(1, 1); // freeze_memory
    }
    let ws = if quantized {
        // The dequantized parameters, then the f32 code's workspace.
        let mut outer = Layout::default();
        outer.f32s(spec.param_count());
        outer.structs(ws, 1);
        outer.finish()
    } else {
        ws.finish()
    };

    // Stream.
    let mut bs = Layout::default();
    if lv > 0 {
        bs.structs(state, lv);
        bs.field(12 * lv, 4); // schedule (nl_runtime::memory::Schedule: two u32, a bool, padded)
    }
    bs.f32s(2 * w * d);
    let mut st = Layout::default();
    st.structs(bs, layers);
    st.field(8, 8); // pos
    st.f32s(v + 2 * d + d + h * w + d + d); // logits, x, u, q, p, a, z
    if mal {
        st.f32s(d);
    }
    if mag {
        st.f32s(d);
    }
    if mlp {
        st.f32s(if norm { d } else { 0 } + hid * if swiglu { 3 } else { 2 } + d);
        // w, up, gate, act, f
    }
    if norm {
        st.f32s(d); // xf
    }
    if rope {
        st.f32s(2 * w * half);
    }
    if lv > 0 {
        st.f32s(d + 4 * d); // y, scratch
        st.field(1, 1); // freeze_memory
    }
    if rope {
        st.field(1, 1); // rope_ready
    }
    if quantized {
        let qin = d.max(hid);
        st.f32s(2 * qin); // qbuf
        st.field(qin, 1); // qx
    }
    let st = st.finish();
    Footprint {
        params: spec.param_count() * 4,
        workspace: ws.size,
        memory_history: layers * lv * 2 * t * d * d * 4,
        stream: st.size,
    }
}

fn flops(spec: &Spec) -> Flops {
    let d = spec.d_model as f64;
    let t = spec.seq_len;
    let w = spec.window;
    let avg_w = (1..=t).map(|i| i.min(w) as f64).sum::<f64>() / t as f64;
    let memory = match &spec.memory {
        None => 0.0,
        Some(m) => m
            .periods
            .iter()
            .map(|&p| {
                let gates = if m.rule == Rule::Titans { 3.0 } else { 2.0 };
                let mk = match m.rule {
                    Rule::Hebbian => 0.0,
                    Rule::Delta => 2.0 * d * d,
                    Rule::Titans => 4.0 * d * d,
                };
                let fire = if m.rule == Rule::Titans { 4.0 * d * d } else { 2.0 * d * d };
                6.0 * d * d + 2.0 * 2.0 * 2.0 * d * gates + 2.0 * d * d + 2.0 * d * d + mk + fire / p as f64
            })
            .sum(),
    };
    let mlp = spec.mlp.map_or(0.0, |m| {
        let mats = if m.activation == Activation::Swiglu { 3.0 } else { 2.0 };
        mats * 2.0 * d * m.hidden as f64
    });
    let layers = spec.layers as f64;
    let base = layers * (8.0 * d * d + memory + mlp) + 2.0 * d * spec.vocab as f64;
    let forward = base + layers * 4.0 * d * avg_w;
    let step = base + layers * 4.0 * d * w as f64;
    Flops { forward: forward.round() as u64, train: (3.0 * forward).round() as u64, step: step.round() as u64 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_fips_vectors() {
        assert_eq!(sha256_hex(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(sha256_hex(b""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        assert_eq!(
            sha256_hex(b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
        );
        let plan =
            crate::plan_from_str("d_model = 64\nheads = 4\nvocab = 256\nseq_len = 32\nwindow = 16\n", "m").unwrap();
        assert_eq!(plan.spec_sha256.len(), 64);
    }

    #[test]
    fn micro_plan_matches_hand_counts() {
        let spec = Spec::parse("d_model = 64\nheads = 4\nvocab = 256\nseq_len = 32\nwindow = 16\n", "micro").unwrap();
        let p = Plan::new(&spec);
        assert_eq!(p.param_count, 49_152);
        assert_eq!(p.bytes_f32, 196_608);
        let names: Vec<&str> = p.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            ["embed", "blocks.0.attn.wq", "blocks.0.attn.wk", "blocks.0.attn.wv", "blocks.0.attn.wo", "unembed"]
        );
        assert_eq!(p.tensor("unembed").unwrap().offset, 256 * 64 + 4 * 64 * 64);
        let streams: Vec<u64> = p.tensors.iter().map(|t| t.stream).collect();
        assert_eq!(streams, [0, 1, 2, 3, 4, 5]);
        // avg_w = (1 + 2 + ... + 16 + 16 * 16) / 32 = (136 + 256) / 32 = 12.25
        let fwd = 8 * 64 * 64 + 2 * 64 * 256 + (4.0 * 64.0 * 12.25) as u64;
        assert_eq!(p.flops.forward, fwd);
        assert_eq!(p.flops.train, 3 * fwd);
        assert_eq!(p.flops.step, 8 * 64 * 64 + 2 * 64 * 256 + 4 * 64 * 16);
    }

    #[test]
    fn deep_plan_names_counts_and_init() {
        let src = "d_model = 8\nheads = 2\nvocab = 5\nseq_len = 6\nwindow = 4\nlayers = 2\nresidual = true\nnorm = \"layer\"\npositions = \"bias\"\ntie_embeddings = true\n[mlp]\nhidden = 12\n";
        let p = Plan::new(&Spec::parse(src, "m").unwrap());
        let names: Vec<&str> = p.tensors.iter().map(|t| t.name.as_str()).collect();
        let block = |b: usize| {
            [
                "norm_a.g",
                "norm_a.beta",
                "attn.wq",
                "attn.wk",
                "attn.wv",
                "attn.wo",
                "attn.pos_bias",
                "norm_m.g",
                "norm_m.beta",
                "mlp.w_up",
                "mlp.w_gate",
                "mlp.w_down",
            ]
            .map(|n| format!("blocks.{b}.{n}"))
        };
        let mut want = vec!["embed".to_string()];
        want.extend(block(0));
        want.extend(block(1));
        want.extend(["norm_f.g".to_string(), "norm_f.beta".to_string()]);
        assert_eq!(names, want);
        // Hand count: embed 40; per block 2 norms x 16, 4 x 64, bias 2 x 4, MLP 3 x 96.
        assert_eq!(p.param_count, 40 + 2 * (32 + 256 + 8 + 288) + 16);
        assert_eq!(p.tensor("blocks.1.mlp.w_down").unwrap().field, "mlp_w_down");
        // Residual: the output projections start 1/sqrt(2 layers) smaller.
        let half = 0.5;
        assert_eq!(p.tensor("blocks.0.attn.wo").unwrap().init, Init::Uniform { bound: half / 8f64.sqrt() });
        assert_eq!(p.tensor("blocks.0.mlp.w_down").unwrap().init, Init::Uniform { bound: half / 12f64.sqrt() });
        let mut streams: Vec<u64> = p.tensors.iter().map(|t| t.stream).collect();
        streams.sort();
        streams.dedup();
        assert_eq!(streams.len(), p.tensors.len(), "one stream per tensor");
        // Per block per token: 8 d^2 + 3 * 2 * d * hidden, plus the unembedding.
        assert_eq!(p.flops.step, 2 * (8 * 64 + 6 * 8 * 12 + 4 * 8 * 4) + 2 * 8 * 5);
    }

    #[test]
    fn quantized_tensors_are_the_matrices_that_multiply_activations() {
        let base =
            "d_model = 8\nheads = 2\nvocab = 16\nseq_len = 4\nlayers = 2\nnorm = \"layer\"\npositions = \"bias\"\n\
                    [mlp]\nhidden = 8\n[memory]\nrule = \"titans\"\n[[memory.levels]]\nperiod = 1\n";
        let plan = |extra: &str| crate::plan_from_str(&format!("{base}{extra}"), "q").map_err(|e| e.to_string());
        // f32: nothing is quantized.
        assert_eq!(plan("").map(|p| p.tensors.iter().filter(|t| t.quantized).count()), Ok(0));
        let p = plan("[quant]\nweights = \"int8\"\n").unwrap_or_else(|e| panic!("{e}"));
        let mut names: Vec<&str> = p.tensors.iter().filter(|t| t.quantized).map(|t| t.name.as_str()).collect();
        names.sort_unstable();
        let mut want = vec!["unembed".to_string()];
        for b in 0..2 {
            for t in ["attn.wq", "attn.wk", "attn.wv", "attn.wo", "mem.0.wk", "mem.0.wv", "mem.0.wq"] {
                want.push(format!("blocks.{b}.{t}"));
            }
            for t in ["mlp.w_up", "mlp.w_gate", "mlp.w_down"] {
                want.push(format!("blocks.{b}.{t}"));
            }
        }
        want.sort_unstable();
        assert_eq!(names, want);
        // Every quantized tensor is a matrix; tied embeddings quantize no output layer.
        assert!(p.tensors.iter().filter(|t| t.quantized).all(|t| t.shape.len() == 2));
        let tied = crate::plan_from_str(&format!("tie_embeddings = true\n{base}[quant]\nweights = \"ternary\"\n"), "q")
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(tied.tensors.iter().all(|t| !(t.quantized && (t.name == "embed" || t.name == "unembed"))));
        assert_eq!(tied.tensors.iter().filter(|t| t.quantized).count(), 20);
        assert_eq!(tied.quant.activations, crate::ActQuant::Int8);
    }

    #[test]
    fn memory_tensors_in_order() {
        let src = "d_model = 4\nheads = 2\nvocab = 3\nseq_len = 5\n[memory]\nrule = \"titans\"\n[[memory.levels]]\nperiod = 1\n[[memory.levels]]\nperiod = 2\n";
        let p = Plan::new(&Spec::parse(src, "m").unwrap());
        let names: Vec<&str> = p.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            &names[5..14],
            [
                "blocks.0.mem.0.wk",
                "blocks.0.mem.0.wv",
                "blocks.0.mem.0.wq",
                "blocks.0.mem.0.w_alpha",
                "blocks.0.mem.0.b_alpha",
                "blocks.0.mem.0.w_theta",
                "blocks.0.mem.0.b_theta",
                "blocks.0.mem.0.w_eta",
                "blocks.0.mem.0.b_eta"
            ]
        );
        assert_eq!(names.last(), Some(&"unembed"));
        assert_eq!(p.tensors[5].field, "mem0_wk");
        assert_eq!(p.tensors[5].block, Some(0));
        // The first version's initialisation streams: unembed 5, then the memory.
        assert_eq!(p.tensors[5].stream, 6);
        assert_eq!(p.tensor("unembed").unwrap().stream, 5);
        assert_eq!(p.tensor("blocks.0.mem.1.b_eta").unwrap().field, "mem1_b_eta");
        assert_eq!(p.param_count, 2 * 3 * 4 + 4 * 16 + 2 * (3 * 16 + 3 * (8 + 1)));
        assert_eq!(p.tensor("blocks.0.mem.0.b_alpha").unwrap().init, Init::Const(-4.0));
    }
}
