//! The TOML model spec: schema, parsing and validation.

use serde::Deserialize;
use toml::Spanned;

use crate::error::{key_at, SpecError};

/// The inner-loop memory rule of a level (docs/model.md, step 2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum Rule {
    /// `M <- (1 - alpha) M - G`, surprise `(M k - v) k^T`.
    Delta,
    /// Delta surprise with momentum: `S <- eta S - G`, `M <- (1 - alpha) M + S`.
    Titans,
    /// `M <- (1 - alpha) M - G`, surprise `-v k^T`.
    Hebbian,
}

impl Rule {
    /// The spec word for this rule.
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::Delta => "delta",
            Rule::Titans => "titans",
            Rule::Hebbian => "hebbian",
        }
    }
}

/// How the memory branch joins the attention branch (docs/model.md, steps 3 and 5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum Composition {
    /// Attention only: no memory branch.
    None,
    /// Memory as a gate: `o = a * sigmoid(y)`.
    Mag,
    /// Memory as a layer: attention reads `h = e + y`.
    Mal,
}

impl Composition {
    /// The spec word for this composition.
    pub fn as_str(self) -> &'static str {
        match self {
            Composition::None => "none",
            Composition::Mag => "mag",
            Composition::Mal => "mal",
        }
    }
}

/// Pre-norm of a block's branches and the final norm (docs/model.md, "Blocks").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum Norm {
    /// No norms (identity, no tensors).
    None,
    /// `g * x / sqrt(mean(x^2) + eps)`.
    Rms,
    /// `g * (x - mean) / sqrt(var + eps) + beta`.
    Layer,
}

impl Norm {
    /// The spec word.
    pub fn as_str(self) -> &'static str {
        match self {
            Norm::None => "none",
            Norm::Rms => "rms",
            Norm::Layer => "layer",
        }
    }
}

/// How attention sees positions (docs/model.md, "Blocks").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum Positions {
    /// Only through the causal window.
    None,
    /// Rotary embeddings of queries and keys (needs an even head width).
    Rope,
    /// A learned bias per head and offset added to the scores.
    Bias,
}

impl Positions {
    /// The spec word.
    pub fn as_str(self) -> &'static str {
        match self {
            Positions::None => "none",
            Positions::Rope => "rope",
            Positions::Bias => "bias",
        }
    }
}

/// The MLP's activation (docs/model.md, "Blocks").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum Activation {
    /// `W_down (silu(W_gate w) * (W_up w))`.
    Swiglu,
    /// `W_down gelu(W_up w)`, tanh form.
    Gelu,
    /// `W_down relu(W_up w)`.
    Relu,
}

impl Activation {
    /// The spec word.
    pub fn as_str(self) -> &'static str {
        match self {
            Activation::Swiglu => "swiglu",
            Activation::Gelu => "gelu",
            Activation::Relu => "relu",
        }
    }
}

/// What the forward pass reads of a weight matrix (docs/model.md, "Quantized weights").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum WeightQuant {
    /// The f32 weights themselves (the default).
    F32,
    /// Per-row absmax int8: `s_r * round(W / s_r)`, `s_r = max|W_r| / 127`.
    Int8,
    /// Per-tensor absmean ternary (BitNet b1.58): `s * clamp(round(W / s), -1, 1)`, `s = mean|W|`.
    Ternary,
}

impl WeightQuant {
    /// The spec word.
    pub fn as_str(self) -> &'static str {
        match self {
            WeightQuant::F32 => "f32",
            WeightQuant::Int8 => "int8",
            WeightQuant::Ternary => "ternary",
        }
    }
}

/// What the forward pass reads of the input of a quantized weight matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub enum ActQuant {
    /// f32 inputs.
    F32,
    /// Per-token absmax int8 inputs: `a * round(x / a)`, `a = max|x| / 127`.
    Int8,
}

impl ActQuant {
    /// The spec word.
    pub fn as_str(self) -> &'static str {
        match self {
            ActQuant::F32 => "f32",
            ActQuant::Int8 => "int8",
        }
    }
}

/// The `[quant]` table, validated, defaults applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuantSpec {
    /// `weights` (default `f32`).
    pub weights: WeightQuant,
    /// `activations` (default `f32`, or `int8` with ternary weights).
    pub activations: ActQuant,
}

impl QuantSpec {
    /// No quantization: the f32 model.
    pub const F32: QuantSpec = QuantSpec { weights: WeightQuant::F32, activations: ActQuant::F32 };

    /// Whether anything is quantized.
    pub fn is_quantized(&self) -> bool {
        self.weights != WeightQuant::F32
    }
}

/// A block's MLP, validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MlpSpec {
    /// Hidden width.
    pub hidden: usize,
    /// Activation.
    pub activation: Activation,
}

/// The enum keys are read from a string only (serde's derive would also
/// read `norm = { rms = {} }`), with serde's message for an unknown word.
macro_rules! words {
    ($($ty:ident: $($variant:ident),+;)+) => {$(
        impl TryFrom<String> for $ty {
            type Error = String;
            fn try_from(word: String) -> Result<Self, String> {
                const ALL: &[$ty] = &[$($ty::$variant),+];
                ALL.iter().copied().find(|v| v.as_str() == word).ok_or_else(|| {
                    let allowed: Vec<String> = ALL.iter().map(|v| format!("`{}`", v.as_str())).collect();
                    format!("unknown variant `{word}`, expected one of {}", allowed.join(", "))
                })
            }
        }
    )+};
}

words! {
    Rule: Delta, Titans, Hebbian;
    Composition: None, Mag, Mal;
    Norm: None, Rms, Layer;
    Positions: None, Rope, Bias;
    Activation: Swiglu, Gelu, Relu;
    WeightQuant: F32, Int8, Ternary;
    ActQuant: F32, Int8;
}

/// Bounds the validator enforces. Sizes outside them are rejected as absurd
/// for a micro model (they would not fit the fixed-size, in-cache design).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest `d_model`.
    pub max_d_model: usize,
    /// Largest `vocab`.
    pub max_vocab: usize,
    /// Largest `seq_len`.
    pub max_seq_len: usize,
    /// Most memory levels.
    pub max_levels: usize,
    /// Largest `period`.
    pub max_period: usize,
    /// Most parameters in total.
    pub max_params: usize,
    /// Most blocks (`layers`).
    pub max_layers: usize,
    /// Largest MLP hidden width.
    pub max_hidden: usize,
}

