//! Burn-free row kernel of [`crate::TopKKl`]: KL against a sparse top-k teacher, value and (when
//! asked) the gradient w.r.t. the dense student logits, in one call per batch. Rows run in
//! parallel with rayon, each on the widest instruction set the machine has ([`super::simd`]).
//!
//! Per row, with `z = max(s, −1e4)/T` (the floor of [`crate::logspace::LOGIT_FLOOR`]),
//! `a = z − max z`, `Z = Σ_v e^(a_v)`, `log q_i = a_i − ln Z` at the `k` teacher ids, and the
//! teacher's tempered renormalisation `p'_i` over its `k` entries (plus the tail `P'_tail` for
//! `tail_bucket`; see [`crate::TopKKl`]):
//! 1. one pass for `max z` and one for `Z` (storing `e^a` in the gradient buffer as scratch);
//!    `renorm_both` needs neither (it only sees the student through `a_i − logsumexp_k a`);
//! 2. `O(k)` work in `f64` for the value; for `tail_bucket` the student tail
//!    `Q_tail = 1 − Σ_k q_i`, recomputed as a max-shifted sum of `e^z` over the row's entries
//!    outside the ids (a pass over the gaps between the sorted ids, no allocation) when
//!    `Σ_k q_i > 1 −` [`crate::TopKKl::EXACT_TAIL_BELOW`];
//! 3. (tracked only) one pass writing `q_v · c` over the row, then the `k` entries at the ids.
//!
//! The gradient w.r.t. `s` is `(q_v · c − d_v)/T` times `scale` and the row's weight, where `d`
//! is non-zero only at the ids:
//! ```text
//! renorm_teacher:  c = Σ_k p'_i,                        at id i:  q_i Σ_k p'_j − p'_i
//! renorm_both:     c = 0,                               at id i:  q̃_i Σ_k p'_j − p'_i,
//!                  q̃_i = q_i / Σ_k q_j
//! tail_bucket:     c = Σ_k p'_j + P'_tail − P'_tail/Q_tail,  at id i:  q_i (Σ_k p'_j + P'_tail) − p'_i
//! ```
//! (`tail_bucket`: `∂Q_tail/∂z_v = q_v [v ∉ ids] − q_v Q_tail`.) The id entries are written, not
//! added, so the large `P'_tail/Q_tail` of a tiny student tail never cancels in `f32`; when
//! `|c|` is large the dense pass takes `q_v · c = ±e^(a_v − ln Z + ln |c|)` in one `exp`, so that
//! even entries far below `f32`'s smallest normal number get their exact share.

use std::cell::RefCell;

use super::dispatch::{RowKernel, run_kernel};
use super::passes::{Shift, max_scaled, pass, scale_row, sum_exp};
use super::simd::{self, Isa, Lanes, exp};
use crate::logspace::LOGIT_FLOOR;
use crate::types::{EXACT_TAIL_BELOW, TopKConvention};

/// Shared parameters of one top-k kernel call.
#[derive(Debug, Clone, Copy)]
pub struct TopKSpec {
    /// How the teacher's missing mass is treated.
    pub convention: TopKConvention,
    /// Temperature `T` of both sides.
    pub temperature: f64,
    /// Factor on the value and the gradient (`T²` or `1`).
    pub scale: f64,
}

/// One row's results.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TopKRowOut {
    /// `scale ×` the row's divergence (0 on ignored rows).
    pub value: f64,
    /// `tail_bucket`: the teacher's tail `P'_tail` at `T` (0 otherwise).
    pub teacher_tail: f64,
    /// `tail_bucket`: the student's tail `Q_tail` (0 otherwise).
    pub student_tail: f64,
}

/// The rows of one top-k kernel call, flattened row-major.
#[derive(Debug, Clone, Copy)]
pub struct TopKBatch<'a> {
    /// Student logits, `rows × vocab`.
    pub student: &'a [f32],
    /// Vocabulary size.
    pub vocab: usize,
    /// The teacher's ids, `rows × k`; distinct and `< vocab` on valid rows.
    pub ids: &'a [usize],
    /// The teacher's full-vocabulary log-probabilities (at `T = 1`) of those ids, `rows × k`.
    pub logprobs: &'a [f32],
    /// Which rows count (`rows` entries).
    pub valid: &'a [bool],
    /// Per-row factor on the gradient: the upstream gradient the caller expects (`rows`).
    pub weights: &'a [f32],
}

