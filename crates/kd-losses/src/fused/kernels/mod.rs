//! Burn-free row kernels of the dense losses: value (and, when asked, the student gradient) of a
//! divergence for every row. Slices in, slices out; rows run in parallel through the one row
//! dispatch (`fused::dispatch`), each on the widest instruction set the machine has
//! ([`super::simd`]).
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
//! The passes are shared (`fused::passes`); each loss family is one file: forward KL and TAID
//! (`forward_kl`), reverse KL (`reverse_kl`), AKL (`akl`), the mixture family JSD / skew KL /
//! skew RKL / TVD (`mixture`), and the hard-label mix (`hard_label`) that any of them may add.

mod akl;
mod forward_kl;
mod hard_label;
mod mixture;
mod reverse_kl;

use super::dispatch::{RowKernel, run_kernel};
use super::passes::{Shift, maxima};
use super::simd::{self, Isa, Lanes};
use hard_label::Hard;

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

impl FusedKind {
    /// Diagnostic of forward KL and skew forward KL: the cross-entropy form (`−Σ p log q`,
    /// resp. `−Σ p log m`), times the loss's scale.
    pub const CROSS_ENTROPY_FORM: [&'static str; 1] = ["per_row_cross_entropy_form"];
    /// Diagnostic of TAID: `KL(p_t‖q)`.
    pub const TAID_EXTRAS: [&'static str; 1] = ["per_row_kl_form"];
    /// Diagnostics of JSD: `KL(p‖m)`, `KL(q‖m)`.
    pub const JSD_EXTRAS: [&'static str; 2] = ["kl_teacher_mix", "kl_student_mix"];
    /// Diagnostics of AKL: head weight, tail weight, forward KL, reverse KL, head size.
    pub const AKL_EXTRAS: [&'static str; 5] =
        ["head_weight", "tail_weight", "fkl", "rkl", "head_size"];

    /// The names of this kind's diagnostics; [`RowOut::extras`]`[k]` is the value of name `k`.
    /// The composed path of each loss reports the same names (they are declared here only).
    pub fn extra_names(self) -> &'static [&'static str] {
        match self {
            Self::ForwardKl | Self::SkewForwardKl { .. } => &Self::CROSS_ENTROPY_FORM,
            Self::Taid { .. } => &Self::TAID_EXTRAS,
            Self::Jsd { .. } => &Self::JSD_EXTRAS,
            Self::Akl { .. } => &Self::AKL_EXTRAS,
            Self::ReverseKl | Self::SkewReverseKl { .. } | Self::Tvd => &[],
        }
    }
}

/// The row result for a row with a NaN or `+inf` input: NaN everywhere, gradient included.
fn nan_row(grad: Option<&mut [f32]>) -> RowOut {
    if let Some(g) = grad {
        g.fill(f32::NAN);
    }
    RowOut { value: f64::NAN, soft: f64::NAN, hard: f64::NAN, extras: [f64::NAN; 5] }
}

/// One row as the family kernels see it.
struct Row<'a> {
    /// Student logits.
    s: &'a [f32],
    /// Teacher logits.
    t: &'a [f32],
    /// `1/T`, the maxima, TAID's mixing weight and the next row to prefetch.
    shift: Shift<'a>,
    /// Temperature `T`.
    temperature: f64,
    /// Factor on the divergence (`T²` or `1`).
    scale: f64,
    /// The upstream gradient the caller expects for this row.
    weight: f32,
    /// The divergence's share of the gradient: `weight · (1 − w) · scale / T`.
    gscale: f32,
}

/// A family kernel's result: the divergence (not yet times `scale`), the kind's extras and
/// `ln Z_s` (which the hard-label term reuses at `T = 1`).
struct Soft {
    value: f64,
    extras: [f64; 5],
    lzs: f64,
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
    next: Option<(&[f32], &[f32])>,
    mut grad: Option<&mut [f32]>,
) -> RowOut {
    let inv_t = (1.0 / spec.temperature) as f32;
    let mix = match spec.kind {
        FusedKind::Taid { t } => Some(t as f32),
        _ => None,
    };
    let (ms, mt, finite) = maxima::<V>(s, t, inv_t, mix);
    if !finite {
        return nan_row(grad);
    }
    let hard = label.zip(spec.hard_weight).map(|(label, w)| Hard { label, weight: w as f32 });
    // The divergence's share of the gradient: weight · (1 − w) · scale / T.
    let soft_weight = 1.0 - hard.map_or(0.0, |h| h.weight as f64);
    let row = Row {
        s,
        t,
        shift: Shift { inv_t, ms, mt, mix, next },
        temperature: spec.temperature,
        scale: spec.scale,
        weight,
        gscale: (weight as f64 * soft_weight * spec.scale / spec.temperature) as f32,
    };
    let g = grad.as_deref_mut();
    let soft = match spec.kind {
        FusedKind::ForwardKl => forward_kl::forward_kl::<V>(&row, g),
        FusedKind::Taid { .. } => forward_kl::taid::<V>(&row, g),
        FusedKind::ReverseKl => reverse_kl::reverse_kl::<V>(&row, g),
        FusedKind::Akl { mu } => akl::akl::<V>(&row, mu, g),
        kind @ (FusedKind::Jsd { .. }
        | FusedKind::SkewForwardKl { .. }
        | FusedKind::SkewReverseKl { .. }
        | FusedKind::Tvd) => mixture::mixture::<V>(&row, kind, g),
    };
    hard_label::finish::<V>(&row, soft, hard, grad)
}

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

/// The dense kernel as the row dispatch runs it.
struct DenseRows<'a> {
    spec: &'a RowSpec,
    batch: &'a RowBatch<'a>,
}

impl RowKernel for DenseRows<'_> {
    type Out = RowOut;

