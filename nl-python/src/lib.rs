//! `nl-python`: Python bindings (PyO3 + rust-numpy) for any model generated
//! by `nl_model!`.
//!
//! An extension module is a tiny crate whose `#[pymodule]` calls
//! [`register`] with its generated model (`cargo nl python SPEC` writes that
//! crate and builds a wheel with maturin; the exact template is in
//! `TEMPLATE.md` beside this crate's `Cargo.toml`, the Python API in
//! `docs/python.md`):
//!
//! ```ignore
//! nl_macros::nl_model!("tiny.toml");
//!
//! #[pyo3::pymodule]
//! #[pyo3(name = "nl_tiny")]
//! fn pymodule_init(m: &pyo3::Bound<'_, pyo3::types::PyModule>) -> pyo3::PyResult<()> {
//!     nl_python::register::<tiny::Model>(m)
//! }
//! ```
//!
//! The module then has two classes, `Model` (parameters, a training
//! workspace and a gradient buffer, in `float32` or `float64`) and `Stream`
//! (a serving state with its own copy of the parameters).
//!
//! # How the generic model reaches the classes
//!
//! A `#[pyclass]` cannot be generic, so the model is erased: `Holder<M, S>`
//! (boxed `Params`, `Workspace` and gradients of model `M` in scalar `S`)
//! implements the object-safe `ErasedModel`, and the class holds a
//! `Box<dyn ErasedModel>`; likewise for streams. Constructors (`Model(...)`,
//! `Model.load(...)`) have no instance to dispatch on, so [`register`]
//! stores the model's constants and two constructor functions in a
//! process-wide static of this crate. Each extension module is its own
//! shared library with its own copy of that static, so this means *one model
//! per extension module*: registering a second, different model in the same
//! module is an error.
//!
//! # Threads
//!
//! The classes are ordinary (`Send + Sync`) pyclasses, not `unsendable`: the
//! generated `Params`, `Workspace` and `Stream` structs are arrays of floats
//! and integers, and [`register`]'s bounds check that they are `Send + Sync`.
//! The long computations (`loss`, `loss_and_grad`, `logits`, `feed`) run
//! with the Python thread state detached (the GIL released), so other Python
//! threads run meanwhile; a second call on the *same* object from another
//! thread during that time raises PyO3's "already borrowed" error.
//!
//! Large structs are allocated with [`nl_runtime::boxed_zeroed`], never on
//! the stack. Every input from Python is validated before it reaches the
//! model (whose `loss` panics on an out-of-range token): bad input raises
//! `ValueError` (or `TypeError` where the type is wrong), never a panic.
#![warn(missing_docs)]

use std::any::TypeId;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use nl_runtime::checkpoint::{self, CheckpointError};
use nl_runtime::{boxed_zeroed, Flat, Model, Scalar, TensorInfo};
use numpy::{
    Element, PyArray1, PyArrayDescrMethods, PyArrayDyn, PyArrayMethods, PyUntypedArray, PyUntypedArrayMethods,
};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyFloat, PyModule, PyTuple};

// ------------------------------------------------------------------ registry

/// The scalar type a `Model` computes in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dtype {
    F32,
    F64,
}

impl Dtype {
    fn parse(s: &str) -> PyResult<Dtype> {
        match s {
            "float32" => Ok(Dtype::F32),
            "float64" => Ok(Dtype::F64),
            _ => Err(PyValueError::new_err(format!("dtype must be \"float32\" or \"float64\", not {s:?}"))),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "float32",
            Dtype::F64 => "float64",
        }
    }
}

/// What the classes need to know of the registered model: its constants
/// and how to build a holder.
struct Registered {
    model: TypeId,
    name: &'static str,
    spec: &'static str,
    spec_sha256: &'static str,
    d_model: usize,
    heads: usize,
    vocab: usize,
    seq_len: usize,
    window: usize,
    layers: usize,
    levels: usize,
    param_count: usize,
    tensors: &'static [TensorInfo],
    init: fn(u64, Dtype) -> Box<dyn ErasedModel>,
    load: LoadFn,
}