/// `|c|` above which the dense gradient pass takes one `exp` per element instead of scaling the
/// stored `e^a` (whose `exp` saturates at `e^−87.3`, an error that `|c|` would magnify).
const SCRATCH_MAX_FACTOR: f64 = 1e6;

thread_local! {
    /// Per-thread sorted ids of the current row, for the exact tail's gaps.
    static SORTED: RefCell<Vec<usize>> = const { RefCell::new(Vec::new()) };
}

/// `log Σ exp(x)` in `f64` over a short list (`-inf` when every entry is `-inf` or it is empty).
fn lse(x: impl Iterator<Item = f64> + Clone) -> f64 {
    let m = x.clone().fold(f64::NEG_INFINITY, f64::max);
    if m == f64::NEG_INFINITY {
        return m;
    }
    m + x.map(|v| (v - m).exp()).sum::<f64>().ln()
}

/// `log Q_tail` from the row's entries outside the ids: a max-shifted log-sum-exp over the gaps
/// between the sorted ids, minus the log-normaliser `ms + ln Z`. No entry outside → `ln 1e-30`.
#[inline(always)]
fn exact_log_tail<V: Lanes>(s: &[f32], ids: &[usize], inv_t: f32, log_norm: f64) -> f64 {
    SORTED.with(|cell| {
        let mut sorted = cell.borrow_mut();
        sorted.clear();
        sorted.extend_from_slice(ids);
        sorted.sort_unstable();
        // The gaps [prev, id) between consecutive ids, and after the last one.
        let gaps = || {
            let mut prev = 0;
            sorted.iter().map(move |&id| {
                let gap = &s[prev..id];
                prev = id + 1;
                gap
            })
        };
        let last = &s[sorted.last().map_or(0, |l| l + 1)..];
        let m = gaps()
            .chain([last])
            .map(|g| max_scaled::<V>(g, inv_t).0)
            .fold(f32::NEG_INFINITY, f32::max);
        if m == f32::NEG_INFINITY {
            return 1e-30f64.ln();
        }
        let sum: f64 = gaps().chain([last]).map(|g| sum_exp::<V>(g, inv_t, m)).sum();
        m as f64 + sum.ln() - log_norm
    })
}

