//! The one row dispatch of the fused kernels: rows in parallel (rayon), invalid rows zeroed,
//! and each valid row run on the instruction set chosen for the call.
//!
//! A kernel ([`RowKernel`]) is written once, generic over the vector type ([`Lanes`]);
//! [`run_kernel`] instantiates it for AVX-512 or AVX2+FMA (inside a `#[target_feature]` function, so the
//! whole row compiles to those instructions) or for the portable lanes. The dense kernels
//! ([`super::kernels`]) and the top-k kernel ([`super::topk`]) both go through it.

use rayon::prelude::*;

use super::passes::stream_copy;
use super::simd::{Isa, Lanes, Portable};

/// Gradients at least this large are written past the caches: each row is computed into a
/// per-thread scratch row (which stays in cache) and then streamed to the gradient buffer, so
/// the buffer's lines are never read from memory before being written. Below it, the buffer is
/// written in place and left in cache for whatever reads it next.
pub(super) const STREAM_MIN_BYTES: usize = 32 << 20;

thread_local! {
    /// Per-thread gradient scratch row for the streamed path.
    static GRAD_SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A fused kernel, as seen by the dispatch: one valid row at a time.
pub(super) trait RowKernel: Sync {
    /// One row's results (`Default` is the result of an ignored row).
    type Out: Default + Send;

    /// Computes valid row `i` on the lanes `V`, writing its weighted gradient into `grad` when
    /// given (every element, whatever it held before). Implementations are
    /// `#[inline(always)]`, so that the row's passes compile inside the dispatch's
    /// `#[target_feature]` function.
    fn row<V: Lanes>(&self, i: usize, grad: Option<&mut [f32]>) -> Self::Out;
}

/// Runs `kernel` on every row of a `valid.len() × vocab` batch on `isa`: valid rows in parallel,
/// each invalid row gets `K::Out::default()` and a zeroed gradient row.
///
/// # Panics
/// When the gradient is not `valid.len() × vocab` long, or when the kernel panics.
pub(super) fn run_kernel<K: RowKernel>(
    isa: Isa,
    vocab: usize,
    valid: &[bool],
    grad: Option<&mut [f32]>,
    kernel: &K,
) -> Vec<K::Out> {
    let stream = grad.as_ref().is_some_and(|g| g.len() * 4 >= STREAM_MIN_BYTES);
    run_kernel_streamed(isa, vocab, valid, grad, kernel, stream)
}

/// [`run_kernel`] with the choice of streamed gradient stores made by the caller (tests run
/// both).
pub(super) fn run_kernel_streamed<K: RowKernel>(
    isa: Isa,
    vocab: usize,
    valid: &[bool],
    grad: Option<&mut [f32]>,
    kernel: &K,
    stream: bool,
) -> Vec<K::Out> {
    for_valid_rows(vocab, valid, grad, |i, g| match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2Fma` is only produced by `simd::detect` after run-time detection.
        Isa::Avx2Fma => unsafe { row_avx2(kernel, i, g, stream) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx512` is only produced by `simd::detect` after run-time detection.
        Isa::Avx512 => unsafe { row_avx512(kernel, i, g, stream) },
        _ => row_portable(kernel, i, g, stream),
    })
}

/// One row on the lanes `V`: in place, or into the thread's scratch row and then streamed.
#[inline(always)]
fn row_on<V: Lanes, K: RowKernel>(
    kernel: &K,
    i: usize,
    grad: Option<&mut [f32]>,
    stream: bool,
) -> K::Out {
    match grad {
        Some(g) if stream => {
            let mut scratch = GRAD_SCRATCH.with(|c| std::mem::take(&mut *c.borrow_mut()));
            scratch.resize(g.len(), 0.0);
            let out = kernel.row::<V>(i, Some(&mut scratch));
            stream_copy::<V>(&scratch, g);
            GRAD_SCRATCH.with(|c| *c.borrow_mut() = scratch);
            out
        }
        g => kernel.row::<V>(i, g),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn row_avx2<K: RowKernel>(kernel: &K, i: usize, grad: Option<&mut [f32]>, stream: bool) -> K::Out {
    row_on::<super::simd::Avx2, K>(kernel, i, grad, stream)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
fn row_avx512<K: RowKernel>(
    kernel: &K,
    i: usize,
    grad: Option<&mut [f32]>,
    stream: bool,
) -> K::Out {
    row_on::<super::simd::Avx512, K>(kernel, i, grad, stream)
}

fn row_portable<K: RowKernel>(
    kernel: &K,
    i: usize,
    grad: Option<&mut [f32]>,
    stream: bool,
) -> K::Out {
    row_on::<Portable, K>(kernel, i, grad, stream)
}

/// Runs `row(i, gradient row)` for every valid row in parallel (rayon); an invalid row gets
/// `R::default()` and a zeroed gradient row.
///
/// # Panics
/// When the gradient is not `valid.len() × vocab` long.
fn for_valid_rows<R: Default + Send>(
    vocab: usize,
    valid: &[bool],
    grad: Option<&mut [f32]>,
    row: impl Fn(usize, Option<&mut [f32]>) -> R + Sync,
) -> Vec<R> {
    let rows = valid.len();
    if vocab == 0 {
        return (0..rows).map(|_| R::default()).collect();
    }
    let one = |i: usize, g: Option<&mut [f32]>| -> R {
        if valid[i] {
            return row(i, g);
        }
        if let Some(g) = g {
            g.fill(0.0);
        }
        R::default()
    };
    match grad {
        Some(g) => {
            assert_eq!(g.len(), rows * vocab, "gradient length");
            g.par_chunks_mut(vocab).enumerate().map(|(i, g)| one(i, Some(g))).collect()
        }
        None => (0..rows).into_par_iter().map(|i| one(i, None)).collect(),
    }
}