/// Builds a model holder from a checkpoint file.
type LoadFn = fn(&Path, Dtype) -> Result<Box<dyn ErasedModel>, CheckpointError>;

static REGISTERED: OnceLock<Registered> = OnceLock::new();

fn registered() -> PyResult<&'static Registered> {
    REGISTERED.get().ok_or_else(|| PyRuntimeError::new_err("nl_python: no model registered in this module"))
}

/// Adds the classes `Model` and `Stream` for model `M` to the extension
/// module `m` (call it from the module's `#[pymodule]` function).
///
/// One model per extension module: the constructors find the model through
/// a static of this crate (see the crate docs), so registering a different
/// model in the same shared library fails with `RuntimeError`.
///
/// The bounds hold for every generated model (their structs are arrays of
/// floats and integers); they let the classes be used from any Python thread.
///
/// # Errors
/// A second, different model; or PyO3's errors adding the classes.
pub fn register<M: Model>(m: &Bound<'_, PyModule>) -> PyResult<()>
where
    M::Params<f32>: Send + Sync,
    M::Params<f64>: Send + Sync,
    M::Workspace<f32>: Send + Sync,
    M::Workspace<f64>: Send + Sync,
    M::Stream<f32>: Send + Sync,
    M::Stream<f64>: Send + Sync,
{
    let reg = REGISTERED.get_or_init(|| Registered {
        model: TypeId::of::<M>(),
        name: M::NAME,
        spec: M::SPEC,
        spec_sha256: M::SPEC_SHA256,
        d_model: M::D,
        heads: M::HEADS,
        vocab: M::VOCAB,
        seq_len: M::SEQ,
        window: M::WINDOW,
        layers: M::LAYERS,
        levels: M::LEVELS,
        param_count: M::PARAM_COUNT,
        tensors: M::TENSORS,
        init: init_holder::<M>,
        load: load_holder::<M>,
    });
    if reg.model != TypeId::of::<M>() {
        return Err(PyRuntimeError::new_err(format!(
            "nl_python::register: this extension module already holds model `{}`; \
             register one model per module (`{}` given)",
            reg.name,
            M::NAME
        )));
    }
    m.add_class::<PyModel>()?;
    m.add_class::<PyStream>()?;
    // `nl_tiny.Model` rather than `builtins.Model` in reprs and tracebacks.
    let module_name = m.name()?;
    for class in ["Model", "Stream"] {
        m.getattr(class)?.setattr("__module__", &module_name)?;
    }
    m.add("__doc__", format!("nl model `{}` ({} parameters): classes Model and Stream.", M::NAME, M::PARAM_COUNT))?;
    Ok(())
}

fn init_holder<M: Model>(seed: u64, dtype: Dtype) -> Box<dyn ErasedModel>
where
    M::Params<f32>: Send + Sync,
    M::Params<f64>: Send + Sync,
    M::Workspace<f32>: Send + Sync,
    M::Workspace<f64>: Send + Sync,
    M::Stream<f32>: Send + Sync,
    M::Stream<f64>: Send + Sync,
{
    match dtype {
        Dtype::F32 => Box::new(Holder::<M, f32>::init(seed)),
        Dtype::F64 => Box::new(Holder::<M, f64>::init(seed)),
    }
}

fn load_holder<M: Model>(path: &Path, dtype: Dtype) -> Result<Box<dyn ErasedModel>, CheckpointError>
where
    M::Params<f32>: Send + Sync,
    M::Params<f64>: Send + Sync,
    M::Workspace<f32>: Send + Sync,
    M::Workspace<f64>: Send + Sync,
    M::Stream<f32>: Send + Sync,
    M::Stream<f64>: Send + Sync,
{
    Ok(match dtype {
        Dtype::F32 => Box::new(Holder::<M, f32>::load(path)?),
        Dtype::F64 => Box::new(Holder::<M, f64>::load(path)?),
    })
}

/// A checkpoint error as a Python exception: the file system's errors as
/// `OSError` (its subclass for the kind, e.g. `FileNotFoundError`), a
/// rejected checkpoint as `ValueError`; the message is the error's `Display`.
fn checkpoint_err(e: CheckpointError) -> PyErr {
    match &e {
        CheckpointError::Io { source, .. } => PyErr::from(std::io::Error::new(source.kind(), e.to_string())),
        _ => PyValueError::new_err(e.to_string()),
    }
}

// ------------------------------------------------------------------ erasure

/// A model's parameters, workspace and gradients in one scalar type.
trait ErasedModel: Send + Sync {
    fn dtype(&self) -> Dtype;
    /// Every tensor as a new numpy array of the model's dtype.
    fn params<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>>;
    /// Sets the tensors named in `d` (all checked before any is written).
    fn set_params(&mut self, d: &Bound<'_, PyDict>) -> PyResult<()>;
    /// The loss of each of the `tokens.len() / (SEQ + 1)` sequences (tokens validated).
    fn losses(&mut self, py: Python<'_>, tokens: &[u32]) -> Vec<f64>;
    /// Mean loss and mean gradient over the sequences of `tokens` (at least one; validated).
    fn loss_and_grad<'py>(&mut self, py: Python<'py>, tokens: &[u32]) -> PyResult<(f64, Bound<'py, PyDict>)>;
    /// The `[SEQ, VOCAB]` logits of one sequence (validated).
    fn logits<'py>(&mut self, py: Python<'py>, tokens: &[u32]) -> PyResult<Bound<'py, PyAny>>;
    fn save(&self, path: &Path) -> Result<(), CheckpointError>;
    /// A reset stream with a copy of the parameters.
    fn stream(&self) -> Box<dyn ErasedStream>;
}

/// A streaming state with its own parameters.
trait ErasedStream: Send + Sync {
    fn dtype(&self) -> Dtype;
    /// `try_step`; the logits as a numpy array. An out-of-range token: `ValueError`, nothing changed.
    fn step<'py>(&mut self, py: Python<'py>, token: u32) -> PyResult<Bound<'py, PyAny>>;
    /// The surprise in bits of `token` under the last logits (`None` before the first step).
    fn surprise(&self, token: u32) -> Option<f64>;
    /// Steps every token (validated) and returns the surprise of each next one.
    fn feed(&mut self, py: Python<'_>, tokens: &[u32]) -> Vec<f64>;
    fn reset(&mut self);
    /// Tokens stepped since the last reset.
    fn position(&self) -> u64;
}

struct Holder<M: Model, S: Scalar> {
    params: Box<M::Params<S>>,
    ws: Box<M::Workspace<S>>,
    grads: Box<M::Params<S>>,
}

/// The scalar types of the classes: `f32` and `f64`.
trait PyScalar: Scalar + Element {
    const PY_DTYPE: Dtype;
}

impl PyScalar for f32 {
    const PY_DTYPE: Dtype = Dtype::F32;
}

impl PyScalar for f64 {
    const PY_DTYPE: Dtype = Dtype::F64;
}

/// The tensors of a flat parameter vector as a dict of shaped numpy arrays.
fn tensor_dict<'py, S: PyScalar>(py: Python<'py>, tensors: &[TensorInfo], flat: &[S]) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    for t in tensors {
        let values = flat.get(t.offset..t.offset + t.len).ok_or_else(|| {
            PyRuntimeError::new_err(format!("tensor `{}` lies outside the parameters (a generator bug)", t.name))
        })?;
        d.set_item(t.name, PyArray1::from_slice(py, values).reshape(t.shape)?)?;
    }
    Ok(d)
}