/// Computes one valid row; writes `weight ×` the gradient into `grad` when given.
#[inline(always)]
fn row_impl<V: Lanes>(
    spec: &TopKSpec,
    s: &[f32],
    ids: &[usize],
    lp: &[f32],
    weight: f32,
    mut grad: Option<&mut [f32]>,
) -> TopKRowOut {
    let t = spec.temperature;
    let inv_t = (1.0 / t) as f32;
    // A NaN or +inf among the inputs this row reads gives a NaN row (the floors below would
    // make it finite); the full-vocabulary conventions check the whole student row in their
    // max pass.
    let bad = |x: f32| x.is_nan() || x == f32::INFINITY;
    if lp.iter().any(|&x| bad(x)) || ids.iter().any(|&i| bad(s[i])) {
        return nan_topk_row(grad);
    }
    let z = |v: usize| (s[v] as f64).max(LOGIT_FLOOR) * inv_t as f64;
    let lpt = || lp.iter().map(|x| *x as f64 / t);
    let tail = spec.convention == TopKConvention::TailBucket;
    // Teacher at T over its k entries (and the tail bucket): ln of the normaliser.
    let log_tail_t = tail.then(|| {
        let mass: f64 = lp.iter().map(|x| (*x as f64).exp()).sum();
        (1.0 - mass).max(1e-30).ln() / t
    });
    let log_zt = lse(lpt().chain(log_tail_t));
    // Student: log q_i at the ids = z_i − log_norm.
    let (ms, zs, log_norm) = if spec.convention == TopKConvention::RenormBoth {
        // log q̃_i = z_i − logsumexp_k z: no full-vocabulary pass.
        (0.0, 0.0, lse(ids.iter().map(|&i| z(i))))
    } else {
        let (ms, finite) = max_scaled::<V>(s, inv_t);
        if !finite {
            return nan_topk_row(grad);
        }
        let shift = Shift { inv_t, ms, mt: ms, mix: None, next: None };
        let [zs] = pass::<V, 1>(
            s,
            s,
            &shift,
            grad.as_deref_mut(),
            #[inline(always)]
            |a, _, _| {
                let e = exp(a);
                ([e], e)
            },
        );
        (ms, zs, ms as f64 + zs.ln())
    };
    let (mut value, mut sum_p, mut head_q) = (0.0, 0.0, 0.0);
    for (j, &i) in ids.iter().enumerate() {
        let log_p = lp[j] as f64 / t - log_zt;
        let log_q = z(i) - log_norm;
        let p = log_p.exp();
        sum_p += p;
        head_q += log_q.exp();
        if p > 0.0 {
            value += p * (log_p - log_q);
        }
    }
    let mut out = TopKRowOut::default();
    // c_in multiplies q at the ids, c_dense everywhere else (see the module docs); ln |c_dense|
    // separately, for a tiny student tail where P'_tail/Q_tail overflows even f64.
    let mut ln_c_dense = None;
    let (c_in, c_dense) = match log_tail_t {
        None if spec.convention == TopKConvention::RenormBoth => (sum_p, 0.0),
        None => (sum_p, sum_p),
        Some(log_tail) => {
            let log_p_tail = log_tail - log_zt;
            let p_tail = log_p_tail.exp();
            let fast = 1.0 - head_q;
            let log_q_tail = if fast < EXACT_TAIL_BELOW {
                exact_log_tail::<V>(s, ids, inv_t, log_norm)
            } else {
                fast.ln()
            };
            if p_tail > 0.0 {
                value += p_tail * (log_p_tail - log_q_tail);
            }
            out.teacher_tail = p_tail;
            out.student_tail = log_q_tail.exp();
            // c_dense = base − r with r = P'_tail/Q_tail = e^(log_r); when r ≫ base,
            // ln |c_dense| = log_r + ln(1 − base/r), finite where r itself is not.
            let (base, log_r) = (sum_p + p_tail, log_p_tail - log_q_tail);
            let c = base - log_r.exp();
            if !c.is_finite() || c.abs() > SCRATCH_MAX_FACTOR {
                ln_c_dense = Some(log_r + (-(base * (-log_r).exp())).ln_1p());
            }
            (base, c)
        }
    };
    out.value = spec.scale * value;
    let Some(g) = grad else {
        return out;
    };
    let gs = weight as f64 * spec.scale / t;
    // Dense part: gs · c · q_v over the row (the scratch holds e^a, so q_v = e^a / Z).
    if c_dense == 0.0 {
        g.fill(0.0);
    } else if c_dense.abs() <= SCRATCH_MAX_FACTOR {
        scale_row::<V>(g, (gs * c_dense / zs) as f32);
    } else {
        // ±e^(a − ln Z + ln(gs |c|)): one exp per element, exact far into the tail.
        let shift = Shift { inv_t, ms, mt: ms, mix: None, next: None };
        let ln_c = ln_c_dense.unwrap_or_else(|| c_dense.abs().ln());
        let k = V::splat((gs.ln() + ln_c - zs.ln()) as f32);
        let sign = V::splat(c_dense.signum() as f32);
        pass::<V, 0>(
            s,
            s,
            &shift,
            Some(&mut *g),
            #[inline(always)]
            |a, _, _| ([], sign.mul(exp(a.add(k)))),
        );
    }
    // The k ids: gs (q_i c_in − p'_i), written over the dense value.
    for (j, &i) in ids.iter().enumerate() {
        let p = (lp[j] as f64 / t - log_zt).exp();
        let q = (z(i) - log_norm).exp();
        g[i] = (gs * (q * c_in - p)) as f32;
    }
    out
}

