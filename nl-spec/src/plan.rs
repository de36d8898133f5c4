//! The plan: what the generator, the runtime tools and the docs read.
//!
//! # Tensors
//!
//! In struct and checkpoint order: `embed` `[V, d]`, `attn.wq`, `attn.wk`,
//! `attn.wv`, `attn.wo` `[d, d]`, `unembed` `[V, d]`, then per memory level
//! `l`: `mem.{l}.wk`, `mem.{l}.wv`, `mem.{l}.wq` `[d, d]`, `mem.{l}.w_alpha`
//! `[2d]`, `mem.{l}.b_alpha` `[1]`, `mem.{l}.w_theta` `[2d]`,
//! `mem.{l}.b_theta` `[1]`, and for `titans` `mem.{l}.w_eta` `[2d]`,
//! `mem.{l}.b_eta` `[1]`. Weights are `[out, in]`, row-major.
//!
//! # Initialisation
//!
//! Deterministic from a seed: tensor `i` draws from its own SplitMix64-seeded
//! xoshiro256++ stream (seed mixed with `i`), so adding a tensor never
//! changes another's values. `embed` ~ N(0, 1); every `[out, in]` weight
//! ~ U(-1/sqrt(in), 1/sqrt(in)); gate weights are 0; gate biases are the
//! spec's `b_alpha`, `b_theta`, `b_eta`.
//!
//! # Footprint
//!
//! [`Footprint`] counts, in f32, the arrays of the generated structs (to
//! within the padding of a few scalar fields): `Params` is the parameter
//! count; `Workspace` holds per position the activations and their
//! gradients (`12 T d`, `2 T d` more with `mag`), the attention
//! probabilities (`T h W`), logits and their gradient (`2 T V`), the packed
//! transposed weights (`4 d^2 + V d`), and with memory `4 T d` (the
//! branch's input, read, gate and gradient), per level `7 T d + 6 T` (keys,
//! values, queries, surprise factors, their gradients, the gates) plus the
//! history `2 T d^2` (`M` and `S` after each fire), the start and end
//! states (`4 d^2` each: `M`, `G`, `S`, `W`) and the adjoint `4 d^2`;
//! `Stream` holds the attention ring (`2 W d`), logits and per-token
//! vectors, and each level's state. The history dominates as soon as
//! `d_model` is more than a few times `vocab / seq_len`: a spec whose
//! workspace exceeds its `workspace_limit_mib` (default 1024) is rejected.
//!
//! # FLOPs per token
//!
//! A multiply-add counts 2. Counted: every matrix product and dot product;
//! not counted: softmax, exponentials, norms and other elementwise work.
//! With `avg_w = sum_{t=1..T} min(t, W) / T` (the mean attention span over a
//! training sequence):
//!
//! - attention: `4 * 2 d^2` (projections q, k, v, o) `+ 2 * 2 d avg_w`
//!   (scores and weighted sum over all heads);
//! - unembedding: `2 d V`;
//! - per memory level: `3 * 2 d^2` (projections) `+ 2 * 2 * 2d * gates`
//!   (gate dot products, `gates` = 2, or 3 for titans) `+ 2 d^2` (read
//!   `M q`) `+ 2 d^2` (accumulate `theta (Mk - v) k^T` into G) `+ 2 d^2`
//!   (`M k`; not for hebbian) `[+ 2 d^2` (titans: accumulate `theta v k^T`
//!   into W)`] + (2 d^2 [+ 2 d^2 titans]) / p` (the fire);
//! - forward + backward = 3 x forward (the backward of a product costs two
//!   products);
//! - a streaming step is the forward with `avg_w = W` (a full window).

