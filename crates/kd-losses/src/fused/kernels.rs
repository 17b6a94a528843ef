//! Burn-free row kernels: value (and, when asked, the student gradient) of a divergence for every
//! row in one pass family per row. Slices in, slices out; rows run in parallel with rayon.
//!
//! Per row, with `s' = max(s, −1e4)/T`, `t' = max(t, −1e4)/T` (the same floor as
//! [`crate::logspace::LOGIT_FLOOR`]):
//! 1. maxima of `s'` and `t'`;
//! 2. partition sums `Z_s = Σ exp(s' − max s')`, `Z_t` likewise, plus the moment the loss needs,
//!    accumulated in `f64`;
//! 3. (tracked only) the gradient, written straight into the caller's buffer, already multiplied
//!    by the row's weight (the upstream gradient the caller expects) and by `T²` when scaled.

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
}

/// Shared parameters of one kernel call.
#[derive(Debug, Clone, Copy)]
pub struct RowSpec {
    /// The divergence.
    pub kind: FusedKind,
    /// Temperature of both sides.
    pub temperature: f64,
    /// Factor on value and gradient (`T²` or `1`).
    pub scale: f64,
}

/// One row's results: the scaled value and two diagnostics (meaning depends on the kind).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RowOut {
    /// `scale ×` the divergence.
    pub value: f64,
    /// First diagnostic (cross-entropy form for forward KL, `KL(p‖m)` for JSD).
    pub extra_a: f64,
    /// Second diagnostic (`KL(q‖m)` for JSD).
    pub extra_b: f64,
}

use super::vexp::{self, Isa, exp};

#[inline(always)]
fn scaled(x: f32, inv_t: f32) -> f32 {
    x.max(LOGIT_FLOOR as f32) * inv_t
}

/// Lanes of the f32 accumulators; they are flushed to f64 every [`BLOCK`] elements.
const LANES: usize = 8;
const BLOCK: usize = 1024;

#[inline(always)]
fn row_max(x: &[f32], inv_t: f32) -> f32 {
    let mut m = [f32::NEG_INFINITY; LANES];
    let chunks = x.chunks_exact(LANES);
    let rest = chunks.remainder();
    for c in chunks {
        for l in 0..LANES {
            m[l] = m[l].max(scaled(c[l], inv_t));
        }
    }
    let m = m.iter().fold(f32::NEG_INFINITY, |a, b| a.max(*b));
    rest.iter().fold(m, |a, &v| a.max(scaled(v, inv_t)))
}

/// `Σ_v f(s_v, t_v)` for `K` quantities at once: f32 lane accumulators, flushed to f64.
#[inline(always)]
fn sums<const K: usize>(s: &[f32], t: &[f32], f: impl Fn(f32, f32) -> [f32; K]) -> [f64; K] {
    let mut total = [0f64; K];
    for (bs, bt) in s.chunks(BLOCK).zip(t.chunks(BLOCK)) {
        let mut acc = [[0f32; LANES]; K];
        let (cs, ct) = (bs.chunks_exact(LANES), bt.chunks_exact(LANES));
        let (rs, rt) = (cs.remainder(), ct.remainder());
        for (xs, xt) in cs.zip(ct) {
            for l in 0..LANES {
                let v = f(xs[l], xt[l]);
                for k in 0..K {
                    acc[k][l] += v[k];
                }
            }
        }
        for k in 0..K {
            total[k] += acc[k].iter().map(|x| *x as f64).sum::<f64>();
        }
        for (&a, &b) in rs.iter().zip(rt) {
            let v = f(a, b);
            for k in 0..K {
                total[k] += v[k] as f64;
            }
        }
    }
    total
}