/// The result for a row with a NaN or `+inf` input: NaN everywhere, gradient included.
fn nan_topk_row(grad: Option<&mut [f32]>) -> TopKRowOut {
    if let Some(g) = grad {
        g.fill(f32::NAN);
    }
    TopKRowOut { value: f64::NAN, teacher_tail: f64::NAN, student_tail: f64::NAN }
}

/// Runs every row. `weights[i]` multiplies row i's gradient; an invalid row is ignored: its
/// outputs are 0 and its gradient row is zeroed. The gradient buffer's previous contents do not
/// matter (every element is written).
///
/// # Panics
/// When slice lengths disagree with `rows × vocab` and `rows × k`, or a valid row's id is out
/// of range. (Repeated ids in a valid row are the caller's to reject: the value would count
/// them twice and the gradient once.)
pub fn run_topk_rows(
    spec: &TopKSpec,
    batch: &TopKBatch<'_>,
    grad: Option<&mut [f32]>,
) -> Vec<TopKRowOut> {
    run_topk_rows_on(simd::detect(), spec, batch, grad)
}

/// [`run_topk_rows`] on an explicit instruction set (tests run every variant this machine has).
pub fn run_topk_rows_on(
    isa: Isa,
    spec: &TopKSpec,
    batch: &TopKBatch<'_>,
    grad: Option<&mut [f32]>,
) -> Vec<TopKRowOut> {
    let TopKBatch { student, vocab, ids, logprobs, valid, weights } = *batch;
    let rows = valid.len();
    assert_eq!(student.len(), rows * vocab, "student length");
    assert_eq!(weights.len(), rows, "weights length");
    assert_eq!(ids.len(), logprobs.len(), "ids vs log-probs length");
    let k = ids.len().checked_div(rows).unwrap_or(0);
    assert_eq!(ids.len(), rows * k, "ids length");
    run_kernel(isa, vocab, valid, grad, &TopKRows { spec, batch, k })
}

/// The top-k kernel as the row dispatch runs it.
struct TopKRows<'a> {
    spec: &'a TopKSpec,
    batch: &'a TopKBatch<'a>,
    /// Teacher entries per row.
    k: usize,
}