impl<M: Model, S: PyScalar> Holder<M, S>
where
    M::Params<S>: Send + Sync,
    M::Workspace<S>: Send + Sync,
    M::Stream<S>: Send + Sync,
{
    fn empty() -> Self {
        Holder { params: boxed_zeroed(), ws: boxed_zeroed(), grads: boxed_zeroed() }
    }

    fn init(seed: u64) -> Self {
        let mut h = Self::empty();
        M::init(&mut *h.params, seed);
        h
    }

    fn load(path: &Path) -> Result<Self, CheckpointError> {
        let mut h = Self::empty();
        checkpoint::load::<M, S>(path, &mut *h.params)?;
        Ok(h)
    }
}

impl<M: Model, S: PyScalar> ErasedModel for Holder<M, S>
where
    M::Params<S>: Send + Sync,
    M::Workspace<S>: Send + Sync,
    M::Stream<S>: Send + Sync,
{
    fn dtype(&self) -> Dtype {
        S::PY_DTYPE
    }

    fn params<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        tensor_dict(py, M::TENSORS, self.params.as_flat())
    }

    fn set_params(&mut self, d: &Bound<'_, PyDict>) -> PyResult<()> {
        let mut staged: Vec<(&TensorInfo, Vec<S>)> = Vec::with_capacity(d.len());
        for (key, value) in d.iter() {
            let name: String = key
                .extract()
                .map_err(|_| PyValueError::new_err(format!("set_params: a key is not a tensor name (str): {key}")))?;
            let Some(t) = M::TENSORS.iter().find(|t| t.name == name) else {
                let names: Vec<&str> = M::TENSORS.iter().map(|t| t.name).collect();
                return Err(PyValueError::new_err(format!(
                    "set_params: unknown tensor `{name}`; this model's tensors are {}",
                    names.join(", ")
                )));
            };
            // numpy.asarray(value, dtype): converts any numeric array or nested sequence.
            let array = numpy::get_array_module(d.py())?
                .call_method1("asarray", (&value, S::PY_DTYPE.name()))
                .and_then(|a| a.cast_into::<PyArrayDyn<S>>().map_err(PyErr::from))
                .map_err(|e| {
                    PyValueError::new_err(format!(
                        "set_params: tensor `{name}` is not convertible to a {} array: {e}",
                        S::PY_DTYPE.name()
                    ))
                })?;
            let array = array.readonly();
            if array.shape() != t.shape {
                return Err(PyValueError::new_err(format!(
                    "set_params: tensor `{name}` has shape {:?}, expected {:?}",
                    array.shape(),
                    t.shape
                )));
            }
            // Logical (row-major) order, whatever the array's strides.
            staged.push((t, array.as_array().iter().copied().collect()));
        }
        let flat = self.params.as_flat_mut();
        for (t, values) in staged {
            if let Some(dst) = flat.get_mut(t.offset..t.offset + t.len) {
                dst.copy_from_slice(&values);
            }
        }
        Ok(())
    }

    fn losses(&mut self, py: Python<'_>, tokens: &[u32]) -> Vec<f64> {
        let Holder { params, ws, .. } = self;
        py.detach(|| tokens.chunks_exact(M::SEQ + 1).map(|seq| M::loss(&**params, seq, &mut **ws).to_f64()).collect())
    }

    fn loss_and_grad<'py>(&mut self, py: Python<'py>, tokens: &[u32]) -> PyResult<(f64, Bound<'py, PyDict>)> {
        let Holder { params, ws, grads } = self;
        let rows = tokens.len() / (M::SEQ + 1);
        let loss = py.detach(|| {
            grads.as_flat_mut().fill(S::ZERO);
            let sum = M::loss_and_grad_batch(&**params, tokens, &mut **ws, &mut **grads);
            if rows > 1 {
                let n = S::from_usize(rows);
                grads.as_flat_mut().iter_mut().for_each(|g| *g /= n);
            }
            sum.to_f64() / rows as f64
        });
        Ok((loss, tensor_dict(py, M::TENSORS, grads.as_flat())?))
    }

    fn logits<'py>(&mut self, py: Python<'py>, tokens: &[u32]) -> PyResult<Bound<'py, PyAny>> {
        let Holder { params, ws, .. } = self;
        py.detach(|| M::loss(&**params, tokens, &mut **ws));
        Ok(PyArray1::from_slice(py, M::logits(&**ws)).reshape([M::SEQ, M::VOCAB])?.into_any())
    }

    fn save(&self, path: &Path) -> Result<(), CheckpointError> {
        checkpoint::save::<M, S>(path, &*self.params)
    }

    fn stream(&self) -> Box<dyn ErasedStream> {
        let mut params = boxed_zeroed::<M::Params<S>>();
        params.as_flat_mut().copy_from_slice(self.params.as_flat());
        let mut state = boxed_zeroed::<M::Stream<S>>();
        M::reset(&mut *state);
        Box::new(StreamHolder::<M, S> { params, state, last: Vec::new(), position: 0 })
    }
}