/// The limits in force.
pub const LIMITS: Limits = Limits {
    max_d_model: 1024,
    max_vocab: 65_536,
    max_seq_len: 4096,
    max_levels: 4,
    max_period: 1 << 20,
    max_params: 16 << 20,
    max_layers: 16,
    max_hidden: 8192,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSpec {
    name: Option<Spanned<String>>,
    d_model: Spanned<usize>,
    heads: Spanned<usize>,
    vocab: Spanned<usize>,
    seq_len: Spanned<usize>,
    window: Option<Spanned<usize>>,
    workspace_limit_mib: Option<Spanned<usize>>,
    layers: Option<Spanned<usize>>,
    residual: Option<bool>,
    norm: Option<Spanned<Norm>>,
    positions: Option<Spanned<Positions>>,
    tie_embeddings: Option<bool>,
    mlp: Option<Spanned<Table<RawMlp>>>,
    memory: Option<Spanned<Table<RawMemory>>>,
    quant: Option<Spanned<Table<RawQuant>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawQuant {
    weights: Option<Spanned<WeightQuant>>,
    activations: Option<Spanned<ActQuant>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMlp {
    hidden: Option<Spanned<usize>>,
    activation: Option<Spanned<Activation>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMemory {
    rule: Spanned<Rule>,
    composition: Option<Spanned<Composition>>,
    normalize_keys: Option<bool>,
    b_alpha: Option<Spanned<f64>>,
    b_theta: Option<Spanned<f64>>,
    b_eta: Option<Spanned<f64>>,
    levels: Option<Spanned<Vec<Spanned<Table<RawLevel>>>>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLevel {
    period: Spanned<usize>,
}

/// What a table is called in messages.
trait TableName {
    const WHAT: &'static str;
}
impl TableName for RawMlp {
    const WHAT: &'static str = "an [mlp] table";
}
impl TableName for RawQuant {
    const WHAT: &'static str = "a [quant] table";
}
impl TableName for RawMemory {
    const WHAT: &'static str = "a [memory] table";
}
impl TableName for RawLevel {
    const WHAT: &'static str = "a [[memory.levels]] table with a `period`";
}

/// A struct that only a TOML table can spell. serde's derive also reads a
/// struct from an array of its fields in order, so without this wrapper
/// `mlp = [8, "gelu"]` and `levels = [[1]]` would be accepted.
struct Table<T>(T);

impl<T> core::ops::Deref for Table<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}

impl<'de, T: Deserialize<'de> + TableName> Deserialize<'de> for Table<T> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit<T>(core::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de> + TableName> serde::de::Visitor<'de> for Visit<T> {
            type Value = T;
            fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                f.write_str(T::WHAT)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }
        deserializer.deserialize_map(Visit(core::marker::PhantomData)).map(Table)
    }
}

/// The memory branch of a spec, validated, defaults applied.
#[derive(Clone, Debug, PartialEq)]
pub struct MemorySpec {
    /// The update rule shared by all levels.
    pub rule: Rule,
    /// `normalize_keys` (default `true`).
    pub normalize_keys: bool,
    /// Initial forget-gate bias (default -4).
    pub b_alpha: f64,
    /// Initial inner-learning-rate bias (default -2).
    pub b_theta: f64,
    /// Initial momentum bias (default 2; `titans` only).
    pub b_eta: f64,
    /// Each level's period, fastest first as written.
    pub periods: Vec<usize>,
}

/// A validated model spec.
#[derive(Clone, Debug, PartialEq)]
pub struct Spec {
    /// Module name: the `name` key, or the file stem.
    pub name: String,
    /// `d_model`.
    pub d_model: usize,
    /// `heads`.
    pub heads: usize,
    /// `vocab`.
    pub vocab: usize,
    /// `seq_len`.
    pub seq_len: usize,
    /// `window` (default `seq_len`).
    pub window: usize,
    /// `memory.composition` (default `mag` with levels, `none` without).
    pub composition: Composition,
    /// The memory branch; `None` when the spec has no levels.
    pub memory: Option<MemorySpec>,
    /// Largest training workspace allowed, in MiB (`workspace_limit_mib`, default 1024).
    pub workspace_limit_mib: usize,
    /// Number of blocks (`layers`, default 1).
    pub layers: usize,
    /// Whether each branch adds to a residual stream (default `false`).
    pub residual: bool,
    /// Pre-norms and final norm (default none).
    pub norm: Norm,
    /// Position scheme of attention (default none).
    pub positions: Positions,
    /// The MLP of every block, if any.
    pub mlp: Option<MlpSpec>,
    /// Whether `unembed` is `embed` (default `false`).
    pub tie_embeddings: bool,
    /// Quantization of the weight matrices and their inputs (default none).
    pub quant: QuantSpec,
}

/// Default of `workspace_limit_mib`: 1 GiB.
pub const DEFAULT_WORKSPACE_LIMIT_MIB: usize = 1024;

const KEYWORDS: &[&str] = &[
    "as", "async", "await", "break", "const", "continue", "crate", "dyn", "else", "enum", "extern", "false", "fn",
    "for", "if", "impl", "in", "let", "loop", "match", "mod", "move", "mut", "pub", "ref", "return", "self", "Self",
    "static", "struct", "super", "trait", "true", "type", "unsafe", "use", "where", "while", "abstract", "become",
    "box", "do", "final", "macro", "override", "priv", "typeof", "unsized", "virtual", "yield", "try", "gen",
];

fn is_module_ident(s: &str) -> bool {
    let mut chars = s.chars();
    let first_ok = matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_');
    first_ok
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && s != "_"
        && !KEYWORDS.contains(&s)
}

impl Spec {
    /// Parses and validates TOML source. `default_name` is used when the
    /// spec has no `name` key.
    pub fn parse(source: &str, default_name: &str) -> Result<Spec, SpecError> {
        let raw: RawSpec = toml::from_str(source).map_err(|e| {
            let span = e.span();
            let key = span.as_ref().map(|s| key_at(source, s.start)).unwrap_or_default();
            if let Some(field) = missing_field(e.message()) {
                return missing_key_error(source, &key, span, field);
            }
            let (key, message) = describe_toml_error(e.message(), &key);
            SpecError::new(source, key, span, message)
        })?;
        let err =
            |key: &str, span: core::ops::Range<usize>, msg: String| Err(SpecError::new(source, key, Some(span), msg));
        let lim = LIMITS;

        let name = match &raw.name {
            Some(n) => {
                if !is_module_ident(n.get_ref()) {
                    return err(
                        "name",
                        n.span(),
                        format!(
                            "`{}` is not a valid module name; allowed: a snake_case Rust identifier (lowercase letters, digits, `_`, not a keyword)",
                            n.get_ref()
                        ),
                    );
                }
                n.get_ref().clone()
            }
            None => {
                if !is_module_ident(default_name) {
                    return Err(SpecError::new(
                        source,
                        "name",
                        None,
                        format!(
                            "the file name `{default_name}` is not a valid module name; add a `name = \"...\"` key (a snake_case Rust identifier)"
                        ),
                    ));
                }
                default_name.to_string()
            }
        };

        let d = *raw.d_model.get_ref();
        if d == 0 || d > lim.max_d_model {
            return err(
                "d_model",
                raw.d_model.span(),
                format!("{d} is out of range; allowed: 1..={}", lim.max_d_model),
            );
        }
        let heads = *raw.heads.get_ref();
        if heads == 0 || heads > d {
            return err("heads", raw.heads.span(), format!("{heads} is out of range; allowed: 1..=d_model ({d})"));
        }
        if !d.is_multiple_of(heads) {
            let divisors: Vec<String> = (1..=d).filter(|h| d.is_multiple_of(*h)).map(|h| h.to_string()).collect();
            return err(
                "heads",
                raw.heads.span(),
                format!(
                    "{heads} does not divide d_model = {d}; allowed: a divisor of d_model ({})",
                    divisors.join(", ")
                ),
            );
        }
        let vocab = *raw.vocab.get_ref();
        if vocab < 2 || vocab > lim.max_vocab {
            return err("vocab", raw.vocab.span(), format!("{vocab} is out of range; allowed: 2..={}", lim.max_vocab));
        }
        let seq_len = *raw.seq_len.get_ref();
        if seq_len == 0 || seq_len > lim.max_seq_len {
            return err(
                "seq_len",
                raw.seq_len.span(),
                format!("{seq_len} is out of range; allowed: 1..={}", lim.max_seq_len),
            );
        }
        let window = match &raw.window {
            Some(w) => {
                let wv = *w.get_ref();
                if wv == 0 || wv > seq_len {
                    return err("window", w.span(), format!("{wv} is out of range; allowed: 1..=seq_len ({seq_len})"));
                }
                wv
            }
            None => seq_len,
        };

        let (composition, memory) = match &raw.memory {
            None => (Composition::None, None),
            Some(m) => {
                let mem_span = m.span();
                let m = m.get_ref();
                let levels = match &m.levels {
                    Some(l) => l,
                    None => {
                        return err(
                            "memory.levels",
                            mem_span,
                            format!(
                            "missing: a [memory] table needs 1..={} [[memory.levels]] entries, each with a `period`",
                            lim.max_levels
                        ),
                        )
                    }
                };
                let n = levels.get_ref().len();
                if n == 0 {
                    return err(
                        "memory.levels",
                        levels.span(),
                        format!("no levels; allowed: 1..={} [[memory.levels]] entries", lim.max_levels),
                    );
                }
                if n > lim.max_levels {
                    // Point at the first level too many.
                    return err(
                        &format!("memory.levels[{}]", lim.max_levels),
                        levels.get_ref()[lim.max_levels].span(),
                        format!("{n} levels; allowed: at most {} [[memory.levels]] entries", lim.max_levels),
                    );
                }
                let mut periods = Vec::new();
                for (i, level) in levels.get_ref().iter().enumerate() {
                    let p = &level.get_ref().period;
                    let pv = *p.get_ref();
                    if pv == 0 || pv > lim.max_period {
                        return err(
                            &format!("memory.levels[{i}].period"),
                            p.span(),
                            format!("{pv} is out of range; allowed: 1..={}", lim.max_period),
                        );
                    }
                    periods.push(pv);
                }
                let composition = match &m.composition {
                    Some(c) if *c.get_ref() == Composition::None => {
                        return err(
                            "memory.composition",
                            c.span(),
                            "\"none\" with memory levels would compute a memory nobody reads; allowed: \"mag\" or \"mal\" (or remove [memory])"
                                .to_string(),
                        )
                    }
                    Some(c) => *c.get_ref(),
                    None => Composition::Mag,
                };
                let bias = |key: &str, v: &Option<Spanned<f64>>, default: f64| -> Result<f64, SpecError> {
                    match v {
                        Some(b) if !b.get_ref().is_finite() || b.get_ref().abs() > 30.0 => Err(SpecError::new(
                            source,
                            format!("memory.{key}"),
                            Some(b.span()),
                            format!("{} is out of range; allowed: a finite number in -30..=30", b.get_ref()),
                        )),
                        Some(b) => Ok(*b.get_ref()),
                        None => Ok(default),
                    }
                };
                let b_alpha = bias("b_alpha", &m.b_alpha, -4.0)?;
                let b_theta = bias("b_theta", &m.b_theta, -2.0)?;
                let b_eta = bias("b_eta", &m.b_eta, 2.0)?;
                if let (Some(b), false) = (&m.b_eta, *m.rule.get_ref() == Rule::Titans) {
                    return err(
                        "memory.b_eta",
                        b.span(),
                        format!(
                            "the momentum bias is allowed only with rule = \"titans\" (this spec's rule is \"{}\", which has no momentum gate); remove the key or use rule = \"titans\"",
                            m.rule.get_ref().as_str()
                        ),
                    );
                }
                (
                    composition,
                    Some(MemorySpec {
                        rule: *m.rule.get_ref(),
                        normalize_keys: m.normalize_keys.unwrap_or(true),
                        b_alpha,
                        b_theta,
                        b_eta,
                        periods,
                    }),
                )
            }
        };

        let workspace_limit_mib = match &raw.workspace_limit_mib {
            Some(m) => {
                let mv = *m.get_ref();
                if mv == 0 || mv > 1 << 20 {
                    return err(
                        "workspace_limit_mib",
                        m.span(),
                        format!("{mv} is out of range; allowed: 1..=1048576 (MiB)"),
                    );
                }
                mv
            }
            None => DEFAULT_WORKSPACE_LIMIT_MIB,
        };
        let layers = match &raw.layers {
            Some(l) => {
                let lv = *l.get_ref();
                if lv == 0 || lv > lim.max_layers {
                    return err("layers", l.span(), format!("{lv} is out of range; allowed: 1..={}", lim.max_layers));
                }
                lv
            }
            None => 1,
        };
        let norm = raw.norm.as_ref().map_or(Norm::None, |n| *n.get_ref());
        let positions = match &raw.positions {
            Some(p) => {
                let pv = *p.get_ref();
                let hd = d / heads;
                if pv == Positions::Rope && !hd.is_multiple_of(2) {
                    return err(
                        "positions",
                        p.span(),
                        format!(
                            "\"rope\" rotates pairs of a head's columns, but head_dim = d_model / heads = {d} / {heads} = {hd} is odd; allowed: an even head_dim, or positions = \"bias\" or \"none\""
                        ),
                    );
                }
                pv
            }
            None => Positions::None,
        };
        let mlp = match &raw.mlp {
            None => None,
            Some(m) => {
                let span = m.span();
                let m = m.get_ref();
                let hidden = match &m.hidden {
                    Some(h) => {
                        let hv = *h.get_ref();
                        if hv == 0 || hv > lim.max_hidden {
                            return err(
                                "mlp.hidden",
                                h.span(),
                                format!("{hv} is out of range; allowed: 1..={}", lim.max_hidden),
                            );
                        }
                        hv
                    }
                    None => {
                        return err(
                            "mlp.hidden",
                            span,
                            format!("missing: an [mlp] table needs `hidden` (1..={})", lim.max_hidden),
                        )
                    }
                };
                let activation = m.activation.as_ref().map_or(Activation::Swiglu, |a| *a.get_ref());
                Some(MlpSpec { hidden, activation })
            }
        };
        let quant = match &raw.quant {
            None => QuantSpec::F32,
            Some(q) => {
                let q = q.get_ref();
                let weights = q.weights.as_ref().map_or(WeightQuant::F32, |w| *w.get_ref());
                let default_act = if weights == WeightQuant::Ternary { ActQuant::Int8 } else { ActQuant::F32 };
                let activations = match &q.activations {
                    Some(a) if *a.get_ref() == ActQuant::Int8 && weights == WeightQuant::F32 => {
                        return err(
                            "quant.activations",
                            a.span(),
                            "\"int8\" activations feed an integer product, which needs quantized weights; allowed: \"f32\", or set weights = \"int8\" or \"ternary\"".to_string(),
                        );
                    }
                    Some(a) => *a.get_ref(),
                    None => default_act,
                };
                QuantSpec { weights, activations }
            }
        };
        let spec = Spec {
            name,
            d_model: d,
            heads,
            vocab,
            seq_len,
            window,
            composition,
            memory,
            workspace_limit_mib,
            layers,
            residual: raw.residual.unwrap_or(false),
            norm,
            positions,
            mlp,
            tie_embeddings: raw.tie_embeddings.unwrap_or(false),
            quant,
        };
        let params = spec.param_count();
        if params > lim.max_params {
            return Err(SpecError::new(
                source,
                "d_model",
                Some(raw.d_model.span()),
                format!(
                    "the model would have {params} parameters; allowed: at most {} (a micro model): reduce d_model, vocab, layers, the memory levels or mlp.hidden",
                    lim.max_params
                ),
            ));
        }
        let f = crate::plan::footprint(&spec);
        if f.workspace > workspace_limit_mib << 20 {
            let (span, key) = match &raw.workspace_limit_mib {
                Some(m) => (m.span(), "workspace_limit_mib"),
                None => (raw.seq_len.span(), "seq_len"),
            };
            let history = if f.memory_history > 0 {
                format!(
                    ", of which {} is the memory history ({} level(s) x seq_len {seq_len} x d_model {d}^2 x M and S x 4 bytes)",
                    human_bytes(f.memory_history),
                    spec.levels()
                )
            } else {
                String::new()
            };
            return Err(SpecError::new(
                source,
                key,
                Some(span),
                format!(
                    "the training workspace would be {}{history}; allowed: at most {workspace_limit_mib} MiB (`workspace_limit_mib`): reduce seq_len, d_model or the memory levels, or raise workspace_limit_mib",
                    human_bytes(f.workspace)
                ),
            ));
        }
        Ok(spec)
    }

    /// Number of memory levels (0 without a memory branch).
    pub fn levels(&self) -> usize {
        self.memory.as_ref().map_or(0, |m| m.periods.len())
    }

    /// Whether a memory level has a period above 1: such levels train in
    /// the chunk-wise matrix form, whose scratch (`ChunkScratch`) the
    /// generated workspace then holds once.
    pub fn has_periodic_levels(&self) -> bool {
        self.memory.as_ref().is_some_and(|m| m.periods.iter().any(|&p| p > 1))
    }

    /// Parameter count implied by the sizes (the plan lists the tensors).
    pub fn param_count(&self) -> usize {
        let d = self.d_model;
        let embeddings = if self.tie_embeddings { 1 } else { 2 } * self.vocab * d;
        let per_level = match &self.memory {
            None => 0,
            Some(m) => 3 * d * d + 2 * (2 * d + 1) + if m.rule == Rule::Titans { 2 * d + 1 } else { 0 },
        };
        let norm = match self.norm {
            Norm::None => 0,
            Norm::Rms => d,
            Norm::Layer => 2 * d,
        };
        let mlp = self.mlp.map_or(0, |m| {
            let mats = if m.activation == Activation::Swiglu { 3 } else { 2 };
            mats * d * m.hidden + norm
        });
        let bias = if self.positions == Positions::Bias { self.heads * self.window } else { 0 };
        let block = 4 * d * d + bias + norm + self.levels() * per_level + mlp;
        embeddings + self.layers * block + norm
    }
}

/// `n` bytes in the largest binary unit that keeps it at least 1, e.g. `97.7 GiB`.
fn human_bytes(n: usize) -> String {
    let units = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut x = n as f64;
    let mut u = 0;
    while x >= 1024.0 && u + 1 < units.len() {
        x /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} bytes")
    } else {
        format!("{x:.1} {} ({n} bytes)", units[u])
    }
}

/// The field name of serde's "missing field `x`" message.
fn missing_field(message: &str) -> Option<&str> {
    message.trim().strip_prefix("missing field `")?.split('`').next()
}

/// A required key is absent. toml points at the table that lacks it (an
/// empty span at 0 for the top level), so the key path is that table's
/// path plus the field, and the message says what the table requires.
fn missing_key_error(source: &str, table: &str, span: Option<core::ops::Range<usize>>, field: &str) -> SpecError {
    if span.as_ref().is_none_or(|s| s.is_empty()) {
        let msg = "missing required key; the spec requires `d_model`, `heads`, `vocab` and `seq_len`";
        return SpecError::new(source, field, None, msg);
    }
    let msg = if table.starts_with("memory.levels") {
        format!("missing required key; each [[memory.levels]] requires `period` (1..={})", LIMITS.max_period)
    } else if table == "memory" {
        "missing required key; [memory] requires `rule` (\"delta\", \"titans\" or \"hebbian\") and at least one [[memory.levels]]"
            .to_string()
    } else {
        format!("missing required key `{field}`")
    };
    SpecError::new(source, format!("{table}.{field}"), span, msg)
}

/// The allowed words of an enum key, for messages.
fn enum_words(key: &str) -> Option<&'static str> {
    Some(match key {
        "memory.rule" => "\"delta\", \"titans\" or \"hebbian\"",
        "memory.composition" => "\"mag\", \"mal\" or \"none\"",
        "norm" => "\"none\", \"rms\" or \"layer\"",
        "positions" => "\"none\", \"rope\" or \"bias\"",
        "mlp.activation" => "\"swiglu\", \"gelu\" or \"relu\"",
        "quant.weights" => "\"f32\", \"int8\" or \"ternary\"",
        "quant.activations" => "\"f32\" or \"int8\"",
        _ => return None,
    })
}