impl RowKernel for TopKRows<'_> {
    type Out = TopKRowOut;

    #[inline(always)]
    fn row<V: Lanes>(&self, i: usize, grad: Option<&mut [f32]>) -> TopKRowOut {
        let TopKBatch { student, vocab, ids, logprobs, weights, .. } = *self.batch;
        let k = self.k;
        let (row_ids, lp) = (&ids[i * k..(i + 1) * k], &logprobs[i * k..(i + 1) * k]);
        assert!(row_ids.iter().all(|&id| id < vocab), "teacher id out of range");
        let s = &student[i * vocab..(i + 1) * vocab];
        row_impl::<V>(self.spec, s, row_ids, lp, weights[i], grad)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// f64 value and gradient w.r.t. `s` of one row, straight from the definitions, the student
    /// tail summed over the entries outside the ids.
    fn reference(spec: &TopKSpec, s: &[f64], ids: &[usize], lp: &[f64]) -> (f64, Vec<f64>) {
        let t = spec.temperature;
        let z: Vec<f64> = s.iter().map(|x| x / t).collect();
        let lse_all = lse(z.iter().cloned());
        let q: Vec<f64> = z.iter().map(|x| (x - lse_all).exp()).collect();
        let lpt: Vec<f64> = lp.iter().map(|x| x / t).collect();
        let mut grad = vec![0.0; s.len()];
        let value = match spec.convention {
            TopKConvention::RenormTeacher | TopKConvention::RenormBoth => {
                let lzt = lse(lpt.iter().cloned());
                let both = spec.convention == TopKConvention::RenormBoth;
                let lzk = lse(ids.iter().map(|&i| z[i]));
                let mut v = 0.0;
                for (j, &i) in ids.iter().enumerate() {
                    let (log_p, log_q) =
                        (lpt[j] - lzt, if both { z[i] - lzk } else { z[i] - lse_all });
                    v += log_p.exp() * (log_p - log_q);
                    grad[i] -= log_p.exp();
                    if both {
                        grad[i] += log_q.exp();
                    }
                }
                if !both {
                    grad.iter_mut().zip(&q).for_each(|(g, q)| *g += q);
                }
                v
            }
            TopKConvention::TailBucket => {
                let mass: f64 = lp.iter().map(|x| x.exp()).sum();
                let log_tail = (1.0 - mass).ln() / t;
                let lzt = lse(lpt.iter().cloned().chain([log_tail]));
                let outside = (0..s.len()).filter(|v| !ids.contains(v));
                let log_q_tail = lse(outside.map(|v| z[v])) - lse_all;
                let log_p_tail = log_tail - lzt;
                let mut v = log_p_tail.exp() * (log_p_tail - log_q_tail);
                for (j, &i) in ids.iter().enumerate() {
                    let log_p = lpt[j] - lzt;
                    v += log_p.exp() * (log_p - (z[i] - lse_all));
                    grad[i] -= log_p.exp();
                }
                for (v_idx, g) in grad.iter_mut().enumerate() {
                    *g += q[v_idx];
                    if !ids.contains(&v_idx) {
                        *g -= (log_p_tail + z[v_idx] - lse_all - log_q_tail).exp();
                    }
                }
                v
            }
        };
        (spec.scale * value, grad.into_iter().map(|g| g * spec.scale / t).collect())
    }

    /// Every instruction set this machine runs (portable always).
    fn isas() -> Vec<Isa> {
        simd::available()
    }

    const VOCAB: usize = 37; // not a multiple of 8
    const K: usize = 4;

    /// Rows whose student mass outside the ids shrinks from ~0.9 to ~1e-30 (gap up to 70).
    fn case() -> (Vec<f32>, Vec<usize>, Vec<f32>) {
        let gaps = [0.0f32, 3.0, 9.0, 16.0, 30.0, 70.0];
        let (mut s, mut ids, mut lp) = (Vec::new(), Vec::new(), Vec::new());
        for (r, gap) in gaps.iter().enumerate() {
            let row_ids: Vec<usize> = (0..K).map(|j| (5 * r + 9 * j + 36) % VOCAB).collect();
            for v in 0..VOCAB {
                let jitter = ((v * 13 + r * 7) % 11) as f32 * 0.1;
                s.push(if row_ids.contains(&v) { 2.0 + jitter } else { 2.0 - gap + jitter });
            }
            let w: Vec<f64> = (0..K).map(|j| 1.0 + (j + r) as f64 % 3.0).collect();
            let total: f64 = w.iter().sum();
            lp.extend(w.iter().map(|x| (0.8 * x / total).ln() as f32));
            ids.extend(row_ids);
        }
        (s, ids, lp)
    }

    #[test]
    fn rows_match_f64_reference_across_conventions_temperatures_tails_and_masks() {
        let (s, ids, lp) = case();
        let rows = s.len() / VOCAB;
        let valid: Vec<bool> = (0..rows).map(|r| r != 1).collect();
        let weights: Vec<f32> = (0..rows).map(|r| 0.25 + r as f32 * 0.1).collect();
        let batch = TopKBatch {
            student: &s,
            vocab: VOCAB,
            ids: &ids,
            logprobs: &lp,
            valid: &valid,
            weights: &weights,
        };
        for convention in
            [TopKConvention::RenormTeacher, TopKConvention::RenormBoth, TopKConvention::TailBucket]
        {
            for (temperature, scale) in [(1.0, 1.0), (0.5, 0.25), (2.0, 4.0)] {
                let spec = TopKSpec { convention, temperature, scale };
                for isa in isas() {
                    let mut g = vec![f32::NAN; rows * VOCAB];
                    let out = run_topk_rows_on(isa, &spec, &batch, Some(&mut g));
                    let loss_only = run_topk_rows_on(isa, &spec, &batch, None);
                    for r in 0..rows {
                        let at = format!("{convention:?} T={temperature} {isa:?} row {r}");
                        let range = r * VOCAB..(r + 1) * VOCAB;
                        assert_eq!(out[r], loss_only[r], "{at}");
                        if !valid[r] {
                            assert_eq!(out[r], TopKRowOut::default(), "{at}");
                            assert!(g[range].iter().all(|x| *x == 0.0), "{at}");
                            continue;
                        }
                        let sd: Vec<f64> = s[range.clone()].iter().map(|x| *x as f64).collect();
                        let lpd: Vec<f64> =
                            lp[r * K..(r + 1) * K].iter().map(|x| *x as f64).collect();
                        let (v, gr) = reference(&spec, &sd, &ids[r * K..(r + 1) * K], &lpd);
                        assert!(
                            (out[r].value - v).abs() <= 2e-5 * v.abs() + 1e-6,
                            "{at}: {} vs {v}",
                            out[r].value
                        );
                        let w = weights[r] as f64;
                        let top = gr.iter().fold(0f64, |m, x| m.max(x.abs())) * w;
                        for (j, (a, b)) in g[range].iter().zip(&gr).enumerate() {
                            let want = w * b;
                            assert!(
                                (*a as f64 - want).abs() <= 2e-5 * want.abs() + 2e-6 * top,
                                "{at}: grad[{j}] {a} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn vanishing_student_tail_keeps_its_exact_value_and_gradient() {
        // Row 5 (gap 70): Q_tail ≈ 1e-30, far below f32's 1 − Σ q; the exact tail gives
        // log Q_tail ≈ −68 and the entries outside the ids a relative-exact gradient.
        let (s, ids, lp) = case();
        let r = 5;
        let range = r * VOCAB..(r + 1) * VOCAB;
        let spec =
            TopKSpec { convention: TopKConvention::TailBucket, temperature: 1.0, scale: 1.0 };
        let batch = TopKBatch {
            student: &s[range.clone()],
            vocab: VOCAB,
            ids: &ids[r * K..(r + 1) * K],
            logprobs: &lp[r * K..(r + 1) * K],
            valid: &[true],
            weights: &[1.0],
        };
        let sd: Vec<f64> = s[range].iter().map(|x| *x as f64).collect();
        let lpd: Vec<f64> = batch.logprobs.iter().map(|x| *x as f64).collect();
        let (v, gr) = reference(&spec, &sd, batch.ids, &lpd);
        for isa in isas() {
            let mut g = vec![0f32; VOCAB];
            let out = run_topk_rows_on(isa, &spec, &batch, Some(&mut g));
            assert!(
                out[0].student_tail > 1e-31 && out[0].student_tail < 1e-29,
                "{:e}",
                out[0].student_tail
            );
            assert!((out[0].value - v).abs() <= 1e-5 * v, "{isa:?}: {} vs {v}", out[0].value);
            for (v_idx, (a, b)) in g.iter().zip(&gr).enumerate() {
                // Outside the ids: −P'_tail q_v/Q_tail, relative accuracy.
                assert!(
                    (*a as f64 - b).abs() <= 1e-5 * b.abs() + 1e-12,
                    "{isa:?} [{v_idx}]: {a} vs {b}"
                );
            }
        }
    }

    #[test]
    fn infinite_and_extreme_logits_stay_finite() {
        let mut s = vec![f32::NEG_INFINITY; 11];
        s[2] = 300.0;
        s[5] = -300.0;
        s[7] = 0.0;
        let lp = [-0.1f32, -5.0];
        for convention in
            [TopKConvention::RenormTeacher, TopKConvention::RenormBoth, TopKConvention::TailBucket]
        {
            let spec = TopKSpec { convention, temperature: 1.0, scale: 1.0 };
            for ids in [[7usize, 5], [2, 9]] {
                let batch = TopKBatch {
                    student: &s,
                    vocab: 11,
                    ids: &ids,
                    logprobs: &lp,
                    valid: &[true],
                    weights: &[1.0],
                };
                let mut g = vec![0f32; 11];
                let out = run_topk_rows(&spec, &batch, Some(&mut g));
                assert!(out[0].value.is_finite(), "{convention:?} {ids:?}");
                assert!(g.iter().all(|x| x.is_finite()), "{convention:?} {ids:?}: {g:?}");
            }
        }
    }
}
