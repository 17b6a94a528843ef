//! The shared passes of the fused row kernels: every kernel ([`super::kernels`] and
//! [`super::topk`]) is a few of these streaming passes over one row, with the loss's element
//! terms plugged in as closures.
//!
//! Each pass reads the row in `V::N`-wide lanes ([`Lanes`]) and works in the max-shifted,
//! temperature-scaled space `a = s' − max s'`, `b = t' − max t'`, with `s' = max(s, −1e4)/T`
//! (the floor of [`crate::logspace::LOGIT_FLOOR`]). Sums run in f32 vector lanes flushed to f64
//! every [`BLOCK`] elements; tail lanes beyond the row are masked out of the sums and never
//! written.

use super::simd::{Lanes, exp};
use crate::logspace::LOGIT_FLOOR;

/// Elements per f32 accumulation block; each block's lane sums are flushed to f64.
pub(super) const BLOCK: usize = 1024;

/// The largest lane count of any [`Lanes`] type (tail buffers are this long).
pub(super) const MAX_LANES: usize = 16;

/// Floors a logit at [`LOGIT_FLOOR`] (so `-inf` teacher entries stay finite) and divides by T.
#[inline(always)]
pub(super) fn scaled<V: Lanes>(x: V, inv_t: V) -> V {
    x.max(V::splat(LOGIT_FLOOR as f32)).mul(inv_t)
}

/// 1 in the lanes that hold NaN or `+inf`, else 0 (`-inf` is a valid logit: it is floored).
/// The floor, `max` and the SIMD `exp`/`ln` clamps would each turn a NaN into a finite number,
/// so rows are checked explicitly and a non-finite input gives a NaN row, as the op-composed
/// path does.
#[inline(always)]
pub(super) fn non_finite<V: Lanes>(x: V) -> V {
    x.select_lt(V::splat(f32::INFINITY), V::splat(0.0), V::splat(1.0))
}

/// Loads the `n < V::N` elements of a tail, padding with `pad`.
#[inline(always)]
pub(super) fn load_tail<V: Lanes>(x: &[f32], pad: f32) -> V {
    let mut buf = [pad; MAX_LANES];
    buf[..x.len()].copy_from_slice(x);
    V::load(&buf)
}

/// The teacher side's scaled logits: `t'`, or TAID's `(1 − τ)·s' + τ·t'` when `mix = Some(τ)`.
#[inline(always)]
pub(super) fn teacher_side<V: Lanes>(s: V, t: V, mix: Option<f32>) -> V {
    match mix {
        Some(tau) => s.mul(V::splat(1.0 - tau)).add(t.mul(V::splat(tau))),
        None => t,
    }
}

/// The max-shifted scaled logits `(a, b)` of one student and one teacher vector.
#[inline(always)]
pub(super) fn shifted<V: Lanes>(s: V, t: V, inv_t: V, ms: V, mt: V, mix: Option<f32>) -> (V, V) {
    let sc = scaled(s, inv_t);
    (sc.sub(ms), teacher_side(sc, scaled(t, inv_t), mix).sub(mt))
}

/// Maxima of `s/T` and of the teacher side (both floored) in one pass, and whether every input
/// is finite or `-inf` ([`non_finite`]).
#[inline(always)]
pub(super) fn maxima<V: Lanes>(
    s: &[f32],
    t: &[f32],
    inv_t: f32,
    mix: Option<f32>,
) -> (f32, f32, bool) {
    let it = V::splat(inv_t);
    let (mut ms, mut mt) = (V::splat(f32::NEG_INFINITY), V::splat(f32::NEG_INFINITY));
    let mut bad = V::splat(0.0);
    let full = s.len() / V::N * V::N;
    let mut i = 0;
    while i < full {
        let (sv, tv) = (V::load(&s[i..]), V::load(&t[i..]));
        bad = bad.add(non_finite(sv)).add(non_finite(tv));
        ms = ms.max(scaled(sv, it));
        mt = mt.max(teacher_side(scaled(sv, it), scaled(tv, it), mix));
        i += V::N;
    }
    if full < s.len() {
        let sv = load_tail(&s[full..], f32::NEG_INFINITY);
        let tv = load_tail(&t[full..], f32::NEG_INFINITY);
        bad = bad.add(non_finite(sv)).add(non_finite(tv));
        ms = ms.max(scaled(sv, it));
        mt = mt.max(teacher_side(scaled(sv, it), scaled(tv, it), mix));
    }
    (ms.hmax(), mt.hmax(), bad.sum() == 0.0)
}