/// Computes one row; writes `weight ×` the gradient into `grad` when given.
///
/// Everything is computed in the max-shifted space `a_v = s'_v − max s'`, `b_v = t'_v − max t'`
/// (both `≤ 0`), so `log q_v = a_v − ln Z_s` never subtracts two large, separately rounded
/// numbers. Written so that the element loops vectorise (see [`vexp`]).
#[inline(always)]
fn row_impl(spec: &RowSpec, s: &[f32], t: &[f32], weight: f32, grad: Option<&mut [f32]>) -> RowOut {
    let inv_t = (1.0 / spec.temperature) as f32;
    let ms = row_max(s, inv_t);
    let mt = row_max(t, inv_t);
    let shifted = |sv: f32, tv: f32| (scaled(sv, inv_t) - ms, scaled(tv, inv_t) - mt);
    let gscale = (weight as f64 * spec.scale / spec.temperature) as f32;
    match spec.kind {
        FusedKind::ForwardKl => {
            // Z_s, Z_t, Σ e_t (b − a), Σ e_t a.
            let [zs, zt, acc_a, acc_b] = sums(s, t, |sv, tv| {
                let (a, b) = shifted(sv, tv);
                let et = exp(b);
                [exp(a), et, et * (b - a), et * a]
            });
            let (lzs, lzt) = (zs.ln(), zt.ln());
            // KL(p‖q) = Σ p (b − a) − ln Z_t + ln Z_s;  CE = −Σ p a + ln Z_s.
            let kl = acc_a / zt - lzt + lzs;
            let ce = -(acc_b / zt) + lzs;
            if let Some(g) = grad {
                // ∂KL(p‖q)/∂s_v = (q_v − p_v)/T.
                let (lzs, lzt) = (lzs as f32, lzt as f32);
                for ((gv, &sv), &tv) in g.iter_mut().zip(s).zip(t) {
                    let (a, b) = shifted(sv, tv);
                    *gv = gscale * (exp(a - lzs) - exp(b - lzt));
                }
            }
            RowOut { value: spec.scale * kl, extra_a: spec.scale * ce, extra_b: 0.0 }
        }
        FusedKind::ReverseKl => {
            let [zs, zt, acc_a] = sums(s, t, |sv, tv| {
                let (a, b) = shifted(sv, tv);
                let es = exp(a);
                [es, exp(b), es * (a - b)]
            });
            let (lzs, lzt) = (zs.ln(), zt.ln());
            // KL(q‖p) = Σ q (a − b) − ln Z_s + ln Z_t.
            let kl = acc_a / zs - lzs + lzt;
            if let Some(g) = grad {
                // ∂KL(q‖p)/∂s_v = q_v ((a_v − b_v) − (ln Z_s − ln Z_t + KL))/T.
                let shift = (lzs - lzt + kl) as f32;
                let lzs = lzs as f32;
                for ((gv, &sv), &tv) in g.iter_mut().zip(s).zip(t) {
                    let (a, b) = shifted(sv, tv);
                    *gv = gscale * exp(a - lzs) * ((a - b) - shift);
                }
            }
            RowOut { value: spec.scale * kl, extra_a: 0.0, extra_b: 0.0 }
        }
        FusedKind::Jsd { beta } => {
            let [zs, zt] = sums(s, t, |sv, tv| {
                let (a, b) = shifted(sv, tv);
                [exp(a), exp(b)]
            });
            let (lzs, lzt) = (zs.ln() as f32, zt.ln() as f32);
            let (lb, l1b) = ((beta as f32).ln(), ((1.0 - beta) as f32).ln());
            let (wb, w1b) = (beta as f32, (1.0 - beta) as f32);
            // Per element: log q, log p, and log m clamped below by its exact bound
            // max(log β + log p, log(1 − β) + log q), so underflow cannot give −inf.
            let terms = |sv: f32, tv: f32| -> (f32, f32, f32, f32, f32) {
                let (a, b) = shifted(sv, tv);
                let (lq, lp) = (a - lzs, b - lzt);
                let (q, p) = (exp(lq), exp(lp));
                let lm = (wb * p + w1b * q).ln().max((lb + lp).max(l1b + lq));
                (lq, lp, q, p, lm)
            };
            let [kl_pm, kl_qm] = sums(s, t, |sv, tv| {
                let (lq, lp, q, p, lm) = terms(sv, tv);
                [p * (lp - lm), q * (lq - lm)]
            });
            if let Some(g) = grad {
                // ∂/∂s_v = (1 − β) q_v (log q_v − log m_v − KL(q‖m))/T.
                let k = kl_qm as f32;
                let gs = gscale * w1b;
                for ((gv, &sv), &tv) in g.iter_mut().zip(s).zip(t) {
                    let (lq, _, q, _, lm) = terms(sv, tv);
                    *gv = gs * q * ((lq - lm) - k);
                }
            }
            let value = beta * kl_pm + (1.0 - beta) * kl_qm;
            RowOut { value: spec.scale * value, extra_a: kl_pm, extra_b: kl_qm }
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn row_avx2(spec: &RowSpec, s: &[f32], t: &[f32], weight: f32, grad: Option<&mut [f32]>) -> RowOut {
    row_impl(spec, s, t, weight, grad)
}

fn row_portable(
    spec: &RowSpec,
    s: &[f32],
    t: &[f32],
    weight: f32,
    grad: Option<&mut [f32]>,
) -> RowOut {
    row_impl(spec, s, t, weight, grad)
}

/// One row on the given instruction set.
fn row(
    isa: Isa,
    spec: &RowSpec,
    s: &[f32],
    t: &[f32],
    weight: f32,
    grad: Option<&mut [f32]>,
) -> RowOut {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2Fma` is only produced by `vexp::detect` after run-time detection.
        Isa::Avx2Fma => unsafe { row_avx2(spec, s, t, weight, grad) },
        _ => row_portable(spec, s, t, weight, grad),
    }
}

/// Runs every row. `weights[i]` multiplies row i's gradient (the upstream gradient the caller
/// expects); a row of weight 0 is ignored: its value is 0 and its gradient row is zeroed.
///
/// # Panics
/// When slice lengths disagree with `rows × vocab`.
pub fn run_rows(
    spec: &RowSpec,
    student: &[f32],
    teacher: &[f32],
    vocab: usize,
    valid: &[bool],
    weights: &[f32],
    grad: Option<&mut [f32]>,
) -> Vec<RowOut> {
    run_rows_on(vexp::detect(), spec, student, teacher, vocab, valid, weights, grad)
}

/// [`run_rows`] on an explicit instruction set (tests run every variant this machine has).
#[allow(clippy::too_many_arguments)]
pub fn run_rows_on(
    isa: Isa,
    spec: &RowSpec,
    student: &[f32],
    teacher: &[f32],
    vocab: usize,
    valid: &[bool],
    weights: &[f32],
    grad: Option<&mut [f32]>,
) -> Vec<RowOut> {
    let rows = valid.len();
    assert_eq!(student.len(), rows * vocab, "student length");
    assert_eq!(teacher.len(), rows * vocab, "teacher length");
    assert_eq!(weights.len(), rows, "weights length");
    if vocab == 0 {
        return vec![RowOut::default(); rows];
    }
    let one = |i: usize, g: Option<&mut [f32]>| -> RowOut {
        if !valid[i] {
            if let Some(g) = g {
                g.fill(0.0);
            }
            return RowOut::default();
        }
        let r = i * vocab..(i + 1) * vocab;
        row(isa, spec, &student[r.clone()], &teacher[r], weights[i], g)
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

    /// f64 reference of the three divergences and their gradients, straight from the definitions.
    fn reference(kind: FusedKind, s: &[f64], t: &[f64], temp: f64) -> (f64, Vec<f64>) {
        let softmax = |x: &[f64]| -> Vec<f64> {
            let m = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = x.iter().map(|v| (v / temp - m / temp).exp()).collect();
            let z: f64 = e.iter().sum();
            e.into_iter().map(|v| v / z).collect()
        };
        let (q, p) = (softmax(s), softmax(t));
        let kl = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * (x / y).ln()).sum::<f64>();
        match kind {
            FusedKind::ForwardKl => {
                (kl(&p, &q), q.iter().zip(&p).map(|(q, p)| (q - p) / temp).collect())
            }
            FusedKind::ReverseKl => {
                let k = kl(&q, &p);
                (k, q.iter().zip(&p).map(|(q, p)| q * ((q / p).ln() - k) / temp).collect())
            }
            FusedKind::Jsd { beta } => {
                let m: Vec<f64> =
                    p.iter().zip(&q).map(|(p, q)| beta * p + (1.0 - beta) * q).collect();
                let (kpm, kqm) = (kl(&p, &m), kl(&q, &m));
                let g =
                    q.iter().zip(&m).map(|(q, m)| (1.0 - beta) * q * ((q / m).ln() - kqm) / temp);
                (beta * kpm + (1.0 - beta) * kqm, g.collect())
            }
        }
    }

    /// The portable variant always, plus the detected one.
    fn isas() -> Vec<Isa> {
        let mut v = vec![Isa::Portable];
        if vexp::detect() != Isa::Portable {
            v.push(vexp::detect());
        }
        v
    }

    #[test]
    fn rows_match_f64_reference_including_odd_vocab_and_masking() {
        let vocab = 37; // not a multiple of 8 or 16
        let rows = 3;
        let s: Vec<f32> =
            (0..rows * vocab).map(|i| ((i * 7919 % 113) as f32 / 13.0) - 4.0).collect();
        let t: Vec<f32> =
            (0..rows * vocab).map(|i| ((i * 104729 % 97) as f32 / 11.0) - 4.0).collect();
        let valid = [true, false, true];
        for kind in [FusedKind::ForwardKl, FusedKind::ReverseKl, FusedKind::Jsd { beta: 0.3 }] {
            for temp in [1.0, 2.0] {
                let spec = RowSpec { kind, temperature: temp, scale: 1.0 };
                for isa in isas() {
                    let mut g = vec![f32::NAN; rows * vocab];
                    let out =
                        run_rows_on(isa, &spec, &s, &t, vocab, &valid, &[0.5; 3], Some(&mut g));
                    for i in 0..rows {
                        let r = i * vocab..(i + 1) * vocab;
                        if !valid[i] {
                            assert_eq!(out[i].value, 0.0);
                            assert!(g[r].iter().all(|x| *x == 0.0));
                            continue;
                        }
                        let sd: Vec<f64> = s[r.clone()].iter().map(|x| *x as f64).collect();
                        let td: Vec<f64> = t[r.clone()].iter().map(|x| *x as f64).collect();
                        let (v, gr) = reference(kind, &sd, &td, temp);
                        assert!(
                            (out[i].value - v).abs() < 1e-6 * (1.0 + v),
                            "{kind:?} {v} {}",
                            out[i].value
                        );
                        for (a, b) in g[r].iter().zip(&gr) {
                            assert!(
                                (*a as f64 - 0.5 * b).abs() < 1e-6,
                                "{kind:?} {isa:?}: {a} vs {}",
                                0.5 * b
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn extreme_and_infinite_logits_stay_finite() {
        let vocab = 9;
        let mut s = vec![0f32; vocab];
        let mut t = vec![f32::NEG_INFINITY; vocab];
        t[4] = 0.0; // one live teacher entry
        s[0] = 200.0;
        s[1] = -200.0;
        for kind in [FusedKind::ForwardKl, FusedKind::ReverseKl, FusedKind::Jsd { beta: 0.5 }] {
            let spec = RowSpec { kind, temperature: 1.0, scale: 1.0 };
            let mut g = vec![0f32; vocab];
            let out = run_rows(&spec, &s, &t, vocab, &[true], &[1.0], Some(&mut g));
            assert!(out[0].value.is_finite(), "{kind:?}");
            assert!(g.iter().all(|x| x.is_finite()), "{kind:?}: {g:?}");
        }
    }
}
