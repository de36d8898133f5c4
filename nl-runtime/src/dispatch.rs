//! Run-time choice of the instruction set the hot kernels run with.
//!
//! A default build targets the baseline of its triple (x86-64: SSE2, no AVX,
//! no FMA), whatever CPU it later runs on. So that such a build still runs
//! at the speed of the CPU, the hot kernels ([`gemm`](crate::gemm), the
//! memory's inner loop and its backward, attention, softmax and
//! cross-entropy, norms, the MLP nonlinearities, AdamW, the serving
//! matvecs) exist in three copies, one per [`Path`]:
//!
//! - [`Path::Avx512`]: compiled with `avx512f`, `avx2` and `fma` enabled;
//! - [`Path::Avx2`]: compiled with `avx2` and `fma` enabled;
//! - [`Path::Portable`]: compiled for the build's own target features.
//!
//! Each dispatched kernel is a thin public function over an
//! `#[inline(always)]` generic body: two `#[target_feature]` entry points
//! call the body, which is then compiled (and auto-vectorised) inside them
//! for their instruction sets, and the public function picks one by
//! [`path`]. The matrix kernels of [`gemm`](crate::gemm) have their own
//! explicit intrinsics per path; everything else is the same Rust source on
//! every path.
//!
//! # Which path runs
//!
//! [`path`]: on x86-64 with the `std` feature it is chosen once, at the
//! first kernel call, from the CPU (`is_x86_feature_detected!`, the standard
//! library's detection: nothing to add, and `std` is where it exists) and
//! cached in an atomic, so each call costs one relaxed load and a branch. A
//! build with `avx512f` enabled (e.g. `-C target-cpu=native` on an AVX-512
//! machine) uses the AVX-512 path without detecting anything; without `std`
//! (no detection) the path follows the build's target features alone; other
//! architectures run the portable path.
//!
//! With `std`, the environment variable `NL_KERNELS` (`portable`, `avx2` or
//! `avx512`), read at that first call, can select a *lower* path than the
//! CPU's best, for every dispatched kernel at once (to compare them, or to
//! run the tests on each path); an unsupported choice is ignored. The older
//! name `NL_GEMM` is read when `NL_KERNELS` is not set.
//!
//! # Rounding
//!
//! Every dispatched kernel computes the same operations in the same order on
//! every path: only the vector width changes, and the compiler vectorises
//! only across independent elements (the lanes the source writes out), never
//! by reassociating a sum. [`Scalar::mul_add`](crate::Scalar::mul_add) is
//! fused or not by the *build's* target features, not by the path (it is one
//! function for the whole build), so within one build every path gives the
//! same results bit for bit, which the tests check kernel by kernel on every
//! path the machine has. The exception is [`gemm`](crate::gemm), whose SIMD
//! paths always fuse (see its docs).
//!
//! Between builds the results differ by the rounding of the multiply-adds: a
//! build with the `fma` target feature (`-C target-cpu=native` on a CPU with
//! FMA) fuses them (one rounding), a default build rounds the product and
//! the sum separately. Both are within float rounding of the plain
//! references (the reference and gradient tests run on both builds); a
//! default build's checkpoints and losses match a native build's to a few
//! ulps per operation, not bit for bit. Fusing in a default build would need
//! a fused multiply-add on the portable path too, which on a CPU without
//! FMA is a slow software routine, or a second rounding mode per path.

#[cfg(all(feature = "std", target_arch = "x86_64", not(target_feature = "avx512f")))]
use core::sync::atomic::{AtomicU8, Ordering};

/// An instruction set the hot kernels can run with (see the
/// [module docs](self)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Path {
    /// Compiled for the build's own target features.
    Portable,
    /// AVX2 + FMA (x86-64).
    Avx2,
    /// AVX-512F (x86-64).
    Avx512,
}

impl Path {
    /// Every path, lowest first.
    pub const ALL: [Path; 3] = [Path::Portable, Path::Avx2, Path::Avx512];