/// What a pass needs to shift a row: `1/T`, both maxima and TAID's mixing weight; and the
/// row the thread computes next, if any, whose student and teacher logits the summing passes
/// prefetch ([`prefetch_line`]) while they compute, so that its memory reads overlap this
/// row's arithmetic instead of following it.
pub(super) struct Shift<'a> {
    pub(super) inv_t: f32,
    pub(super) ms: f32,
    pub(super) mt: f32,
    pub(super) mix: Option<f32>,
    pub(super) next: Option<(&'a [f32], &'a [f32])>,
}

/// Floats per cache line (64 bytes).
const LINE: usize = 16;

/// Asks for the cache line holding `x[0]` to be brought into L2 ahead of use (no effect where
/// the target has no prefetch instruction). Never faults.
#[inline(always)]
pub(super) fn prefetch_line(x: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `_mm_prefetch` (SSE, in every x86-64 target) only hints the cache; the address
    // is inside a live slice.
    unsafe {
        use std::arch::x86_64::{_MM_HINT_T1, _mm_prefetch};
        _mm_prefetch::<_MM_HINT_T1>(x.as_ptr().cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = x;
}

/// One pass over a row: for every element, `f(a, b, g)` with the max-shifted scaled logits
/// `a = s/T − max`, `b = t/T − max` and the gradient buffer's current lanes `g` (zeros when
/// there is no buffer). `f` returns `K` terms to sum and the new value of `g` (written back when
/// there is a buffer). Sums run in f32 lanes flushed to f64 every [`BLOCK`] elements; tail lanes
/// beyond the row are masked out of the sums and never written.
#[inline(always)]
pub(super) fn pass<V: Lanes, const K: usize>(
    s: &[f32],
    t: &[f32],
    shift: &Shift,
    g: Option<&mut [f32]>,
    f: impl Fn(V, V, V) -> ([V; K], V),
) -> [f64; K] {
    pass2(
        s,
        t,
        shift,
        g,
        None,
        #[inline(always)]
        |a, b, g, r| {
            let (terms, new) = f(a, b, g);
            (terms, new, r)
        },
    )
}

/// Loads lanes `i..` of an optional buffer (zeros without one).
#[inline(always)]
fn load_opt<V: Lanes>(x: &Option<&mut [f32]>, i: usize) -> V {
    match x {
        Some(x) => V::load(&x[i..]),
        None => V::splat(0.0),
    }
}

/// [`pass`] with a second scratch row `r` (cache-resident, one per thread) read and written
/// like `g`: `f(a, b, g, r)` returns the terms and the new `g` and `r`.
#[inline(always)]
pub(super) fn pass2<V: Lanes, const K: usize>(
    s: &[f32],
    t: &[f32],
    shift: &Shift,
    g: Option<&mut [f32]>,
    r: Option<&mut [f32]>,
    f: impl Fn(V, V, V, V) -> ([V; K], V, V),
) -> [f64; K] {
    pass2_impl::<V, K, true>(s, t, shift, g, r, f)
}

/// [`pass2`] that only reads the second scratch row (what `f` returns for it is dropped): a
/// last pass saves the row's stores.
#[inline(always)]
pub(super) fn pass2_read_r<V: Lanes, const K: usize>(
    s: &[f32],
    t: &[f32],
    shift: &Shift,
    g: Option<&mut [f32]>,
    r: Option<&mut [f32]>,
    f: impl Fn(V, V, V, V) -> ([V; K], V, V),
) -> [f64; K] {
    pass2_impl::<V, K, false>(s, t, shift, g, r, f)
}

#[inline(always)]
fn pass2_impl<V: Lanes, const K: usize, const STORE_R: bool>(
    s: &[f32],
    t: &[f32],
    shift: &Shift,
    mut g: Option<&mut [f32]>,
    mut r: Option<&mut [f32]>,
    f: impl Fn(V, V, V, V) -> ([V; K], V, V),
) -> [f64; K] {
    let (inv_t, ms, mt) = (V::splat(shift.inv_t), V::splat(shift.ms), V::splat(shift.mt));
    let mix = shift.mix;
    let mut total = [0f64; K];
    let full = s.len() / V::N * V::N;
    let mut start = 0;
    while start < full {
        let end = (start + BLOCK).min(full);
        let mut acc = [V::splat(0.0); K];
        let mut i = start;
        while i < end {
            if K > 0
                && let Some((ns, nt)) = shift.next
                && i.is_multiple_of(LINE)
                && i < ns.len().min(nt.len())
            {
                prefetch_line(&ns[i..]);
                prefetch_line(&nt[i..]);
            }
            let (a, b) = shifted(V::load(&s[i..]), V::load(&t[i..]), inv_t, ms, mt, mix);
            let (terms, new_g, new_r) = f(a, b, load_opt(&g, i), load_opt(&r, i));
            for k in 0..K {
                acc[k] = acc[k].add(terms[k]);
            }
            if let Some(g) = g.as_deref_mut() {
                new_g.store(&mut g[i..]);
            }
            if STORE_R && let Some(r) = r.as_deref_mut() {
                new_r.store(&mut r[i..]);
            }
            i += V::N;
        }
        for k in 0..K {
            total[k] += acc[k].sum() as f64;
        }
        start = end;
    }
    let n = s.len() - full;
    if n > 0 {
        let (sv, tv) = (load_tail(&s[full..], 0.0), load_tail(&t[full..], 0.0));
        let (a, b) = shifted(sv, tv, inv_t, ms, mt, mix);
        let old_g = g.as_deref().map_or(V::splat(0.0), |g| load_tail(&g[full..], 0.0));
        let old_r = r.as_deref().map_or(V::splat(0.0), |r| load_tail(&r[full..], 0.0));
        let (terms, new_g, new_r) = f(a, b, old_g, old_r);
        for k in 0..K {
            total[k] += terms[k].keep_first(n).sum() as f64;
        }
        let mut buf = [0f32; MAX_LANES];
        if let Some(g) = g {
            new_g.store(&mut buf);
            g[full..].copy_from_slice(&buf[..n]);
        }
        if STORE_R && let Some(r) = r {
            new_r.store(&mut buf);
            r[full..].copy_from_slice(&buf[..n]);
        }
    }
    total
}

thread_local! {
    /// Per-thread second scratch row (teacher exponentials, then `q`) for the tracked kernels.
    static ROW_SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The thread's scratch row, `n` long (give it back with [`give_row`]). Taken out of the
/// thread-local so that no SIMD code runs inside a `with` closure.
pub(super) fn take_row(n: usize) -> Vec<f32> {
    let mut row = ROW_SCRATCH.with(|cell| std::mem::take(&mut *cell.borrow_mut()));
    row.resize(n, 0.0);
    row
}

/// Returns the scratch row taken with [`take_row`] to the thread.
pub(super) fn give_row(row: Vec<f32>) {
    ROW_SCRATCH.with(|cell| *cell.borrow_mut() = row);
}

/// `max z` over a slice (`-inf` when empty).
/// (also: whether every entry is finite or `-inf`, see [`non_finite`]).
#[inline(always)]
pub(super) fn max_scaled<V: Lanes>(s: &[f32], inv_t: f32) -> (f32, bool) {
    let it = V::splat(inv_t);
    let mut m = V::splat(f32::NEG_INFINITY);
    let mut bad = V::splat(0.0);
    let full = s.len() / V::N * V::N;
    let mut i = 0;
    while i < full {
        let sv = V::load(&s[i..]);
        bad = bad.add(non_finite(sv));
        m = m.max(scaled(sv, it));
        i += V::N;
    }
    if full < s.len() {
        let sv = load_tail(&s[full..], f32::NEG_INFINITY);
        bad = bad.add(non_finite(sv));
        m = m.max(scaled(sv, it));
    }
    (m.hmax(), bad.sum() == 0.0)
}

/// Copies `src` into `dst` with [`Lanes::store_stream`] (from the first `4·N`-byte boundary
/// of `dst`; the unaligned head and the tail are plain stores), then [`Lanes::fence`]. The
/// destination's lines are never read from memory, which a plain store of a line that is not
/// in cache does first.
#[inline(always)]
pub(super) fn stream_copy<V: Lanes>(src: &[f32], dst: &mut [f32]) {
    assert_eq!(src.len(), dst.len(), "stream copy lengths");
    let align = 4 * V::N;
    let head = (dst.as_ptr() as usize).wrapping_neg() % align / 4;
    let head = head.min(dst.len());
    dst[..head].copy_from_slice(&src[..head]);
    let body = (dst.len() - head) / V::N * V::N;
    let mut i = head;
    while i < head + body {
        V::load(&src[i..]).store_stream(&mut dst[i..]);
        i += V::N;
    }
    dst[i..].copy_from_slice(&src[i..]);
    V::fence();
}

/// `g ← g · f` over a row.
#[inline(always)]
pub(super) fn scale_row<V: Lanes>(g: &mut [f32], f: f32) {
    let fv = V::splat(f);
    let full = g.len() / V::N * V::N;
    let mut i = 0;
    while i < full {
        V::load(&g[i..]).mul(fv).store(&mut g[i..]);
        i += V::N;
    }
    g[full..].iter_mut().for_each(|x| *x *= f);
}

/// `Σ_v e^(z_v − m)` over a slice, `z = max(s, floor)/T`.
#[inline(always)]
pub(super) fn sum_exp<V: Lanes>(s: &[f32], inv_t: f32, m: f32) -> f64 {
    let shift = Shift { inv_t, ms: m, mt: m, mix: None, next: None };
    let [z] = pass::<V, 1>(
        s,
        s,
        &shift,
        None,
        #[inline(always)]
        |a, _, _| ([exp(a)], a),
    );
    z
}