struct StreamHolder<M: Model, S: Scalar> {
    params: Box<M::Params<S>>,
    state: Box<M::Stream<S>>,
    /// The logits of the last step (empty before the first).
    last: Vec<S>,
    position: u64,
}

/// `-log2 softmax(logits)[token]`, in `f64` with the maximum subtracted.
fn surprise_bits<S: Scalar>(logits: &[S], token: usize) -> Option<f64> {
    let target = logits.get(token)?.to_f64();
    let max = logits.iter().map(|l| l.to_f64()).fold(f64::NEG_INFINITY, f64::max);
    let sum: f64 = logits.iter().map(|l| (l.to_f64() - max).exp()).sum();
    Some((max + sum.ln() - target) / std::f64::consts::LN_2)
}

impl<M: Model, S: PyScalar> StreamHolder<M, S> {
    fn advance(&mut self, token: u32) -> Result<(), nl_runtime::TokenError> {
        let logits = M::try_step(&mut *self.state, &*self.params, token)?;
        self.last.clear();
        self.last.extend_from_slice(logits);
        self.position += 1;
        Ok(())
    }
}

impl<M: Model, S: PyScalar> ErasedStream for StreamHolder<M, S>
where
    M::Params<S>: Send + Sync,
    M::Stream<S>: Send + Sync,
{
    fn dtype(&self) -> Dtype {
        S::PY_DTYPE
    }

    fn step<'py>(&mut self, py: Python<'py>, token: u32) -> PyResult<Bound<'py, PyAny>> {
        self.advance(token).map_err(|e| PyValueError::new_err(e.to_string()))?;
        Ok(PyArray1::from_slice(py, &self.last).into_any())
    }

    fn surprise(&self, token: u32) -> Option<f64> {
        surprise_bits(&self.last, token as usize)
    }

    fn feed(&mut self, py: Python<'_>, tokens: &[u32]) -> Vec<f64> {
        py.detach(|| {
            let mut bits = Vec::with_capacity(tokens.len().saturating_sub(1));
            for (i, &t) in tokens.iter().enumerate() {
                // Validated by the caller: try_step cannot fail.
                if self.advance(t).is_err() {
                    break;
                }
                if let Some(&next) = tokens.get(i + 1) {
                    bits.push(surprise_bits(&self.last, next as usize).unwrap_or(f64::NAN));
                }
            }
            bits
        })
    }

    fn reset(&mut self) {
        M::reset(&mut *self.state);
        self.last.clear();
        self.position = 0;
    }

    fn position(&self) -> u64 {
        self.position
    }
}