use crate::spec::{Composition, Rule, Spec};

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
    /// Memory branch, if any.
    pub memory: Option<MemoryPlan>,
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
        let mut tensors: Vec<TensorPlan> = Vec::new();
        let mut push = |name: String, shape: Vec<usize>, init: Init| {
            let offset = tensors.last().map_or(0, |t| t.offset + t.len);
            let len = shape.iter().product();
            let field = name.replace('.', "_").replace("mem_", "mem");
            tensors.push(TensorPlan { name, field, shape, offset, len, init });
        };
        push("embed".into(), vec![v, d], Init::Normal);
        for w in ["wq", "wk", "wv", "wo"] {
            push(format!("attn.{w}"), vec![d, d], Init::Uniform { bound: w_bound });
        }
        push("unembed".into(), vec![v, d], Init::Uniform { bound: w_bound });
        if let Some(m) = &spec.memory {
            for l in 0..m.periods.len() {
                for w in ["wk", "wv", "wq"] {
                    push(format!("mem.{l}.{w}"), vec![d, d], Init::Uniform { bound: w_bound });
                }
                let mut gates = vec![("alpha", m.b_alpha), ("theta", m.b_theta)];
                if m.rule == Rule::Titans {
                    gates.push(("eta", m.b_eta));
                }
                for (g, b) in gates {
                    push(format!("mem.{l}.w_{g}"), vec![2 * d], Init::Const(0.0));
                    push(format!("mem.{l}.b_{g}"), vec![1], Init::Const(b));
                }
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
            tensors,
            param_count,
            bytes_f32: param_count * 4,
            flops,
            footprint,
            spec_sha256: String::new(),
        }
    }

    /// Number of memory levels.
    pub fn levels(&self) -> usize {
        self.memory.as_ref().map_or(0, |m| m.periods.len())
    }

    /// The tensor with checkpoint name `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorPlan> {
        self.tensors.iter().find(|t| t.name == name)
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

/// The bytes of the generated `Params`, `Workspace` and `Stream` in f32
/// (the module docs list the fields counted).
pub fn footprint(spec: &Spec) -> Footprint {
    const S: usize = 4;
    let (t, d, h, w, v) = (spec.seq_len, spec.d_model, spec.heads, spec.window, spec.vocab);
    let l = spec.levels();
    let mag = usize::from(spec.composition == Composition::Mag);
    // A level's state: M, G, S, W and the count n.
    let state = 4 * d * d * S + 8;
    let mut workspace = (12 + 2 * mag) * t * d + t * h * w + 2 * t * v + 4 * d * d + v * d;
    let mut history = 0;
    let mut stream = 2 * w * d + v + (4 + mag) * d + h * w;
    if l > 0 {
        history = l * 2 * t * d * d;
        // e, y, gate, dy; per level: k, v, q, r, dk, dv, dq, six per-token
        // scalars, and the history; the adjoint (dM, dG, dS, dW).
        workspace += 4 * t * d + l * (7 * t * d + 6 * t) + history + 4 * d * d;
        stream += d + 4 * d;
    }
    Footprint {
        params: spec.param_count() * S,
        workspace: workspace * S + 2 * l * state + 8,
        memory_history: history * S,
        stream: stream * S + l * state + 16,
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
    let base = 8.0 * d * d + 2.0 * d * spec.vocab as f64 + memory;
    let forward = base + 4.0 * d * avg_w;
    let step = base + 4.0 * d * w as f64;
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
        assert_eq!(names, ["embed", "attn.wq", "attn.wk", "attn.wv", "attn.wo", "unembed"]);
        assert_eq!(p.tensor("unembed").unwrap().offset, 256 * 64 + 4 * 64 * 64);
        // avg_w = (1 + 2 + ... + 16 + 16 * 16) / 32 = (136 + 256) / 32 = 12.25
        let fwd = 8 * 64 * 64 + 2 * 64 * 256 + (4.0 * 64.0 * 12.25) as u64;
        assert_eq!(p.flops.forward, fwd);
        assert_eq!(p.flops.train, 3 * fwd);
        assert_eq!(p.flops.step, 8 * 64 * 64 + 2 * 64 * 256 + 4 * 64 * 16);
    }

    #[test]
    fn memory_tensors_in_order() {
        let src = "d_model = 4\nheads = 2\nvocab = 3\nseq_len = 5\n[memory]\nrule = \"titans\"\n[[memory.levels]]\nperiod = 1\n[[memory.levels]]\nperiod = 2\n";
        let p = Plan::new(&Spec::parse(src, "m").unwrap());
        let names: Vec<&str> = p.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            &names[6..15],
            [
                "mem.0.wk",
                "mem.0.wv",
                "mem.0.wq",
                "mem.0.w_alpha",
                "mem.0.b_alpha",
                "mem.0.w_theta",
                "mem.0.b_theta",
                "mem.0.w_eta",
                "mem.0.b_eta"
            ]
        );
        assert_eq!(p.tensors[6].field, "mem0_wk");
        assert_eq!(p.tensor("mem.1.b_eta").unwrap().field, "mem1_b_eta");
        assert_eq!(p.param_count, 2 * 3 * 4 + 4 * 16 + 2 * (3 * 16 + 3 * (8 + 1)));
        assert_eq!(p.tensor("mem.0.b_alpha").unwrap().init, Init::Const(-4.0));
    }
}