    #[inline(always)]
    fn row<V: Lanes>(&self, i: usize, grad: Option<&mut [f32]>) -> RowOut {
        let RowBatch { student, teacher, vocab, weights, labels, .. } = *self.batch;
        let label = labels.map(|l| l[i]);
        assert!(label.is_none_or(|y| y < vocab), "label out of range");
        let r = i * vocab..(i + 1) * vocab;
        // The next row, which this thread most likely computes next (rayon splits ranges).
        let n = r.end..r.end + vocab;
        let next = (n.end <= student.len()).then(|| (&student[n.clone()], &teacher[n]));
        row_impl::<V>(self.spec, &student[r.clone()], &teacher[r], weights[i], label, next, grad)
    }
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
    run_kernel(isa, vocab, valid, grad, &DenseRows { spec, batch })
}

#[cfg(test)]
mod tests {
    use super::akl::head_gap;
    use super::*;
    use crate::fused::simd::{self, Isa};

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

    /// Every instruction set this machine runs (portable always).
    fn isas() -> Vec<Isa> {
        simd::available()
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

    /// The streamed gradient stores (large batches) give the same bits as in-place stores, on
    /// every instruction set, for rows that start at every alignment (vocab 37 and 131).
    #[test]
    fn streamed_gradient_stores_equal_in_place_ones() {
        use super::super::dispatch::run_kernel_streamed;
        for vocab in [37usize, 131] {
            let rows = 5;
            let s: Vec<f32> =
                (0..rows * vocab).map(|i| ((i * 31 % 71) as f32 / 9.0) - 3.0).collect();
            let t: Vec<f32> =
                (0..rows * vocab).map(|i| ((i * 17 % 53) as f32 / 7.0) - 4.0).collect();
            let valid = [true, true, false, true, true];
            let labels = [1usize, 2, 3, 4, 5];
            let batch = RowBatch {
                student: &s,
                teacher: &t,
                vocab,
                valid: &valid,
                weights: &[0.25; 5],
                labels: Some(&labels),
            };
            for kind in KINDS {
                let spec = RowSpec { kind, temperature: 1.5, scale: 2.25, hard_weight: Some(0.2) };
                let rows_kernel = DenseRows { spec: &spec, batch: &batch };
                for isa in isas() {
                    // Offset by one float so the streamed rows start misaligned too.
                    let mut a = vec![f32::NAN; rows * vocab + 1];
                    let mut b = vec![f32::NAN; rows * vocab + 1];
                    let oa = run_kernel_streamed(
                        isa,
                        vocab,
                        &valid,
                        Some(&mut a[1..]),
                        &rows_kernel,
                        true,
                    );
                    let ob = run_kernel_streamed(
                        isa,
                        vocab,
                        &valid,
                        Some(&mut b[1..]),
                        &rows_kernel,
                        false,
                    );
                    assert_eq!(oa, ob, "{kind:?} {isa:?}");
                    let bits = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
                    assert_eq!(bits(&a[1..]), bits(&b[1..]), "{kind:?} {isa:?}");
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