// ------------------------------------------------------------------ tokens

/// Tokens given from Python, checked: a flat vector and the number of rows
/// (`None` for a 1-D input).
struct Tokens {
    flat: Vec<u32>,
    rows: Option<usize>,
}

/// Converts `obj` (a numpy array or a sequence of ints) to tokens, checking
/// the number of dimensions (1, or also 2 if `allow_2d`), the length of the
/// last axis (`len`, if given), the integer dtype and `0 <= t < vocab`.
fn tokens_from(obj: &Bound<'_, PyAny>, vocab: usize, len: Option<usize>, allow_2d: bool) -> PyResult<Tokens> {
    let py = obj.py();
    let array = numpy::get_array_module(py)?.call_method1("asarray", (obj,))?;
    let array = array.cast_into::<PyUntypedArray>().map_err(PyErr::from)?;
    let shape = array.shape().to_vec();
    let rows = match (shape.len(), allow_2d) {
        (1, _) => None,
        (2, true) => Some(shape[0]),
        (n, true) => {
            return Err(PyValueError::new_err(format!(
                "tokens must be 1-D (one sequence) or 2-D (a batch of sequences), not {n}-D (shape {shape:?})"
            )))
        }
        (n, false) => return Err(PyValueError::new_err(format!("tokens must be 1-D, not {n}-D (shape {shape:?})"))),
    };
    if let (Some(want), Some(&got)) = (len, shape.last()) {
        if got != want {
            return Err(PyValueError::new_err(format!(
                "wrong length: a sequence is seq_len + 1 = {want} tokens, got {got} (shape {shape:?})"
            )));
        }
    }
    let kind = array.dtype().kind();
    let flat: Vec<u32> = match kind {
        b'i' => {
            let wide = array.call_method1("astype", ("int64",))?.cast_into::<PyArrayDyn<i64>>().map_err(PyErr::from)?;
            let view = wide.readonly();
            let mut out = Vec::with_capacity(view.len());
            for (i, &t) in view.as_array().iter().enumerate() {
                match u32::try_from(t) {
                    Ok(u) if (u as usize) < vocab => out.push(u),
                    _ => return Err(bad_token(t.to_string(), i, &shape, vocab)),
                }
            }
            out
        }
        b'u' => {
            let wide =
                array.call_method1("astype", ("uint64",))?.cast_into::<PyArrayDyn<u64>>().map_err(PyErr::from)?;
            let view = wide.readonly();
            let mut out = Vec::with_capacity(view.len());
            for (i, &t) in view.as_array().iter().enumerate() {
                match u32::try_from(t) {
                    Ok(u) if (u as usize) < vocab => out.push(u),
                    _ => return Err(bad_token(t.to_string(), i, &shape, vocab)),
                }
            }
            out
        }
        // An empty list becomes a float64 array: fine, nothing to convert.
        _ if array.len() == 0 => Vec::new(),
        _ => {
            return Err(PyValueError::new_err(format!(
                "tokens must be integers, not an array of dtype {}",
                array.dtype().str()?
            )))
        }
    };
    Ok(Tokens { flat, rows })
}