    /// The name `NL_KERNELS` takes: `portable`, `avx2` or `avx512`.
    pub fn name(self) -> &'static str {
        match self {
            Path::Portable => "portable",
            Path::Avx2 => "avx2",
            Path::Avx512 => "avx512",
        }
    }

    /// Whether this path can run here: the portable path always; the x86-64
    /// ones if the CPU has their features (detected with `std`, else enabled
    /// in the build).
    pub fn is_supported(self) -> bool {
        match self {
            Path::Portable => true,
            Path::Avx2 => has_avx2_fma(),
            Path::Avx512 => has_avx2_fma() && has_avx512f(),
        }
    }

    /// The best path the CPU supports.
    pub fn best() -> Path {
        Path::ALL.into_iter().rev().find(|p| p.is_supported()).unwrap_or(Path::Portable)
    }
}

/// Whether the CPU has AVX2 and FMA (the [`Path::Avx2`] features).
#[inline]
fn has_avx2_fma() -> bool {
    #[cfg(all(target_arch = "x86_64", feature = "std"))]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(all(target_arch = "x86_64", feature = "std")))]
    {
        cfg!(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))
    }
}

/// Whether the CPU has AVX-512F (with [`has_avx2_fma`], the
/// [`Path::Avx512`] features).
#[inline]
fn has_avx512f() -> bool {
    #[cfg(all(target_arch = "x86_64", feature = "std"))]
    {
        std::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(all(target_arch = "x86_64", feature = "std")))]
    {
        cfg!(all(target_arch = "x86_64", target_feature = "avx512f"))
    }
}

/// The path the dispatched kernels take here (see the
/// [module docs](self)). Always one that [`Path::is_supported`].
#[inline(always)]
pub fn path() -> Path {
    #[cfg(test)]
    if let Some(p) = forced() {
        return p;
    }
    #[cfg(all(target_arch = "x86_64", target_feature = "avx512f"))]
    {
        Path::Avx512
    }
    #[cfg(all(feature = "std", target_arch = "x86_64", not(target_feature = "avx512f")))]
    {
        match DETECTED.load(Ordering::Relaxed) {
            1 => Path::Portable,
            2 => Path::Avx2,
            3 => Path::Avx512,
            _ => detect(),
        }
    }
    #[cfg(all(
        not(feature = "std"),
        target_arch = "x86_64",
        not(target_feature = "avx512f"),
        target_feature = "avx2",
        target_feature = "fma"
    ))]
    {
        Path::Avx2
    }
    #[cfg(not(any(
        all(target_arch = "x86_64", target_feature = "avx512f"),
        all(feature = "std", target_arch = "x86_64"),
        all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma")
    )))]
    {
        Path::Portable
    }
}

/// The detected path, `1 + ` its index in [`Path::ALL`]; 0 until detected.
#[cfg(all(feature = "std", target_arch = "x86_64", not(target_feature = "avx512f")))]
static DETECTED: AtomicU8 = AtomicU8::new(0);

/// Picks the best supported path (or a lower one `NL_KERNELS`, else
/// `NL_GEMM`, names) and caches it in [`DETECTED`]. Threads racing here
/// compute and store the same value.
#[cfg(all(feature = "std", target_arch = "x86_64", not(target_feature = "avx512f")))]
#[cold]
#[inline(never)]
fn detect() -> Path {
    let best = Path::best();
    let chosen = std::env::var("NL_KERNELS")
        .or_else(|_| std::env::var("NL_GEMM"))
        .ok()
        .and_then(|v| Path::ALL.into_iter().find(|p| p.name() == v.trim()))
        .filter(|p| *p <= best && p.is_supported())
        .unwrap_or(best);
    let code = 1 + Path::ALL.iter().position(|p| *p == chosen).unwrap_or(0);
    DETECTED.store(code as u8, Ordering::Relaxed);
    chosen
}

#[cfg(test)]
std::thread_local! {
    /// A path forced on this thread by [`on_path`] (unit tests only).
    static FORCED: core::cell::Cell<Option<Path>> = const { core::cell::Cell::new(None) };
}

/// The path [`on_path`] forced on this thread, if any.
#[cfg(test)]
fn forced() -> Option<Path> {
    FORCED.with(|f| f.get())
}

/// Runs `f` with every dispatched kernel called on this thread taking
/// `path` (unit tests only); `None` if the CPU does not support it.
#[cfg(test)]
pub(crate) fn on_path<R>(path: Path, f: impl FnOnce() -> R) -> Option<R> {
    if !path.is_supported() {
        return None;
    }
    let old = FORCED.with(|c| c.replace(Some(path)));
    let r = f();
    FORCED.with(|c| c.set(old));
    Some(r)
}