/// Rewrites serde's wording into the spec's vocabulary where it helps.
/// Returns the key to report (`key`, except for a table written as an array
/// of tables) and the message.
fn describe_toml_error(message: &str, key: &str) -> (String, String) {
    // `[[mlp]]` / `[[memory]]`: serde reads the array as the table's fields
    // in order and fails on the first one with a message about that field.
    for table in ["mlp", "memory", "quant"] {
        if key.strip_prefix(table).is_some_and(|rest| rest.starts_with('[')) {
            let msg = format!("`[[{table}]]` is an array of tables; allowed: one [{table}] table");
            return (table.to_string(), msg);
        }
    }
    let mut m = message.trim().to_string();
    if m.starts_with("unknown field") {
        m = m.replace("expected one of", "allowed keys:").replace("expected `", "allowed keys: `");
    } else if m.starts_with("unknown variant") {
        m = m.replace("expected one of", "allowed:").replace("expected `", "allowed: `");
    } else if let Some(words) = enum_words(key) {
        // An enum key given something other than a string: toml's messages
        // ("wanted string or table", "expected table, found integer", ...)
        // are about how serde encodes enums, not about the spec.
        m = format!("invalid type, allowed: {words}");
    } else if m.starts_with("invalid type") || m.starts_with("invalid value") {
        // TOML's words for serde's kinds of value.
        m = m
            .replace("invalid type: sequence", "invalid type: array")
            .replace("invalid type: map", "invalid type: table");
        m = m.replace("expected usize", "allowed: a positive integer").replace("expected f64", "allowed: a number");
        m = m.replace("expected a boolean", "allowed: true or false");
        for table in [RawMemory::WHAT, RawMlp::WHAT, RawLevel::WHAT, RawQuant::WHAT] {
            m = m.replace(&format!("expected {table}"), &format!("allowed: {table}"));
        }
        m = m.replace("expected a sequence", "allowed: [[memory.levels]] tables");
        m = m.replace("expected a string", "allowed: a string");
    } else if m == "wanted string or table" {
        m = "invalid type, allowed: a string".to_string();
    }
    (key.to_string(), m)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MICRO: &str = "d_model = 64\nheads = 4\nvocab = 256\nseq_len = 32\nwindow = 16\n";

    fn parse_err(src: &str) -> SpecError {
        Spec::parse(src, "m").expect_err("spec should be rejected")
    }

    #[test]
    fn micro_parses_with_defaults() {
        let s = Spec::parse(MICRO, "micro").unwrap();
        assert_eq!((s.d_model, s.heads, s.vocab, s.seq_len, s.window), (64, 4, 256, 32, 16));
        assert_eq!(s.composition, Composition::None);
        assert_eq!(s.param_count(), 49_152);
        let s = Spec::parse("d_model = 8\nheads = 2\nvocab = 5\nseq_len = 6\n", "x").unwrap();
        assert_eq!(s.window, 6);
    }

    #[test]
    fn memory_defaults_follow_model_md() {
        let src = format!("{MICRO}[memory]\nrule = \"delta\"\n[[memory.levels]]\nperiod = 1\n");
        let s = Spec::parse(&src, "m").unwrap();
        assert_eq!(s.composition, Composition::Mag);
        let m = s.memory.unwrap();
        assert!(m.normalize_keys);
        assert_eq!((m.b_alpha, m.b_theta, m.b_eta), (-4.0, -2.0, 2.0));
        assert_eq!(m.periods, vec![1]);
    }

    #[test]
    fn heads_must_divide_d_model() {
        let e = parse_err("d_model = 64\nheads = 5\nvocab = 256\nseq_len = 32\n");
        assert_eq!((e.key.as_str(), e.line, e.column), ("heads", 2, 9));
        assert!(e.message.contains("does not divide"), "{e}");
        assert!(e.message.contains("1, 2, 4, 8, 16, 32, 64"), "{e}");
    }

    #[test]
    fn window_beyond_seq_len() {
        let e = parse_err("d_model = 8\nheads = 2\nvocab = 5\nseq_len = 6\nwindow = 7\n");
        assert_eq!((e.key.as_str(), e.line), ("window", 5));
        assert!(e.message.contains("1..=seq_len (6)"));
    }

    #[test]
    fn zero_and_absurd_sizes() {
        let e = parse_err("d_model = 0\nheads = 1\nvocab = 5\nseq_len = 6\n");
        assert_eq!((e.key.as_str(), e.line), ("d_model", 1));
        let e = parse_err("d_model = 8\nheads = 1\nvocab = 5\nseq_len = 100000\n");
        assert_eq!((e.key.as_str(), e.line), ("seq_len", 4));
        let e = parse_err("d_model = 8\nheads = 1\nvocab = 1\nseq_len = 6\n");
        assert_eq!(e.key, "vocab");
        let e = parse_err("d_model = 1024\nheads = 1\nvocab = 65536\nseq_len = 6\n");
        assert!(e.message.contains("parameters"), "{e}");
    }

    #[test]
    fn wrong_types_unknown_keys_and_variants_name_the_key() {
        let e = parse_err("d_model = \"64\"\nheads = 1\nvocab = 5\nseq_len = 6\n");
        assert_eq!((e.key.as_str(), e.line, e.column), ("d_model", 1, 11));
        assert!(e.message.contains("invalid type"), "{e}");
        let e = parse_err("d_model = 8\nheads = 1\nvocab = 5\nseq_len = 6\ndropout = 0.1\n");
        assert_eq!((e.key.as_str(), e.line, e.column), ("dropout", 5, 1));
        assert!(e.message.contains("allowed keys"), "{e}");
        let e = parse_err("d_model = 8\nheads = 1\nvocab = 5\nseq_len = 6\n[memory]\nrule = \"lstm\"\n[[memory.levels]]\nperiod = 1\n");
        assert_eq!((e.key.as_str(), e.line), ("memory.rule", 6));
        assert!(e.message.contains("`delta`, `titans`, `hebbian`"), "{e}");
        let e = parse_err("d_model = -8\nheads = 1\nvocab = 5\nseq_len = 6\n");
        assert_eq!(e.key, "d_model");
    }

    #[test]
    fn level_errors_point_at_the_level() {
        let src = format!(
            "{MICRO}[memory]\nrule = \"delta\"\n[[memory.levels]]\nperiod = 1\n[[memory.levels]]\nperiod = 0\n"
        );
        let e = parse_err(&src);
        assert_eq!((e.key.as_str(), e.line), ("memory.levels[1].period", 11));
        let src = format!("{MICRO}[memory]\nrule = \"delta\"\ncomposition = \"none\"\n[[memory.levels]]\nperiod = 1\n");
        assert_eq!(parse_err(&src).key, "memory.composition");
        let src = format!("{MICRO}[memory]\nrule = \"delta\"\n");
        assert_eq!(parse_err(&src).key, "memory.levels");
    }

    #[test]
    fn missing_keys_name_the_key_and_what_is_required() {
        let e = parse_err("d_model = 8\nvocab = 5\nseq_len = 6\n");
        assert_eq!((e.key.as_str(), e.span.clone()), ("heads", None));
        assert!(e.message.contains("requires `d_model`, `heads`, `vocab` and `seq_len`"), "{e}");
        assert!(!e.render("f.toml", "d_model = 8\n").contains('|'), "no snippet without a span");
        let e = parse_err(&format!("{MICRO}[memory]\n[[memory.levels]]\nperiod = 1\n"));
        assert_eq!((e.key.as_str(), e.line), ("memory.rule", 6));
        let e = parse_err(&format!("{MICRO}[memory]\nrule = \"delta\"\n[[memory.levels]]\n"));
        assert_eq!((e.key.as_str(), e.line), ("memory.levels[0].period", 8));
    }

    #[test]
    fn too_many_levels_points_at_the_first_extra_level() {
        let levels = "[[memory.levels]]\nperiod = 1\n".repeat(5);
        let e = parse_err(&format!("{MICRO}[memory]\nrule = \"delta\"\n{levels}"));
        assert_eq!((e.key.as_str(), e.line), ("memory.levels[4]", 16));
        assert!(e.message.contains("at most 4"), "{e}");
    }

    #[test]
    fn internal_type_names_do_not_leak() {
        let e = parse_err(&format!("{MICRO}memory = 3\n"));
        assert!(e.message.contains("allowed: a [memory] table"), "{e}");
        let e = parse_err(&format!("{MICRO}[memory]\nrule = 3\n[[memory.levels]]\nperiod = 1\n"));
        assert!(e.message.contains("\"delta\", \"titans\" or \"hebbian\""), "{e}");
        let e = parse_err(&format!("{MICRO}[memory]\nrule = \"delta\"\n[[memory.levels]]\nperiod = 1\nrate = 2\n"));
        assert!(e.message.contains("allowed keys: `period`"), "{e}");
    }

    #[test]
    fn workspace_limit_rejects_what_would_not_fit() {
        // d = 1024, T = 4096, three levels: the history alone is
        // 3 * 2 * 4096 * 1024^2 * 4 bytes = 96 GiB.
        let big = "d_model = 1024\nheads = 8\nvocab = 256\nseq_len = 4096\n[memory]\nrule = \"delta\"\n[[memory.levels]]\nperiod = 1\n[[memory.levels]]\nperiod = 4\n[[memory.levels]]\nperiod = 16\n";
        let e = parse_err(big);
        assert_eq!((e.key.as_str(), e.line), ("seq_len", 4), "{e}");
        assert!(e.message.contains("of which 96.0 GiB (103079215104 bytes) is the memory history"), "{e}");
        assert!(e.message.contains("at most 1024 MiB"), "{e}");
        // Raising the limit accepts it; a limit below a small model's workspace rejects that.
        assert!(Spec::parse(&format!("workspace_limit_mib = 200000\n{big}"), "m").is_ok());
        let e = parse_err(&format!("workspace_limit_mib = 50000\n{big}"));
        assert_eq!((e.key.as_str(), e.line), ("workspace_limit_mib", 1), "{e}");
        // micro's workspace is about 0.3 MiB.
        assert!(Spec::parse(&format!("workspace_limit_mib = 1\n{MICRO}"), "m").is_ok());
        assert_eq!(parse_err(&format!("workspace_limit_mib = 0\n{MICRO}")).key, "workspace_limit_mib");
    }

    #[test]
    fn names_must_be_identifiers() {
        let e = parse_err(&format!("name = \"my-model\"\n{MICRO}"));
        assert_eq!((e.key.as_str(), e.line), ("name", 1));
        let e = Spec::parse(MICRO, "my-model").unwrap_err();
        assert_eq!(e.key, "name");
        assert!(Spec::parse(MICRO, "fn").is_err());
    }

    // Blocks (docs/model.md, "Blocks"): `layers`, `residual`, `norm`,
    // `positions`, `[mlp]`, `tie_embeddings`. MICRO has five lines, so a key
    // appended to it is on line 6.

    #[test]
    fn block_keys_default_to_the_first_version() {
        let s = Spec::parse(MICRO, "micro").unwrap();
        assert_eq!(s.layers, 1);
        assert!(!s.residual);
        assert_eq!(s.norm, Norm::None);
        assert_eq!(s.positions, Positions::None);
        assert_eq!(s.mlp, None);
        assert!(!s.tie_embeddings);
        // 2 * V * d + 4 * d^2, as before the keys existed.
        assert_eq!(s.param_count(), 2 * 256 * 64 + 4 * 64 * 64);
        assert_eq!(s.param_count(), 49_152);
        // Writing every default out is the same spec.
        let explicit = format!(
            "{MICRO}layers = 1\nresidual = false\nnorm = \"none\"\npositions = \"none\"\ntie_embeddings = false\n"
        );
        assert_eq!(Spec::parse(&explicit, "micro").unwrap(), s);
        // The memory variant keeps its count too: one delta level adds
        // wk, wv, wq (3 d^2) and the alpha and theta gates (2 (2d + 1)).
        let mem =
            Spec::parse(&format!("{MICRO}[memory]\nrule = \"delta\"\n[[memory.levels]]\nperiod = 1\n"), "m").unwrap();
        assert_eq!((mem.layers, mem.mlp), (1, None));
        assert_eq!(mem.param_count(), 49_152 + 3 * 64 * 64 + 2 * (2 * 64 + 1));
    }

    #[test]
    fn every_block_value_parses() {
        let parse = |extra: &str| {
            Spec::parse(&format!("{MICRO}{extra}"), "m").unwrap_or_else(|e| panic!("{extra:?} rejected: {e}"))
        };
        assert_eq!(parse("layers = 1\n").layers, 1);
        assert_eq!(parse("layers = 3\n").layers, 3);
        assert_eq!(parse("layers = 16\n").layers, 16);
        assert!(parse("residual = true\n").residual);
        assert!(!parse("residual = false\n").residual);
        assert!(parse("tie_embeddings = true\n").tie_embeddings);
        assert!(!parse("tie_embeddings = false\n").tie_embeddings);
        for norm in [Norm::None, Norm::Rms, Norm::Layer] {
            assert_eq!(parse(&format!("norm = \"{}\"\n", norm.as_str())).norm, norm);
        }
        // MICRO's head_dim is 64 / 4 = 16, even, so rope is allowed.
        for positions in [Positions::None, Positions::Rope, Positions::Bias] {
            assert_eq!(parse(&format!("positions = \"{}\"\n", positions.as_str())).positions, positions);
        }
        for activation in [Activation::Swiglu, Activation::Gelu, Activation::Relu] {
            let s = parse(&format!("[mlp]\nhidden = 32\nactivation = \"{}\"\n", activation.as_str()));
            assert_eq!(s.mlp, Some(MlpSpec { hidden: 32, activation }));
        }
        // `activation` defaults to swiglu; `hidden` spans 1..=8192; an inline table works too.
        assert_eq!(parse("[mlp]\nhidden = 1\n").mlp, Some(MlpSpec { hidden: 1, activation: Activation::Swiglu }));
        assert_eq!(parse("[mlp]\nhidden = 8192\n").mlp.map(|m| m.hidden), Some(8192));
        assert_eq!(
            parse("mlp = { hidden = 5, activation = \"relu\" }\n").mlp,
            Some(MlpSpec { hidden: 5, activation: Activation::Relu })
        );
        // Everything at once.
        let s = parse("layers = 4\nresidual = true\nnorm = \"layer\"\npositions = \"rope\"\ntie_embeddings = true\n[mlp]\nhidden = 128\nactivation = \"gelu\"\n");
        assert_eq!(
            (s.layers, s.residual, s.norm, s.positions, s.tie_embeddings),
            (4, true, Norm::Layer, Positions::Rope, true)
        );
        assert_eq!(s.mlp, Some(MlpSpec { hidden: 128, activation: Activation::Gelu }));
    }

    #[test]
    fn layers_out_of_range() {
        let e = parse_err(&format!("{MICRO}layers = 0\n"));
        assert_eq!((e.key.as_str(), e.line, e.column), ("layers", 6, 10));
        assert!(e.message.contains("0 is out of range; allowed: 1..=16"), "{e}");
        let e = parse_err(&format!("{MICRO}layers = 17\n"));
        assert_eq!((e.key.as_str(), e.line, e.column), ("layers", 6, 10));
        assert!(e.message.contains("17 is out of range; allowed: 1..=16"), "{e}");
        let e = parse_err(&format!("{MICRO}layers = -1\n"));
        assert_eq!((e.key.as_str(), e.line), ("layers", 6));
        assert!(e.message.contains("allowed: a positive integer"), "{e}");
    }

    #[test]
    fn rope_needs_an_even_head_dim() {
        // head_dim = 12 / 4 = 3.
        let odd = "d_model = 12\nheads = 4\nvocab = 5\nseq_len = 6\n";
        let e = parse_err(&format!("{odd}positions = \"rope\"\n"));
        assert_eq!((e.key.as_str(), e.line, e.column), ("positions", 5, 13));
        assert!(e.message.contains("head_dim = d_model / heads = 12 / 4 = 3 is odd"), "{e}");
        assert!(e.message.contains("allowed: an even head_dim"), "{e}");
        // The other schemes do not care; an even head_dim (12 / 6 = 2) takes rope.
        assert!(Spec::parse(&format!("{odd}positions = \"bias\"\n"), "m").is_ok());
        assert!(Spec::parse(&format!("{odd}positions = \"none\"\n"), "m").is_ok());
        let even = "d_model = 12\nheads = 6\nvocab = 5\nseq_len = 6\npositions = \"rope\"\n";
        assert_eq!(Spec::parse(even, "m").unwrap().positions, Positions::Rope);
        // head_dim 1 (d_model = heads) is odd too.
        let e = parse_err("d_model = 4\nheads = 4\nvocab = 5\nseq_len = 6\npositions = \"rope\"\n");
        assert!(e.message.contains("= 1 is odd"), "{e}");
    }

    #[test]
    fn quant_table_defaults_and_errors() {
        let parse = |extra: &str| Spec::parse(&format!("{MICRO}{extra}"), "m");
        assert_eq!(parse("").map(|s| s.quant), Ok(QuantSpec::F32));
        let q = |w, a| QuantSpec { weights: w, activations: a };
        for (extra, want) in [
            ("[quant]\n", q(WeightQuant::F32, ActQuant::F32)),
            ("[quant]\nweights = \"int8\"\n", q(WeightQuant::Int8, ActQuant::F32)),
            ("[quant]\nweights = \"int8\"\nactivations = \"int8\"\n", q(WeightQuant::Int8, ActQuant::Int8)),
            // Ternary weights default to int8 activations (BitNet b1.58), and may keep f32 ones.
            ("[quant]\nweights = \"ternary\"\n", q(WeightQuant::Ternary, ActQuant::Int8)),
            ("[quant]\nweights = \"ternary\"\nactivations = \"f32\"\n", q(WeightQuant::Ternary, ActQuant::F32)),
        ] {
            assert_eq!(parse(extra).map(|s| s.quant), Ok(want), "{extra}");
        }
        assert!(parse("[quant]\nweights = \"int8\"\n").is_ok_and(|s| s.quant.is_quantized()));
        // int8 activations need quantized weights: the error points at `activations`.
        let e = parse_err(&format!("{MICRO}[quant]\nactivations = \"int8\"\n"));
        assert_eq!((e.key.as_str(), e.line, e.column), ("quant.activations", 7, 15));
        assert!(e.message.contains("needs quantized weights"), "{}", e.message);
        let e = parse_err(&format!("{MICRO}[quant]\nweights = \"int4\"\n"));
        assert_eq!((e.key.as_str(), e.line), ("quant.weights", 7));
        assert!(e.message.contains("`f32`, `int8`, `ternary`"), "{}", e.message);
        let e = parse_err(&format!("{MICRO}[quant]\nweights = 8\n"));
        assert_eq!(e.key, "quant.weights");
        assert!(e.message.contains("\"f32\", \"int8\" or \"ternary\""), "{}", e.message);
        let e = parse_err(&format!("{MICRO}[quant]\nbits = 4\n"));
        assert_eq!((e.key.as_str(), e.line), ("quant.bits", 7));
        let e = parse_err(&format!("{MICRO}quant = \"int8\"\n"));
        assert_eq!(e.key, "quant");
        assert!(e.message.contains("a [quant] table"), "{}", e.message);
    }

    #[test]
    fn mlp_errors_point_at_the_mlp_key() {
        // No `hidden`: the error points at the [mlp] header.
        let e = parse_err(&format!("{MICRO}[mlp]\nactivation = \"gelu\"\n"));
        assert_eq!((e.key.as_str(), e.line, e.column), ("mlp.hidden", 6, 1));
        assert!(e.message.contains("needs `hidden` (1..=8192)"), "{e}");
        let e = parse_err(&format!("{MICRO}mlp = {{}}\n"));
        assert_eq!((e.key.as_str(), e.line), ("mlp.hidden", 6));
        let e = parse_err(&format!("{MICRO}[mlp]\nhidden = 0\n"));
        assert_eq!((e.key.as_str(), e.line, e.column), ("mlp.hidden", 7, 10));
        assert!(e.message.contains("0 is out of range; allowed: 1..=8192"), "{e}");
        let e = parse_err(&format!("{MICRO}[mlp]\nhidden = 9000\n"));
        assert_eq!((e.key.as_str(), e.line, e.column), ("mlp.hidden", 7, 10));
        assert!(e.message.contains("9000 is out of range; allowed: 1..=8192"), "{e}");
        let e = parse_err(&format!("{MICRO}[mlp]\nhidden = 8\nactivation = \"tanh\"\n"));
        assert_eq!((e.key.as_str(), e.line, e.column), ("mlp.activation", 8, 14));
        assert!(e.message.contains("unknown variant `tanh`, allowed: `swiglu`, `gelu`, `relu`"), "{e}");
        let e = parse_err(&format!("{MICRO}[mlp]\nhidden = 8\nwidth = 3\n"));
        assert_eq!((e.key.as_str(), e.line), ("mlp.width", 8));
        assert!(e.message.contains("allowed keys: `hidden` or `activation`"), "{e}");
    }

    #[test]
    fn unknown_norm_and_positions_list_the_allowed_values() {
        let e = parse_err(&format!("{MICRO}norm = \"batch\"\n"));
        assert_eq!((e.key.as_str(), e.line, e.column), ("norm", 6, 8));
        assert!(e.message.contains("unknown variant `batch`, allowed: `none`, `rms`, `layer`"), "{e}");
        let e = parse_err(&format!("{MICRO}positions = \"alibi\"\n"));
        assert_eq!((e.key.as_str(), e.line, e.column), ("positions", 6, 13));
        assert!(e.message.contains("unknown variant `alibi`, allowed: `none`, `rope`, `bias`"), "{e}");
        // The words are lowercase, like the other enum keys.
        assert_eq!(parse_err(&format!("{MICRO}norm = \"RMS\"\n")).key, "norm");
    }

    #[test]
    fn block_keys_of_the_wrong_type() {
        let cases = [
            ("norm = 3\n", "norm", 8, "invalid type, allowed: \"none\", \"rms\" or \"layer\""),
            ("positions = 3\n", "positions", 13, "invalid type, allowed: \"none\", \"rope\" or \"bias\""),
            ("residual = \"yes\"\n", "residual", 12, "invalid type: string \"yes\", allowed: true or false"),
            ("tie_embeddings = 1\n", "tie_embeddings", 18, "invalid type: integer `1`, allowed: true or false"),
            ("layers = \"2\"\n", "layers", 10, "invalid type: string \"2\", allowed: a positive integer"),
            ("layers = 2.5\n", "layers", 10, "allowed: a positive integer"),
            ("mlp = 3\n", "mlp", 7, "invalid type: integer `3`, allowed: an [mlp] table"),
            ("mlp = [8]\n", "mlp", 7, "invalid type: array, allowed: an [mlp] table"),
        ];
        for (extra, key, column, fragment) in cases {
            let e = parse_err(&format!("{MICRO}{extra}"));
            assert_eq!((e.key.as_str(), e.line, e.column), (key, 6, column), "{extra:?}: {e}");
            assert!(e.message.contains(fragment), "{extra:?}: {e}");
        }
        let e = parse_err(&format!("{MICRO}[mlp]\nhidden = \"8\"\n"));
        assert_eq!((e.key.as_str(), e.line, e.column), ("mlp.hidden", 7, 10));
        assert!(e.message.contains("allowed: a positive integer"), "{e}");
        let e = parse_err(&format!("{MICRO}[mlp]\nhidden = 8\nactivation = 3\n"));
        assert_eq!((e.key.as_str(), e.line, e.column), ("mlp.activation", 8, 14));
        assert!(e.message.contains("invalid type, allowed: \"swiglu\", \"gelu\" or \"relu\""), "{e}");
        // A table written as an array of tables.
        let e = parse_err(&format!("{MICRO}[[mlp]]\nhidden = 8\n"));
        assert_eq!((e.key.as_str(), e.line), ("mlp", 6));
        assert!(e.message.contains("`[[mlp]]` is an array of tables; allowed: one [mlp] table"), "{e}");
        let e = parse_err(&format!("{MICRO}[[memory]]\nrule = \"delta\"\n"));
        assert_eq!(e.key, "memory");
        assert!(e.message.contains("allowed: one [memory] table"), "{e}");
    }

    #[test]
    fn no_message_names_an_internal_type() {
        let bad = [
            "memory = 3\n",
            "memory = []\n",
            "[[memory]]\nrule = \"delta\"\n",
            "[memory]\nrule = \"delta\"\nlevels = 3\n",
            "[memory]\nrule = \"delta\"\nlevels = [3]\n",
            "[memory]\nrule = \"delta\"\nlevels = [[]]\n",
            "[memory]\nrule = \"delta\"\n[memory.levels]\nperiod = 1\n",
            "mlp = 3\n",
            "mlp = []\n",
            "mlp = [8]\n",
            "mlp = \"gelu\"\n",
            "[[mlp]]\nhidden = 8\n",
            "[mlp]\nhidden = [8]\n",
            "[mlp]\nhidden = 8\nactivation = [\"gelu\"]\n",
            "[mlp]\nhidden = 8\nactivation = { gelu = 1 }\n",
            "norm = { rms = 1 }\n",
            "norm = {}\n",
            "norm = { rms = {}, layer = {} }\n",
            "positions = true\n",
            "positions = []\n",
            "residual = {}\n",
        ];
        for extra in bad {
            let e = parse_err(&format!("{MICRO}{extra}"));
            for internal in ["Raw", "struct", "Spanned", "usize", "enum", "sequence", " map"] {
                assert!(!e.message.contains(internal), "{extra:?} leaks `{internal}`: {e}");
            }
            assert!(e.message.contains("allowed"), "{extra:?} does not say what is allowed: {e}");
        }
    }

    #[test]
    fn param_count_of_deep_specs_matches_a_hand_count() {
        let src = "d_model = 8\nheads = 2\nvocab = 5\nseq_len = 6\nwindow = 4\nlayers = 2\nnorm = \"rms\"\npositions = \"bias\"\n[mlp]\nhidden = 12\nactivation = \"gelu\"\n";
        let s = Spec::parse(src, "deep").unwrap();
        let hand = 5 * 8 // embed [V, d]
            + 2 * (8 // norm_a.g [d]
                + 4 * 8 * 8 // attn.wq, wk, wv, wo [d, d]
                + 2 * 4 // attn.pos_bias [heads, window]
                + 8 // norm_m.g [d]
                + 12 * 8 // mlp.w_up [hidden, d] (gelu: no w_gate)
                + 8 * 12) // mlp.w_down [d, hidden]
            + 8 // norm_f.g [d]
            + 5 * 8; // unembed [V, d] (untied)
        assert_eq!(hand, 1032);
        assert_eq!(s.param_count(), hand);
        assert_eq!(crate::plan::Plan::new(&s).param_count, hand);

        // Layer norm (g and beta), swiglu (w_gate too), a titans level per
        // block, rope (no tensors), tied embeddings (no unembed).
        let src = "d_model = 8\nheads = 2\nvocab = 5\nseq_len = 6\nlayers = 3\nresidual = true\nnorm = \"layer\"\npositions = \"rope\"\ntie_embeddings = true\n[mlp]\nhidden = 4\n[memory]\nrule = \"titans\"\n[[memory.levels]]\nperiod = 2\n";
        let s = Spec::parse(src, "deep").unwrap();
        let hand = 5 * 8 // embed [V, d], also the output matrix
            + 3 * (2 * 8 // norm_a.g, norm_a.beta [d]
                + 4 * 8 * 8 // attn.wq, wk, wv, wo [d, d]
                + 3 * 8 * 8 // mem.0.wk, wv, wq [d, d]
                + 3 * (2 * 8 + 1) // mem.0.w_{alpha,theta,eta} [2d], b_{alpha,theta,eta} [1]
                + 2 * 8 // norm_m.g, norm_m.beta [d]
                + 3 * 4 * 8) // mlp.w_up, w_gate [hidden, d], w_down [d, hidden]
            + 2 * 8; // norm_f.g, norm_f.beta [d]
        assert_eq!(hand, 1937);
        assert_eq!(s.param_count(), hand);
        assert_eq!(crate::plan::Plan::new(&s).param_count, hand);
    }

    #[test]
    fn too_many_parameters_names_what_to_reduce() {
        // 16 blocks of 4 * 64^2 + 3 * 64 * 8192 parameters: about 25 M.
        let e = parse_err(&format!("{MICRO}layers = 16\n[mlp]\nhidden = 8192\n"));
        assert_eq!(e.key, "d_model");
        assert!(e.message.contains("the model would have 25460736 parameters; allowed: at most 16777216"), "{e}");
        assert!(e.message.contains("layers") && e.message.contains("mlp.hidden"), "{e}");
    }

    #[test]
    fn tables_and_words_have_one_spelling() {
        // serde's derive would read a struct from an array of its fields and
        // an enum from a one-key table; the spec has one spelling for each.
        let cases = [
            ("mlp = [8, \"gelu\"]\n", "mlp", "invalid type: array, allowed: an [mlp] table"),
            (
                "memory = [\"delta\", \"mag\", true, 1.0, 1.0, 1.0, [{ period = 1 }]]\n",
                "memory",
                "invalid type: array, allowed: a [memory] table",
            ),
            (
                "[memory]\nrule = \"delta\"\nlevels = [[1]]\n",
                "memory.levels",
                "invalid type: array, allowed: a [[memory.levels]] table with a `period`",
            ),
            ("norm = { rms = {} }\n", "norm", "invalid type, allowed: \"none\", \"rms\" or \"layer\""),
            ("positions = { rope = {} }\n", "positions", "invalid type, allowed: \"none\", \"rope\" or \"bias\""),
        ];
        for (extra, key, fragment) in cases {
            let e = parse_err(&format!("{MICRO}{extra}"));
            assert_eq!(e.key, key, "{extra:?}: {e}");
            assert!(e.message.contains(fragment), "{extra:?}: {e}");
        }
    }
}