fn bad_token(value: String, flat_index: usize, shape: &[usize], vocab: usize) -> PyErr {
    let at = match shape {
        [_, cols] if *cols > 0 => format!("[{}, {}]", flat_index / cols, flat_index % cols),
        _ => format!("[{flat_index}]"),
    };
    PyValueError::new_err(format!(
        "token {value} at {at} is out of range: tokens must be in 0..{vocab} (the vocabulary size is {vocab})"
    ))
}

/// One token given from Python as an int: `0 <= token < vocab`.
fn token_from(token: i64, vocab: usize) -> PyResult<u32> {
    match u32::try_from(token) {
        Ok(t) if (t as usize) < vocab => Ok(t),
        _ => Err(PyValueError::new_err(format!(
            "token {token} is out of range: tokens must be in 0..{vocab} (the vocabulary size is {vocab})"
        ))),
    }
}

// ------------------------------------------------------------------ classes

/// A model: its parameters in `float32` or `float64`, with a training
/// workspace and a gradient buffer.
#[pyclass(name = "Model")]
struct PyModel {
    inner: Box<dyn ErasedModel>,
}

#[pymethods]
impl PyModel {
    /// Model(seed=1, dtype="float32"): parameters initialised from `seed`
    /// (the generated `init`); dtype "float32" or "float64".
    #[new]
    #[pyo3(signature = (seed = 1, dtype = "float32"))]
    fn new(seed: u64, dtype: &str) -> PyResult<Self> {
        let dtype = Dtype::parse(dtype)?;
        Ok(PyModel { inner: (registered()?.init)(seed, dtype) })
    }