/// Defines a dispatched kernel: a public function that runs the
/// `#[inline(always)]` body `$body` compiled for the [`path`] of this CPU.
///
/// `[$($gdecl)*]` are the generic parameters as declared (no lifetimes),
/// `[$($garg)*]` the same as arguments; the body must take exactly the
/// function's arguments.
macro_rules! dispatched {
    (
        $(#[$attr:meta])*
        $vis:vis fn $name:ident[$($gdecl:tt)*][$($garg:tt)*]($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? = $body:ident;
    ) => {
        $(#[$attr])*
        // One path on other architectures: the kernel stays a function of its
        // own there (not inlined into every caller), which keeps a
        // microcontroller build's code small (the deploy crate's 64 KiB budget
        // for the seed's memory model); each kernel does O(D) work or more
        // per call, so the call costs nothing measurable.
        #[cfg_attr(target_arch = "x86_64", inline)]
        #[cfg_attr(not(target_arch = "x86_64"), inline(never))]
        $vis fn $name<$($gdecl)*>($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                /// The body compiled with AVX-512F (and AVX2, FMA).
                #[target_feature(enable = "avx512f,avx2,fma")]
                fn on_avx512<$($gdecl)*>($($arg: $ty),*) $(-> $ret)? {
                    $body::<$($garg)*>($($arg),*)
                }
                /// The body compiled with AVX2 and FMA.
                #[target_feature(enable = "avx2,fma")]
                fn on_avx2<$($gdecl)*>($($arg: $ty),*) $(-> $ret)? {
                    $body::<$($garg)*>($($arg),*)
                }
                match $crate::dispatch::path() {
                    // SAFETY: `path()` is supported, so the CPU has AVX-512F,
                    // AVX2 and FMA.
                    $crate::dispatch::Path::Avx512 => return unsafe { on_avx512::<$($garg)*>($($arg),*) },
                    // SAFETY: as above, the CPU has AVX2 and FMA.
                    $crate::dispatch::Path::Avx2 => return unsafe { on_avx2::<$($garg)*>($($arg),*) },
                    $crate::dispatch::Path::Portable => {}
                }
            }
            $body::<$($garg)*>($($arg),*)
        }
    };
}

pub(crate) use dispatched;

/// Runs `f` on every path this CPU has and checks that all give the same
/// values; returns how many paths ran (unit tests only).
///
/// The SIMD paths must agree bit for bit. The portable path must agree too
/// where the build fuses [`Scalar::mul_add`](crate::Scalar::mul_add) (the
/// `fma` target feature); in a build without it, the portable
/// [`gemm`](crate::gemm) rounds its multiply-adds separately while the SIMD
/// paths' fuse, so the portable path is compared only if `f` calls no
/// matrix product (`uses_gemm` false).
#[cfg(test)]
pub(crate) fn same_bits_on_every_path_with<T: PartialEq + core::fmt::Debug>(
    uses_gemm: bool,
    f: impl Fn() -> T,
) -> usize {
    let fused = cfg!(all(feature = "std", target_feature = "fma"));
    let mut want: Option<(Path, T)> = None;
    let mut ran = 0;
    for p in Path::ALL.into_iter().rev() {
        if p == Path::Portable && uses_gemm && !fused {
            let _ = on_path(p, &f);
            ran += 1;
            continue;
        }
        let Some(got) = on_path(p, &f) else { continue };
        ran += 1;
        match &want {
            None => want = Some((p, got)),
            Some((wp, w)) => assert!(got == *w, "path {} differs from path {}", p.name(), wp.name()),
        }
    }
    ran
}

/// [`same_bits_on_every_path_with`] for a function that calls a matrix product.
#[cfg(test)]
pub(crate) fn same_bits_on_every_path<T: PartialEq + core::fmt::Debug>(f: impl Fn() -> T) -> usize {
    same_bits_on_every_path_with(true, f)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `path()` is a supported path, the best one unless an environment
    /// variable lowered it.
    #[test]
    fn chosen_path_is_supported() {
        let p = path();
        assert!(p.is_supported());
        #[cfg(all(target_arch = "x86_64", feature = "std"))]
        if std::env::var_os("NL_KERNELS").is_none() && std::env::var_os("NL_GEMM").is_none() {
            assert_eq!(p, Path::best());
        }
    }

    #[test]
    fn forcing_a_path_is_scoped() {
        let before = path();
        assert_eq!(on_path(Path::Portable, path), Some(Path::Portable));
        assert_eq!(path(), before);
        for p in Path::ALL {
            assert_eq!(on_path(p, path).is_some(), p.is_supported());
        }
    }

    /// Deterministic values in `[-1, 1)`, as `S`.
    fn vals<S: crate::Scalar, const N: usize>(seed: u64) -> [S; N] {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        core::array::from_fn(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            S::from_f64((s >> 11) as f64 / (1u64 << 52) as f64 - 1.0)
        })
    }

    /// `N` rows of `C` values.
    fn rows<S: crate::Scalar, const N: usize, const C: usize>(seed: u64) -> [[S; C]; N] {
        core::array::from_fn(|r| vals::<S, C>(seed * 1000 + r as u64))
    }

    /// The bits of every value.
    fn bits<S: crate::Scalar>(x: &[S]) -> std::vec::Vec<u64> {
        x.iter().map(|v| v.to_f64().to_bits()).collect()
    }

    /// Every output of the dispatched kernels outside the memory (which has
    /// its own test) on the current path, as bits.
    fn outputs<S: crate::Scalar>() -> std::vec::Vec<u64> {
        use crate::{kernels, mlp, norm, optim};
        const T: usize = 11;
        const D: usize = 24;
        const H: usize = 3;
        const HD: usize = 8;
        const W: usize = 5;
        const V: usize = 37;
        let mut out = std::vec::Vec::new();
        // Serving matvec, odd sizes for the tails.
        let w = rows::<S, 13, 37>(1);
        let x = vals::<S, 37>(2);
        let mut y = [S::ZERO; 13];
        kernels::matvec(&w, &x, &mut y);
        out.extend(bits(&y));
        // Attention, both forms, forward and backward.
        let (q, k, v, da) = (rows::<S, T, D>(3), rows::<S, T, D>(4), rows::<S, T, D>(5), rows::<S, T, D>(6));
        let mut p = [[[S::ZERO; W]; H]; T];
        let mut o = [[S::ZERO; D]; T];
        kernels::attention::<S, T, D, H, HD, W>(&q, &k, &v, &mut p, &mut o);
        out.extend(bits(p.as_flattened().as_flattened()));
        out.extend(bits(o.as_flattened()));
        let (mut dq, mut dk, mut dv) = ([[S::ZERO; D]; T], [[S::ZERO; D]; T], [[S::ZERO; D]; T]);
        kernels::attention_backward_acc::<S, T, D, H, HD, W>(&q, &k, &v, &p, &da, &mut dq, &mut dk, &mut dv);
        for g in [&dq, &dk, &dv] {
            out.extend(bits(g.as_flattened()));
        }
        let mut row = [[S::ZERO; W]; H];
        let mut a = [S::ZERO; D];
        kernels::attend_row::<S, D, H, HD, W>(&q[7], 4, |i| &k[7 - i], |i| &v[7 - i], &mut row, &mut a);
        out.extend(bits(row.as_flattened()));
        out.extend(bits(&a));
        // Cross-entropy.
        let logits = rows::<S, T, V>(7);
        let targets: [u32; T] = core::array::from_fn(|t| (t * 7 % V) as u32);
        let mut dl = [[S::ZERO; V]; T];
        out.push(kernels::cross_entropy_backward(&logits, &targets, &mut dl).to_f64().to_bits());
        out.extend(bits(dl.as_flattened()));
        out.push(kernels::mean_cross_entropy(&logits, &targets).to_f64().to_bits());
        out.push(kernels::cross_entropy(&logits[3], 5).to_f64().to_bits());
        // Norms.
        let xs = rows::<S, T, V>(8);
        let dys = rows::<S, T, V>(9);
        let (g, b) = (vals::<S, V>(10), vals::<S, V>(11));
        let mut ys = [[S::ZERO; V]; T];
        let (mut mean, mut inv) = ([S::ZERO; T], [S::ZERO; T]);
        let (mut dg, mut db, mut dx) = ([S::ZERO; V], [S::ZERO; V], [[S::ZERO; V]; T]);
        norm::rms_forward(&xs, &g, &mut ys, &mut inv);
        norm::rms_backward_acc(&xs, &g, &inv, &dys, &mut dg, &mut dx);
        for r in [ys.as_flattened(), &inv, &dg, dx.as_flattened()] {
            out.extend(bits(r));
        }
        norm::layer_forward(&xs, &g, &b, &mut ys, &mut mean, &mut inv);
        norm::layer_backward_acc(&xs, &g, &mean, &inv, &dys, &mut dg, &mut db, &mut dx);
        for r in [ys.as_flattened(), &mean, &inv, &dg, &db, dx.as_flattened()] {
            out.extend(bits(r));
        }
        let mut yr = [S::ZERO; V];
        norm::rms_row(&xs[2], &g, &mut yr);
        out.extend(bits(&yr));
        norm::layer_row(&xs[2], &g, &b, &mut yr);
        out.extend(bits(&yr));
        // MLP nonlinearities.
        let (gate, up, dout) = (xs.as_flattened(), dys.as_flattened(), logits.as_flattened());
        let n = gate.len();
        let (mut o1, mut o2, mut o3) = (std::vec![S::ZERO; n], std::vec![S::ZERO; n], std::vec![S::ZERO; n]);
        mlp::swiglu_forward(gate, up, &mut o1);
        mlp::swiglu_backward(gate, up, dout, &mut o2, &mut o3);
        out.extend(bits(&o1).into_iter().chain(bits(&o2)).chain(bits(&o3)));
        mlp::gelu_forward(gate, &mut o1);
        mlp::gelu_backward(gate, dout, &mut o2);
        out.extend(bits(&o1).into_iter().chain(bits(&o2)));
        // AdamW (with clipping) and the norm it clips by.
        let mut params = xs.as_flattened().to_vec();
        let mut grads = dys.as_flattened().to_vec();
        let (mut m, mut v2) = (std::vec![S::ZERO; n], std::vec![S::ZERO; n]);
        let opt = optim::AdamW { clip: 0.5, weight_decay: 0.1, ..Default::default() };
        for t in 1..=3 {
            let norm = opt.step(&mut params, &mut grads, &mut m, &mut v2, t).unwrap();
            out.push(norm.to_bits());
        }
        out.extend(bits(&params).into_iter().chain(bits(&grads)).chain(bits(&m)).chain(bits(&v2)));
        out.push(optim::global_norm(&params).to_bits());
        out
    }

    /// The outputs of [`attn`](crate::attn) (which calls matrix products)
    /// on the current path, as bits.
    fn attn_outputs<S: crate::Scalar>() -> std::vec::Vec<u64> {
        use crate::attn;
        // More than one block of the squares, and a window that skips some.
        const T: usize = 70;
        const D: usize = 24;
        const H: usize = 3;
        const HD: usize = 8;
        const W: usize = 40;
        let mut out = std::vec::Vec::new();
        let (q, k, v, da) = (rows::<S, T, D>(3), rows::<S, T, D>(4), rows::<S, T, D>(5), rows::<S, T, D>(6));
        let mut p = crate::boxed_zeroed::<[[[S; T]; T]; H]>();
        let mut o = [[S::ZERO; D]; T];
        let (mut dq, mut dk, mut dv) = ([[S::ZERO; D]; T], [[S::ZERO; D]; T], [[S::ZERO; D]; T]);
        let mut sc = crate::boxed_zeroed::<attn::AttnScratch<S, T, HD>>();
        attn::attention::<S, T, D, H, HD, W>(&q, &k, &v, &mut p, &mut o, &mut sc);
        out.extend(bits(p.as_flattened().as_flattened()));
        out.extend(bits(o.as_flattened()));
        attn::attention_backward::<S, T, D, H, HD, W>(&q, &k, &v, &p, &da, &mut dq, &mut dk, &mut dv, &mut sc);
        for g in [&dq, &dk, &dv] {
            out.extend(bits(g.as_flattened()));
        }
        out
    }

    /// Every path this CPU has gives the same bits for every dispatched
    /// kernel (each path is checked against plain references by each
    /// module's tests).
    #[test]
    fn every_path_gives_the_same_bits() {
        fn check<S: crate::Scalar>() {
            // No matrix product in these: the portable path must agree too.
            let ran = same_bits_on_every_path_with(false, outputs::<S>);
            same_bits_on_every_path(attn_outputs::<S>);
            std::eprintln!("dispatched kernels checked on {ran} path(s) ({})", S::DTYPE);
        }
        check::<f32>();
        check::<f64>();
    }
}
