//! Burn-free row kernels: value (and, when asked, the student gradient) of a divergence for every
//! row. Slices in, slices out; rows run in parallel with rayon; each row runs on the widest
//! instruction set the machine has ([`super::simd`]).
//!
//! Per row, with `s' = max(s, −1e4)/T`, `t' = max(t, −1e4)/T` (the same floor as
//! [`crate::logspace::LOGIT_FLOOR`]; TAID's teacher side is `(1 − τ)s' + τt'`):
//! 1. one pass for both maxima (the only pass that streams the row from memory);
//! 2. one pass for the partition sums `Z_s`, `Z_t` and the moments the loss needs; when the
//!    student is tracked it stores `e^(s' − max s')` in the gradient buffer and
//!    `e^(t' − max t')` in a per-thread row that stays in cache, so no later pass recomputes an
//!    `exp` it already had;
//! 3. for JSD, skew KL/RKL and TVD, one pass for the element terms (one `ln` per element),
//!    storing the factor `h = ∂value/∂q` in the gradient buffer and `q` in the row;
//! 4. (tracked only) the gradient pass, writing `weight × ∂loss/∂s` over the scratch; with a
//!    hard-label term, one more pass adds `w (softmax(s) − onehot(y))`.
//!
//! Sums run in f32 vector lanes flushed to f64 every 1024 elements.

use rayon::prelude::*;

use crate::logspace::LOGIT_FLOOR;

/// The divergence a fused kernel computes (p = teacher, q = student, at temperature T).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FusedKind {
    /// `KL(p‖q)`; extra: the cross-entropy form `−Σ p log q`.
    ForwardKl,
    /// `KL(q‖p)`.
    ReverseKl,
    /// `β KL(p‖m) + (1 − β) KL(q‖m)`, `m = βp + (1 − β)q`, `0 < β < 1`; extras `KL(p‖m)`, `KL(q‖m)`.
    Jsd {
        /// Teacher weight of the mixture.
        beta: f64,
    },
    /// `KL(p‖m)`, `m = αp + (1 − α)q`, `0 ≤ α < 1`; extra: the cross-entropy form `−Σ p log m`.
    SkewForwardKl {
        /// Teacher weight of the mixture.
        alpha: f64,
    },
    /// `KL(q‖m)`, `m = (1 − α)p + αq`, `0 ≤ α < 1`.
    SkewReverseKl {
        /// Student weight of the mixture.
        alpha: f64,
    },
    /// `½ Σ |p − q|`.
    Tvd,
    /// AKL: `w_head KL(p‖q) + w_tail KL(q‖p)`, head = the teacher's most likely tokens up to
    /// cumulative mass `μ` (always the top-1), weights from the stop-gradient gaps `|p − q|`;
    /// extras `head_weight`, `tail_weight`, `fkl`, `rkl`, `head_size`.
    Akl {
        /// Head mass threshold.
        mu: f64,
    },
    /// TAID at interpolation `t`: `−Σ p_t log q`, `p_t = softmax((1 − t)·sg(s') + t·t')`;
    /// extra: `KL(p_t‖q)`.
    Taid {
        /// Interpolation weight of the teacher, `0 ≤ t ≤ 1`.
        t: f64,
    },
}

/// Shared parameters of one kernel call.
#[derive(Debug, Clone, Copy)]
pub struct RowSpec {
    /// The divergence.
    pub kind: FusedKind,
    /// Temperature of both sides.
    pub temperature: f64,
    /// Factor on the divergence's value and gradient (`T²` or `1`).
    pub scale: f64,
    /// Weight `w` of a hard-label cross-entropy at `T = 1` mixed in as
    /// `(1 − w)·scale·divergence + w·CE(label)` (the labels come with the call).
    pub hard_weight: Option<f64>,
}

impl RowSpec {
    /// A spec without a hard-label term.
    pub fn new(kind: FusedKind, temperature: f64, scale: f64) -> Self {
        Self { kind, temperature, scale, hard_weight: None }
    }
}

/// One row's results: the value and diagnostics (meaning depends on the kind).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RowOut {
    /// The row's loss: `scale ×` the divergence, mixed with the hard-label term when asked.
    pub value: f64,
    /// `scale ×` the divergence alone.
    pub soft: f64,
    /// The hard-label cross-entropy `−log softmax(s)[label]` at `T = 1` (0 without a label).
    pub hard: f64,
    /// Diagnostics, by kind: the cross-entropy form for forward and skew forward KL;
    /// `KL(p‖m)`, `KL(q‖m)` for JSD; `KL(p_t‖q)` for TAID; head weight, tail weight, forward
    /// KL, reverse KL and head size for AKL.
    pub extras: [f64; 5],
}

use super::simd::{self, Isa, Lanes, Portable, exp, ln};

/// Elements per f32 accumulation block; each block's lane sums are flushed to f64.
const BLOCK: usize = 1024;

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