    /// Model.load(path, dtype="float32"): a model with the parameters of a
    /// safetensors checkpoint of this spec (every check of
    /// `nl_runtime::checkpoint::load`: spec hash, names, shapes, dtype,
    /// finite values). A rejected file raises ValueError, an unreadable one
    /// OSError. The checkpoint's dtype must be the requested one.
    #[staticmethod]
    #[pyo3(signature = (path, dtype = "float32"))]
    fn load(py: Python<'_>, path: PathBuf, dtype: &str) -> PyResult<Self> {
        let dtype = Dtype::parse(dtype)?;
        let load = registered()?.load;
        let inner = py.detach(|| load(&path, dtype)).map_err(checkpoint_err)?;
        Ok(PyModel { inner })
    }

    /// save(path): writes the parameters as a safetensors checkpoint
    /// (atomically: `<path>.tmp`, then a rename), in the model's dtype.
    fn save(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        let inner = &self.inner;
        py.detach(|| inner.save(&path)).map_err(checkpoint_err)
    }

    /// The model's name.
    #[getter]
    fn name(&self) -> PyResult<&'static str> {
        Ok(registered()?.name)
    }

    /// The TOML spec the model was generated from.
    #[getter]
    fn spec(&self) -> PyResult<&'static str> {
        Ok(registered()?.spec)
    }

    /// SHA-256 of the spec (64 hex digits; checkpoints store it).
    #[getter]
    fn spec_sha256(&self) -> PyResult<&'static str> {
        Ok(registered()?.spec_sha256)
    }

    /// `d_model`.
    #[getter]
    fn d_model(&self) -> PyResult<usize> {
        Ok(registered()?.d_model)
    }

    /// `heads`.
    #[getter]
    fn heads(&self) -> PyResult<usize> {
        Ok(registered()?.heads)
    }

    /// `vocab`.
    #[getter]
    fn vocab(&self) -> PyResult<usize> {
        Ok(registered()?.vocab)
    }

    /// `seq_len` (a sequence given to `loss` is `seq_len + 1` tokens).
    #[getter]
    fn seq_len(&self) -> PyResult<usize> {
        Ok(registered()?.seq_len)
    }

    /// `window`.
    #[getter]
    fn window(&self) -> PyResult<usize> {
        Ok(registered()?.window)
    }

    /// Number of blocks (`layers`).
    #[getter]
    fn layers(&self) -> PyResult<usize> {
        Ok(registered()?.layers)
    }

    /// Memory levels per block.
    #[getter]
    fn levels(&self) -> PyResult<usize> {
        Ok(registered()?.levels)
    }

    /// Number of scalar parameters.
    #[getter]
    fn param_count(&self) -> PyResult<usize> {
        Ok(registered()?.param_count)
    }

    /// "float32" or "float64".
    #[getter]
    fn dtype(&self) -> &'static str {
        self.inner.dtype().name()
    }

    /// dict: tensor name -> shape tuple, in checkpoint order.
    #[getter]
    fn tensors<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for t in registered()?.tensors {
            d.set_item(t.name, PyTuple::new(py, t.shape)?)?;
        }
        Ok(d)
    }

    /// params() -> dict: tensor name -> numpy array (a copy, shaped, of the
    /// model's dtype), in checkpoint order.
    fn params<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        self.inner.params(py)
    }

    /// set_params(dict): sets the named tensors (any subset) from arrays of
    /// any numeric dtype (converted to the model's). An unknown name or a
    /// wrong shape raises ValueError and changes nothing.
    fn set_params(&mut self, params: &Bound<'_, PyDict>) -> PyResult<()> {
        self.inner.set_params(params)
    }

    /// loss(tokens): mean next-token cross-entropy in nats of a sequence of
    /// seq_len + 1 integer tokens (float); a 2-D [B, seq_len + 1] batch
    /// gives a float64 array of the B losses.
    fn loss<'py>(&mut self, py: Python<'py>, tokens: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let reg = registered()?;
        let t = tokens_from(tokens, reg.vocab, Some(reg.seq_len + 1), true)?;
        let losses = self.inner.losses(py, &t.flat);
        match t.rows {
            None => Ok(PyFloat::new(py, losses.first().copied().unwrap_or(f64::NAN)).into_any()),
            Some(_) => Ok(PyArray1::from_vec(py, losses).into_any()),
        }
    }

    /// loss_and_grad(tokens) -> (loss, dict name -> gradient array): for a
    /// 2-D batch, the mean loss and the mean gradient.
    fn loss_and_grad<'py>(
        &mut self,
        py: Python<'py>,
        tokens: &Bound<'py, PyAny>,
    ) -> PyResult<(f64, Bound<'py, PyDict>)> {
        let reg = registered()?;
        let t = tokens_from(tokens, reg.vocab, Some(reg.seq_len + 1), true)?;
        if t.rows == Some(0) {
            return Err(PyValueError::new_err("loss_and_grad: the batch is empty (no mean)"));
        }
        self.inner.loss_and_grad(py, &t.flat)
    }

    /// logits(tokens): the [seq_len, vocab] logits of one sequence of
    /// seq_len + 1 tokens (row t predicts tokens[t + 1]).
    fn logits<'py>(&mut self, py: Python<'py>, tokens: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let reg = registered()?;
        let t = tokens_from(tokens, reg.vocab, Some(reg.seq_len + 1), false)?;
        self.inner.logits(py, &t.flat)
    }

    /// stream() -> Stream: a reset serving state with a copy of the current
    /// parameters (later set_params on this model does not affect it).
    fn stream(&self) -> PyStream {
        PyStream { inner: self.inner.stream() }
    }

    fn __repr__(&self) -> PyResult<String> {
        let reg = registered()?;
        Ok(format!(
            "<nl model `{}`: {} parameters, {}, spec_sha256 {}>",
            reg.name,
            reg.param_count,
            self.inner.dtype().name(),
            reg.spec_sha256.get(..12).unwrap_or(reg.spec_sha256)
        ))
    }
}

