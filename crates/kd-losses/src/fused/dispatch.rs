//! The one row dispatch of the fused kernels: rows in parallel (rayon), invalid rows zeroed,
//! and each valid row run on the instruction set chosen for the call.
//!
//! A kernel ([`RowKernel`]) is written once, generic over the vector type ([`Lanes`]);
//! [`run_kernel`] instantiates it for AVX2+FMA (inside a `#[target_feature]` function, so the
//! whole row compiles to those instructions) or for the portable lanes. The dense kernels
//! ([`super::kernels`]) and the top-k kernel ([`super::topk`]) both go through it.

use rayon::prelude::*;

use super::simd::{Isa, Lanes, Portable};

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
    for_valid_rows(vocab, valid, grad, |i, g| match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2Fma` is only produced by `simd::detect` after run-time detection.
        Isa::Avx2Fma => unsafe { row_avx2(kernel, i, g) },
        _ => row_portable(kernel, i, g),
    })
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn row_avx2<K: RowKernel>(kernel: &K, i: usize, grad: Option<&mut [f32]>) -> K::Out {
    kernel.row::<super::simd::Avx2>(i, grad)
}

fn row_portable<K: RowKernel>(kernel: &K, i: usize, grad: Option<&mut [f32]>) -> K::Out {
    kernel.row::<Portable>(i, grad)
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