/// The row result for a row with a NaN or `+inf` input: NaN everywhere, gradient included.
pub(super) fn nan_row(grad: Option<&mut [f32]>) -> RowOut {
    if let Some(g) = grad {
        g.fill(f32::NAN);
    }
    RowOut { value: f64::NAN, soft: f64::NAN, hard: f64::NAN, extras: [f64::NAN; 5] }
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
fn teacher_side<V: Lanes>(s: V, t: V, mix: Option<f32>) -> V {
    match mix {
        Some(tau) => s.mul(V::splat(1.0 - tau)).add(t.mul(V::splat(tau))),
        None => t,
    }
}

/// The max-shifted scaled logits `(a, b)` of one student and one teacher vector.
#[inline(always)]
fn shifted<V: Lanes>(s: V, t: V, inv_t: V, ms: V, mt: V, mix: Option<f32>) -> (V, V) {
    let sc = scaled(s, inv_t);
    (sc.sub(ms), teacher_side(sc, scaled(t, inv_t), mix).sub(mt))
}

/// Maxima of `s/T` and of the teacher side (both floored) in one pass, and whether every input
/// is finite or `-inf` ([`non_finite`]).
#[inline(always)]
fn maxima<V: Lanes>(s: &[f32], t: &[f32], inv_t: f32, mix: Option<f32>) -> (f32, f32, bool) {
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

/// What a pass needs to shift a row: `1/T`, both maxima and TAID's mixing weight.
pub(super) struct Shift {
    pub(super) inv_t: f32,
    pub(super) ms: f32,
    pub(super) mt: f32,
    pub(super) mix: Option<f32>,
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
            let (a, b) = shifted(V::load(&s[i..]), V::load(&t[i..]), inv_t, ms, mt, mix);
            let (terms, new_g, new_r) = f(a, b, load_opt(&g, i), load_opt(&r, i));
            for k in 0..K {
                acc[k] = acc[k].add(terms[k]);
            }
            if let Some(g) = g.as_deref_mut() {
                new_g.store(&mut g[i..]);
            }
            if let Some(r) = r.as_deref_mut() {
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
        if let Some(r) = r {
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
fn take_row(n: usize) -> Vec<f32> {
    let mut row = ROW_SCRATCH.with(|cell| std::mem::take(&mut *cell.borrow_mut()));
    row.resize(n, 0.0);
    row
}

fn give_row(row: Vec<f32>) {
    ROW_SCRATCH.with(|cell| *cell.borrow_mut() = row);
}

/// Per-row constants of the element terms of the mixture family.
struct Consts<V> {
    /// `ln Z_s`, `ln Z_t`.
    lzs: V,
    lzt: V,
    /// Mixture weights of teacher and student and their logs (JSD, skew KLs).
    wp: V,
    wq: V,
    lwp: V,
    lwq: V,
}

/// `log m = log(wp p + wq q)`, clamped below by `max(log wp + log p, log wq + log q)`.
#[inline(always)]
fn log_mix<V: Lanes>(c: &Consts<V>, p: V, q: V, lp: V, lq: V) -> V {
    ln(c.wp.mul_add(p, c.wq.mul(q))).max(c.lwp.add(lp).max(c.lwq.add(lq)))
}

/// Element terms of the kinds whose gradient is `q ⊙ (h − Σ q h)/T`: two summed value terms
/// and `h = ∂value/∂q` up to a constant. `log m` is clamped below by its exact bound
/// `max(log wp + log p, log wq + log q)`, so underflow cannot give −inf.
#[inline(always)]
fn mixture_terms<V: Lanes>(kind: FusedKind, c: &Consts<V>, a: V, b: V, q: V, p: V) -> ([V; 2], V) {
    let (lq, lp) = (a.sub(c.lzs), b.sub(c.lzt));
    match kind {
        FusedKind::Jsd { .. } => {
            // β KL(p‖m) + (1 − β) KL(q‖m);  h = (1 − β)(log q − log m).
            let lm = log_mix(c, p, q, lp, lq);
            let rq = lq.sub(lm);
            ([p.mul(lp.sub(lm)), q.mul(rq)], c.wq.mul(rq))
        }
        FusedKind::SkewForwardKl { .. } => {
            // KL(p‖m);  h = −(1 − α) p/m.
            let lm = log_mix(c, p, q, lp, lq);
            ([p.mul(lp.sub(lm)), p.mul(lm)], c.wq.mul(exp(lp.sub(lm))).mul(V::splat(-1.0)))
        }
        FusedKind::SkewReverseKl { .. } => {
            // KL(q‖m);  h = log q − log m − α q/m  (the +1 cancels against Σ q h).
            let lm = log_mix(c, p, q, lp, lq);
            let r = lq.sub(lm);
            ([q.mul(r), V::splat(0.0)], r.sub(c.wq.mul(exp(r))))
        }
        FusedKind::Tvd => {
            // ½ Σ |p − q|;  h = ½ sign(q − p), taken as 0 when q and p agree to rounding (the
            // subgradient the composed path takes at equal distributions).
            let d = q.sub(p);
            let (half, zero) = (V::splat(0.5), V::splat(0.0));
            let abs = d.max(zero.sub(d));
            let sign = d.select_lt(zero, V::splat(-0.5), half);
            let h = V::splat(1e-6).mul(p.add(q)).select_lt(abs, sign, zero);
            ([abs.mul(half), zero], h)
        }
        FusedKind::ForwardKl
        | FusedKind::ReverseKl
        | FusedKind::Taid { .. }
        | FusedKind::Akl { .. } => unreachable!("not a mixture-family kind"),
    }
}

thread_local! {
    /// Per-thread row of teacher probabilities for AKL's head split.
    static P_SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// AKL's head: the teacher's tokens in descending probability (ties by index) while the
/// running sum stays `≤ μ`, and always the top-1. Returns `Σ_head |p − q|` (with `q(v)` giving
/// the student's probability) and the head size.
///
/// A radix select on the bit patterns of `p` (non-negative floats order like their bits):
/// 2048 buckets by the top bits; whole buckets above the boundary are head, and only the
/// boundary bucket is sorted. O(V) per row plus the boundary bucket's sort.
fn head_gap(p: &[f32], mu: f64, q: impl Fn(usize) -> f64) -> (f64, usize) {
    const SHIFT: u32 = 20;
    const BUCKETS: usize = 1 << (32 - SHIFT - 1); // sign bit is 0
    let mut mass = vec![0f64; BUCKETS];
    for &x in p {
        mass[(x.to_bits() >> SHIFT) as usize] += x as f64;
    }
    let mut cum = 0f64;
    let mut boundary = None;
    for b in (0..BUCKETS).rev() {
        if mass[b] == 0.0 {
            // Empty, or only zeros: they never change the running sum.
            continue;
        }
        if cum + mass[b] <= mu {
            cum += mass[b];
        } else {
            boundary = Some(b);
            break;
        }
    }
    // Head: every token above the boundary bucket, plus a prefix of the boundary bucket.
    let boundary_bucket = boundary.unwrap_or(0);
    let mut inside: Vec<(f32, usize)> = Vec::new();
    let mut gap = 0f64;
    let mut size = 0usize;
    for (v, &x) in p.iter().enumerate() {
        let b = (x.to_bits() >> SHIFT) as usize;
        if boundary.is_some() && b == boundary_bucket {
            inside.push((x, v));
        } else if boundary.is_none() || b > boundary_bucket {
            // Above the boundary, or every token when the whole mass fits in μ.
            gap += (x as f64 - q(v)).abs();
            size += 1;
        }
    }
    if boundary.is_some() {
        inside.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        for (i, &(x, v)) in inside.iter().enumerate() {
            // The top-1 overall is head even when it alone exceeds μ.
            let first_overall = size == 0 && i == 0;
            if cum + x as f64 <= mu || first_overall {
                cum += x as f64;
                gap += (x as f64 - q(v)).abs();
                size += 1;
            } else {
                break;
            }
        }
    }
    (gap, size)
}

/// The hard-label term of one row: its label and the weight `w`.
#[derive(Clone, Copy)]
struct Hard {
    label: usize,
    weight: f32,
}

/// Computes one row; writes `weight ×` the gradient into `grad` when given.
///
/// Everything is computed in the max-shifted space `a_v = s'_v − max s'`, `b_v = t'_v − max t'`
/// (both `≤ 0`), so `log q_v = a_v − ln Z_s` never subtracts two large, separately rounded
/// numbers. The gradient buffer doubles as scratch: the first pass stores `e^a` there and a
/// later pass the element factor `h`, so that the gradient pass needs fewer `exp`s.
#[inline(always)]
fn row_impl<V: Lanes>(
    spec: &RowSpec,
    s: &[f32],
    t: &[f32],
    weight: f32,
    label: Option<usize>,
    mut grad: Option<&mut [f32]>,
) -> RowOut {
    let temp = spec.temperature as f32;
    let inv_t = (1.0 / spec.temperature) as f32;
    let mix = match spec.kind {
        FusedKind::Taid { t } => Some(t as f32),
        _ => None,
    };
    let (ms, mt, finite) = maxima::<V>(s, t, inv_t, mix);
    if !finite {
        return nan_row(grad);
    }
    let shift = Shift { inv_t, ms, mt, mix };
    let tracked = grad.is_some();
    let hard = label.zip(spec.hard_weight).map(|(label, w)| Hard { label, weight: w as f32 });
    // The divergence's share of the gradient: weight · (1 − w) · scale / T.
    let soft_weight = 1.0 - hard.map_or(0.0, |h| h.weight as f64);
    let gscale = (weight as f64 * soft_weight * spec.scale / spec.temperature) as f32;
    let (soft, extras, lzs) = match spec.kind {
        FusedKind::ForwardKl | FusedKind::Taid { .. } => {
            // Z_s, Z_t, Σ e_t (b − a), Σ e_t a; scratch g ← e_s, r ← e_t (tracked only).
            let mut row = if tracked { take_row(s.len()) } else { Vec::new() };
            let r = if tracked { Some(&mut row[..]) } else { None };
            let [zs, zt, acc_a, acc_b] = pass2::<V, 4>(
                s,
                t,
                &shift,
                grad.as_deref_mut(),
                r,
                #[inline(always)]
                |a, b, _, _| {
                    let (es, et) = (exp(a), exp(b));
                    ([es, et, et.mul(b.sub(a)), et.mul(a)], es, et)
                },
            );
            let (lzs, lzt) = (zs.ln(), zt.ln());
            // KL(p‖q) = Σ p (b − a) − ln Z_t + ln Z_s;  CE = −Σ p a + ln Z_s.
            let kl = acc_a / zt - lzt + lzs;
            let ce = -(acc_b / zt) + lzs;
            if tracked {
                // ∂KL(p‖q)/∂s_v = ∂CE/∂s_v = (q_v − p_v)/T,  q_v = e_s/Z_s,  p_v = e_t/Z_t.
                let (qs, ps) = (V::splat(gscale / zs as f32), V::splat(gscale / zt as f32));
                pass2::<V, 0>(
                    s,
                    t,
                    &shift,
                    grad.as_deref_mut(),
                    Some(&mut row[..]),
                    #[inline(always)]
                    |_, _, es, et| ([], es.mul(qs).sub(et.mul(ps)), et),
                );
                give_row(row);
            }
            match spec.kind {
                FusedKind::Taid { .. } => (ce, [kl, 0.0, 0.0, 0.0, 0.0], lzs),
                _ => (kl, [spec.scale * ce, 0.0, 0.0, 0.0, 0.0], lzs),
            }
        }
        FusedKind::ReverseKl => {
            // Z_s, Z_t, Σ e_s (a − b); scratch ← e_s.
            let [zs, zt, acc_a] = pass::<V, 3>(
                s,
                t,
                &shift,
                grad.as_deref_mut(),
                #[inline(always)]
                |a, b, _| {
                    let (es, et) = (exp(a), exp(b));
                    ([es, et, es.mul(a.sub(b))], es)
                },
            );
            let (lzs, lzt) = (zs.ln(), zt.ln());
            // KL(q‖p) = Σ q (a − b) − ln Z_s + ln Z_t.
            let kl = acc_a / zs - lzs + lzt;
            if tracked {
                // ∂KL(q‖p)/∂s_v = q_v ((a_v − b_v) − (ln Z_s − ln Z_t + KL))/T.
                let c = V::splat((lzs - lzt + kl) as f32);
                let qs = V::splat(gscale / zs as f32);
                pass::<V, 0>(
                    s,
                    t,
                    &shift,
                    grad.as_deref_mut(),
                    #[inline(always)]
                    |a, b, es| ([], es.mul(qs).mul(a.sub(b).sub(c))),
                );
            }
            (kl, [0.0; 5], lzs)
        }
        FusedKind::Akl { mu } => {
            // Z_s, Z_t, Σ e_t (b − a), Σ e_s (a − b), and the total gap Σ |p − q| needs Z first.
            let [zs, zt, acc_f, acc_r] = pass::<V, 4>(
                s,
                t,
                &shift,
                grad.as_deref_mut(),
                #[inline(always)]
                |a, b, _| {
                    let (es, et) = (exp(a), exp(b));
                    ([es, et, et.mul(b.sub(a)), es.mul(a.sub(b))], es)
                },
            );
            let (lzs, lzt) = (zs.ln(), zt.ln());
            let fkl = acc_f / zt - lzt + lzs;
            let rkl = acc_r / zs - lzs + lzt;
            let (lzs_v, lzt_v) = (V::splat(lzs as f32), V::splat(lzt as f32));
            // The teacher's probabilities, for the head split; Σ |p − q| on the way.
            // (Taken out of the thread-local so that no SIMD code runs inside a closure:
            // closures do not inherit the kernel's target features.)
            let mut pbuf = P_SCRATCH.with(|cell| std::mem::take(&mut *cell.borrow_mut()));
            pbuf.clear();
            pbuf.resize(s.len(), 0.0);
            let [total_gap] = pass::<V, 1>(
                s,
                t,
                &shift,
                Some(&mut pbuf[..]),
                #[inline(always)]
                |a, b, _| {
                    let (q, p) = (exp(a.sub(lzs_v)), exp(b.sub(lzt_v)));
                    let d = p.sub(q);
                    ([d.max(V::splat(0.0).sub(d))], p)
                },
            );
            let (head_gap, head_size) = head_gap(&pbuf, mu, |v| {
                let a = (s[v] as f64).max(LOGIT_FLOOR) * inv_t as f64 - ms as f64;
                (a - lzs).exp()
            });
            P_SCRATCH.with(|cell| *cell.borrow_mut() = pbuf);
            // The head's gap (f64) and the total (f32 lanes) round differently: take the tail
            // as the non-negative remainder so the weights stay in [0, 1].
            let tail_gap = (total_gap - head_gap).max(0.0);
            let w_head = head_gap / (head_gap + tail_gap).max(1e-30);
            let w_tail = 1.0 - w_head;
            if tracked {
                // w_head (q − p)/T + w_tail q ((a − b) − (ln Z_s − ln Z_t + KL(q‖p)))/T.
                let qs = V::splat(gscale / zs as f32);
                let (wh, wt) = (V::splat(w_head as f32), V::splat(w_tail as f32));
                let c = V::splat((lzs - lzt + rkl) as f32);
                pass::<V, 0>(
                    s,
                    t,
                    &shift,
                    grad.as_deref_mut(),
                    #[inline(always)]
                    |a, b, es| {
                        let q = es.mul(qs);
                        let p = V::splat(gscale).mul(exp(b.sub(lzt_v)));
                        ([], wh.mul(q.sub(p)).add(wt.mul(q).mul(a.sub(b).sub(c))))
                    },
                );
            }
            let value = w_head * fkl + w_tail * rkl;
            (value, [w_head, w_tail, fkl, rkl, head_size as f64], lzs)
        }
        FusedKind::Jsd { .. }
        | FusedKind::SkewForwardKl { .. }
        | FusedKind::SkewReverseKl { .. }
        | FusedKind::Tvd => {
            // Z_s, Z_t; scratch g ← e_s, r ← e_t (tracked only).
            let mut row = if tracked { take_row(s.len()) } else { Vec::new() };
            let [zs, zt] = pass2::<V, 2>(
                s,
                t,
                &shift,
                grad.as_deref_mut(),
                if tracked { Some(&mut row[..]) } else { None },
                #[inline(always)]
                |a, b, _, _| {
                    let (es, et) = (exp(a), exp(b));
                    ([es, et], es, et)
                },
            );
            let (lzs, lzt) = (zs.ln(), zt.ln());
            let (inv_zs, inv_zt) = (V::splat(1.0 / zs as f32), V::splat(1.0 / zt as f32));
            // Mixture weights (teacher, student) of m.
            let (wp, wq) = match spec.kind {
                FusedKind::Jsd { beta } => (beta, 1.0 - beta),
                FusedKind::SkewForwardKl { alpha } => (alpha, 1.0 - alpha),
                FusedKind::SkewReverseKl { alpha } => (1.0 - alpha, alpha),
                _ => (0.5, 0.5),
            };
            let (wp, wq) = (wp as f32, wq as f32);
            let c = Consts {
                lzs: V::splat(lzs as f32),
                lzt: V::splat(lzt as f32),
                wp: V::splat(wp),
                wq: V::splat(wq),
                lwp: V::splat(wp.ln()),
                lwq: V::splat(wq.ln()),
            };
            let kind = spec.kind;
            // Σ term0, Σ term1, Σ q h; scratch g: e_s → h, r: e_t → q.
            let [v0, v1, qh] = if tracked {
                pass2::<V, 3>(
                    s,
                    t,
                    &shift,
                    grad.as_deref_mut(),
                    Some(&mut row[..]),
                    #[inline(always)]
                    |a, b, es, et| {
                        let (q, p) = (es.mul(inv_zs), et.mul(inv_zt));
                        let ([x, y], h) = mixture_terms(kind, &c, a, b, q, p);
                        ([x, y, q.mul(h)], h, q)
                    },
                )
            } else {
                let [x, y] = pass::<V, 2>(
                    s,
                    t,
                    &shift,
                    None,
                    #[inline(always)]
                    |a, b, _| {
                        let (q, p) = (exp(a.sub(c.lzs)), exp(b.sub(c.lzt)));
                        (mixture_terms(kind, &c, a, b, q, p).0, q)
                    },
                );
                [x, y, 0.0]
            };
            if tracked {
                // ∂/∂s_v = q_v (h_v − Σ_u q_u h_u)/T.
                let k = V::splat(qh as f32);
                let gs = V::splat(gscale);
                pass2::<V, 0>(
                    s,
                    t,
                    &shift,
                    grad.as_deref_mut(),
                    Some(&mut row[..]),
                    #[inline(always)]
                    |_, _, h, q| ([], gs.mul(q).mul(h.sub(k)), q),
                );
                give_row(row);
            }
            match spec.kind {
                FusedKind::Jsd { beta } => {
                    (beta * v0 + (1.0 - beta) * v1, [v0, v1, 0.0, 0.0, 0.0], lzs)
                }
                FusedKind::SkewForwardKl { .. } => (v0, [-v1, 0.0, 0.0, 0.0, 0.0], lzs),
                _ => (v0, [0.0; 5], lzs),
            }
        }
    };
    let soft = spec.scale * soft;
    let Some(hard) = hard else {
        return RowOut { value: soft, soft, hard: 0.0, extras };
    };
    // Hard-label CE at T = 1 on the floored logits s_f = T (a + max s'):
    // CE = ln Σ e^(T a) − T a_y;  ∂CE/∂s_v = softmax(s_f)_v − [v = y].
    let tv = V::splat(temp);
    let lz1 = if temp == 1.0 {
        lzs
    } else {
        let [z1] = pass::<V, 1>(
            s,
            t,
            &shift,
            None,
            #[inline(always)]
            |a, _, _| ([exp(a.mul(tv))], a),
        )
        .map(f64::ln);
        z1
    };
    let a_y = ((s[hard.label] as f64).max(LOGIT_FLOOR) * inv_t as f64 - ms as f64) * temp as f64;
    let ce = lz1 - a_y;
    if let Some(g) = grad {
        let hw = V::splat(weight * hard.weight);
        let l1 = V::splat(lz1 as f32);
        pass::<V, 0>(
            s,
            t,
            &shift,
            Some(&mut *g),
            #[inline(always)]
            |a, _, old| ([], hw.mul_add(exp(a.mul(tv).sub(l1)), old)),
        );
        g[hard.label] -= weight * hard.weight;
    }
    let w = hard.weight as f64;
    RowOut { value: (1.0 - w) * soft + w * ce, soft, hard: ce, extras }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn row_avx2(spec: &RowSpec, s: &[f32], t: &[f32], w: f32, y: Option<usize>, g: Grad) -> RowOut {
    row_impl::<simd::Avx2>(spec, s, t, w, y, g)
}

fn row_portable(spec: &RowSpec, s: &[f32], t: &[f32], w: f32, y: Option<usize>, g: Grad) -> RowOut {
    row_impl::<Portable>(spec, s, t, w, y, g)
}

type Grad<'a> = Option<&'a mut [f32]>;

/// The rows of one kernel call, flattened row-major.
#[derive(Debug, Clone, Copy)]
pub struct RowBatch<'a> {
    /// Student logits, `rows × vocab`.
    pub student: &'a [f32],
    /// Teacher logits, `rows × vocab`.
    pub teacher: &'a [f32],
    /// Vocabulary size.
    pub vocab: usize,
    /// Which rows count (`rows` entries).
    pub valid: &'a [bool],
    /// Per-row factor on the gradient: the upstream gradient the caller expects (`rows`).
    pub weights: &'a [f32],
    /// Hard labels (`rows`, each `< vocab` on valid rows), needed with a hard-label term.
    pub labels: Option<&'a [usize]>,
}

/// Runs every row. `weights[i]` multiplies row i's gradient; an invalid row is ignored: its
/// value is 0 and its gradient row is zeroed. The gradient buffer's previous contents do not
/// matter (every element is written).
///
/// # Panics
/// When slice lengths disagree with `rows × vocab`, or a valid row's label is out of range.
pub fn run_rows(spec: &RowSpec, batch: &RowBatch<'_>, grad: Option<&mut [f32]>) -> Vec<RowOut> {
    run_rows_on(simd::detect(), spec, batch, grad)
}

/// [`run_rows`] on an explicit instruction set (tests run every variant this machine has).
pub fn run_rows_on(
    isa: Isa,
    spec: &RowSpec,
    batch: &RowBatch<'_>,
    grad: Option<&mut [f32]>,
) -> Vec<RowOut> {
    let RowBatch { student, teacher, vocab, valid, weights, labels } = *batch;
    let rows = valid.len();
    assert_eq!(student.len(), rows * vocab, "student length");
    assert_eq!(teacher.len(), rows * vocab, "teacher length");
    assert_eq!(weights.len(), rows, "weights length");
    if let Some(l) = labels {
        assert_eq!(l.len(), rows, "labels length");
    }
    assert!(spec.hard_weight.is_none() || labels.is_some(), "a hard-label term needs labels");
    for_valid_rows(vocab, valid, grad, |i, g| {
        let label = labels.map(|l| l[i]);
        assert!(label.is_none_or(|y| y < vocab), "label out of range");
        let r = i * vocab..(i + 1) * vocab;
        let (s, t) = (&student[r.clone()], &teacher[r]);
        match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Isa::Avx2Fma` is only produced by `simd::detect` after run-time detection.
            Isa::Avx2Fma => unsafe { row_avx2(spec, s, t, weights[i], label, g) },
            _ => row_portable(spec, s, t, weights[i], label, g),
        }
    })
}

/// Runs `row(i, gradient row)` for every valid row in parallel (rayon); an invalid row gets
/// `R::default()` and a zeroed gradient row.
///
/// # Panics
/// When the gradient is not `valid.len() × vocab` long.
pub(super) fn for_valid_rows<R: Default + Send>(
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

#[cfg(test)]
mod tests {
    use super::*;

    fn softmax(x: &[f64], temp: f64) -> Vec<f64> {
        let m = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = x.iter().map(|v| (v / temp - m / temp).exp()).collect();
        let z: f64 = e.iter().sum();
        e.into_iter().map(|v| v / z).collect()
    }

    fn kl(a: &[f64], b: &[f64]) -> f64 {
        a.iter().zip(b).map(|(x, y)| if *x == 0.0 { 0.0 } else { x * (x / y).ln() }).sum()
    }

    /// f64 value of every kind straight from its definition; `sg` is the stop-gradient copy of
    /// the student that TAID's target uses.
    fn value(spec: &RowSpec, s: &[f64], sg: &[f64], t: &[f64], label: usize) -> f64 {
        let temp = spec.temperature;
        let (q, p) = (softmax(s, temp), softmax(t, temp));
        let mix = |wp: f64| -> Vec<f64> {
            p.iter().zip(&q).map(|(p, q)| wp * p + (1.0 - wp) * q).collect()
        };
        let soft = match spec.kind {
            FusedKind::ForwardKl => kl(&p, &q),
            FusedKind::ReverseKl => kl(&q, &p),
            FusedKind::Jsd { beta } => {
                let m = mix(beta);
                beta * kl(&p, &m) + (1.0 - beta) * kl(&q, &m)
            }
            FusedKind::SkewForwardKl { alpha } => kl(&p, &mix(alpha)),
            FusedKind::SkewReverseKl { alpha } => kl(&q, &mix(1.0 - alpha)),
            FusedKind::Tvd => 0.5 * p.iter().zip(&q).map(|(p, q)| (p - q).abs()).sum::<f64>(),
            FusedKind::Akl { mu } => {
                // Head split and weights from the stop-gradient student.
                let q0 = softmax(sg, temp);
                let mut order: Vec<usize> = (0..p.len()).collect();
                order.sort_by(|a, b| p[*b].total_cmp(&p[*a]).then(a.cmp(b)));
                let (mut cum, mut gh, mut gt) = (0.0, 0.0, 0.0);
                for (i, v) in order.into_iter().enumerate() {
                    cum += p[v];
                    let gap = (p[v] - q0[v]).abs();
                    if i == 0 || cum <= mu { gh += gap } else { gt += gap }
                }
                let wh = gh / (gh + gt);
                wh * kl(&p, &q) + (1.0 - wh) * kl(&q, &p)
            }
            FusedKind::Taid { t: tau } => {
                let target: Vec<f64> =
                    sg.iter().zip(t).map(|(s, t)| (1.0 - tau) * s + tau * t).collect();
                let pt = softmax(&target, temp);
                -pt.iter().zip(&q).map(|(p, q)| p * q.ln()).sum::<f64>()
            }
        } * spec.scale;
        let Some(w) = spec.hard_weight else {
            return soft;
        };
        let ce = -softmax(s, 1.0)[label].ln();
        (1.0 - w) * soft + w * ce
    }

    /// Value and central-difference gradient w.r.t. the student.
    fn reference(spec: &RowSpec, s: &[f64], t: &[f64], label: usize) -> (f64, Vec<f64>) {
        let v = value(spec, s, s, t, label);
        let h = 1e-5;
        let g = (0..s.len())
            .map(|k| {
                let (mut up, mut down) = (s.to_vec(), s.to_vec());
                up[k] += h;
                down[k] -= h;
                (value(spec, &up, s, t, label) - value(spec, &down, s, t, label)) / (2.0 * h)
            })
            .collect();
        (v, g)
    }

    /// The portable variant always, plus the detected one.
    fn isas() -> Vec<Isa> {
        let mut v = vec![Isa::Portable];
        if simd::detect() != Isa::Portable {
            v.push(simd::detect());
        }
        v
    }

    const KINDS: [FusedKind; 11] = [
        FusedKind::Akl { mu: 0.5 },
        FusedKind::Akl { mu: 0.05 },
        FusedKind::ForwardKl,
        FusedKind::ReverseKl,
        FusedKind::Jsd { beta: 0.3 },
        FusedKind::SkewForwardKl { alpha: 0.1 },
        FusedKind::SkewForwardKl { alpha: 0.0 },
        FusedKind::SkewReverseKl { alpha: 0.25 },
        FusedKind::Tvd,
        FusedKind::Taid { t: 0.4 },
        FusedKind::Taid { t: 1.0 },
    ];

    #[test]
    fn rows_match_f64_reference_including_odd_vocab_masking_and_hard_labels() {
        let vocab = 37; // not a multiple of 8 or 16
        let rows = 3;
        let s: Vec<f32> =
            (0..rows * vocab).map(|i| ((i * 7919 % 113) as f32 / 13.0) - 4.0).collect();
        let t: Vec<f32> =
            (0..rows * vocab).map(|i| ((i * 104729 % 97) as f32 / 11.0) - 4.0).collect();
        let valid = [true, false, true];
        let labels = [5usize, 0, 36];
        for kind in KINDS {
            for (temp, scale, hard_weight) in
                [(1.0, 1.0, None), (2.0, 4.0, None), (2.0, 4.0, Some(0.3)), (1.0, 1.0, Some(0.0))]
            {
                let spec = RowSpec { kind, temperature: temp, scale, hard_weight };
                for isa in isas() {
                    let mut g = vec![f32::NAN; rows * vocab];
                    let batch = RowBatch {
                        student: &s,
                        teacher: &t,
                        vocab,
                        valid: &valid,
                        weights: &[0.5; 3],
                        labels: Some(&labels),
                    };
                    let out = run_rows_on(isa, &spec, &batch, Some(&mut g));
                    let loss_only = run_rows_on(isa, &spec, &batch, None);
                    for i in 0..rows {
                        let r = i * vocab..(i + 1) * vocab;
                        if !valid[i] {
                            assert_eq!(out[i].value, 0.0);
                            assert!(g[r].iter().all(|x| *x == 0.0));
                            continue;
                        }
                        let sd: Vec<f64> = s[r.clone()].iter().map(|x| *x as f64).collect();
                        let td: Vec<f64> = t[r.clone()].iter().map(|x| *x as f64).collect();
                        let (v, gr) = reference(&spec, &sd, &td, labels[i]);
                        let what = format!("{kind:?} T={temp} w={hard_weight:?} {isa:?}");
                        assert!((out[i].value - v).abs() < 2e-6 * (1.0 + v.abs()), "{what}: {v}");
                        let lo = loss_only[i].value;
                        assert!(
                            (out[i].value - lo).abs() < 1e-6 * (1.0 + lo.abs()),
                            "{what}: {lo}"
                        );
                        for (a, b) in g[r].iter().zip(&gr) {
                            let want = 0.5 * b;
                            assert!(
                                (*a as f64 - want).abs() < 2e-6 * scale,
                                "{what}: {a} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn akl_head_is_the_top_mass_up_to_mu_and_always_the_top_1() {
        let p = [0.1f32, 0.4, 0.05, 0.3, 0.15];
        // Descending: 0.4 (cum .4), 0.3 (.7), 0.15 (.85), 0.1 (.95), 0.05 (1.0).
        for (mu, size) in [(0.5, 1), (0.71, 2), (0.1, 1), (0.9, 3), (1.01, 5)] {
            let (gap, n) = head_gap(&p, mu, |_| 0.0);
            assert_eq!(n, size, "mu {mu}");
            let mut sorted = p.to_vec();
            sorted.sort_by(|a, b| b.total_cmp(a));
            let want: f64 = sorted[..size].iter().map(|x| *x as f64).sum();
            assert!((gap - want).abs() < 1e-7, "mu {mu}: {gap} vs {want}");
        }
        // Values spread over many buckets and ties inside one bucket.
        let mut p: Vec<f32> = (0..1000).map(|i| 1.0 + (i % 7) as f32).collect();
        let z: f32 = p.iter().sum();
        p.iter_mut().for_each(|x| *x /= z);
        let mut sorted: Vec<(f32, usize)> = p.iter().cloned().zip(0..).collect();
        sorted.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        let mut cum = 0f64;
        let want = sorted.iter().take_while(|(x, _)| {
            cum += *x as f64;
            cum <= 0.3
        });
        assert_eq!(head_gap(&p, 0.3, |_| 0.0).1, want.count());
    }

    #[test]
    fn extreme_and_infinite_logits_stay_finite() {
        let vocab = 9;
        let mut s = vec![0f32; vocab];
        let mut t = vec![f32::NEG_INFINITY; vocab];
        t[4] = 0.0; // one live teacher entry
        s[0] = 200.0;
        s[1] = -200.0;
        for kind in KINDS {
            let spec = RowSpec { kind, temperature: 1.0, scale: 1.0, hard_weight: Some(0.5) };
            let mut g = vec![0f32; vocab];
            let batch = RowBatch {
                student: &s,
                teacher: &t,
                vocab,
                valid: &[true],
                weights: &[1.0],
                labels: Some(&[1]),
            };
            let out = run_rows(&spec, &batch, Some(&mut g));
            assert!(out[0].value.is_finite(), "{kind:?}");
            assert!(g.iter().all(|x| x.is_finite()), "{kind:?}: {g:?}");
        }
    }
}