/// A streaming (serving) state: attention window and memory, with its own
/// copy of the parameters taken by `Model.stream()`.
#[pyclass(name = "Stream")]
struct PyStream {
    inner: Box<dyn ErasedStream>,
}

#[pymethods]
impl PyStream {
    /// step(token) -> logits (numpy array (vocab,), the model's dtype)
    /// predicting the next token. A token outside 0..vocab raises
    /// ValueError and leaves the stream unchanged.
    fn step<'py>(&mut self, py: Python<'py>, token: i64) -> PyResult<Bound<'py, PyAny>> {
        let token = token_from(token, registered()?.vocab)?;
        self.inner.step(py, token)
    }

    /// surprise(token) -> float: -log2 softmax(last logits)[token], in bits
    /// (computed in float64). ValueError before the first step.
    fn surprise(&self, token: i64) -> PyResult<f64> {
        let token = token_from(token, registered()?.vocab)?;
        self.inner
            .surprise(token)
            .ok_or_else(|| PyValueError::new_err("surprise: no logits yet (step a token first, after a reset)"))
    }

    /// feed(tokens) -> float64 array of len(tokens) - 1 surprises in bits:
    /// steps every token, and after stepping tokens[i] scores tokens[i + 1].
    /// The state carries over (the last token is stepped too, so the stream
    /// then predicts the token after it). All tokens are checked first: a
    /// bad one raises ValueError and leaves the stream unchanged.
    fn feed<'py>(&mut self, py: Python<'py>, tokens: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyArray1<f64>>> {
        let t = tokens_from(tokens, registered()?.vocab, None, false)?;
        Ok(PyArray1::from_vec(py, self.inner.feed(py, &t.flat)))
    }

    /// reset(): an empty window and zero memory, as a new stream.
    fn reset(&mut self) {
        self.inner.reset();
    }

    /// Tokens stepped since the last reset.
    #[getter]
    fn position(&self) -> u64 {
        self.inner.position()
    }

    /// "float32" or "float64" (the model's when the stream was made).
    #[getter]
    fn dtype(&self) -> &'static str {
        self.inner.dtype().name()
    }

    fn __repr__(&self) -> PyResult<String> {
        Ok(format!(
            "<nl stream of `{}`, {}, position {}>",
            registered()?.name,
            self.inner.dtype().name(),
            self.inner.position()
        ))
    }
}
