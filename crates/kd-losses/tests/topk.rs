//! `TopKKl` against an `f64` host reference (values and gradients w.r.t. the student logits),
//! across student tail masses from large down to far below `f32` resolution, and its input
//! checks, on both the fused flex kernel (the default route for `f32` on flex) and the composed
//! path, with every reduction. The golden files cover the conventions on their own cases; these
//! tests add tails that need the exact tail computation.

use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use kd_losses::fused::{Path, fused_calls, with_path};
use kd_losses::{KdError, Reduction, SparseKdBatch, TopKConvention, TopKKl, TopKKlConfig};

const VOCAB: usize = 50;
const K: usize = 5;

/// Per-row value and gradient of one row, `f64`, straight from the definitions (golden README).
fn reference_row(
    s: &[f64],
    ids: &[usize],
    lp: &[f64],
    convention: TopKConvention,
    t: f64,
) -> (f64, Vec<f64>) {
    let z: Vec<f64> = s.iter().map(|x| x / t).collect();
    let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let lse = m + z.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
    let q: Vec<f64> = z.iter().map(|x| (x - lse).exp()).collect();
    let log_q_k: Vec<f64> = ids.iter().map(|&i| z[i] - lse).collect();
    let lp_t: Vec<f64> = lp.iter().map(|x| x / t).collect();
    let lse_k = |x: &[f64]| {
        let m = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        m + x.iter().map(|v| (v - m).exp()).sum::<f64>().ln()
    };
    let mut grad = vec![0.0; s.len()]; // ∂/∂z, divided by T at the end
    let value = match convention {
        TopKConvention::RenormTeacher | TopKConvention::RenormBoth => {
            let log_z = lse_k(&lp_t);
            let log_p: Vec<f64> = lp_t.iter().map(|x| x - log_z).collect();
            let both = convention == TopKConvention::RenormBoth;
            let norm_k = if both { lse_k(&log_q_k) } else { 0.0 };
            let q_k_sum: f64 = log_q_k.iter().map(|x| x.exp()).sum();
            let mut v = 0.0;
            for (j, &i) in ids.iter().enumerate() {
                let p = log_p[j].exp();
                v += p * (log_p[j] - (log_q_k[j] - norm_k));
                grad[i] -= p;
            }
            for (v_idx, g) in grad.iter_mut().enumerate() {
                if both {
                    // ∂(−Σ p log q̃)/∂z_v = q_v/Σ_k q · 1[v∈K] − p_v
                    if ids.contains(&v_idx) {
                        *g += q[v_idx] / q_k_sum;
                    }
                } else {
                    *g += q[v_idx];
                }
            }
            v
        }
        TopKConvention::TailBucket => {
            let mass: f64 = lp.iter().map(|x| x.exp()).sum();
            let log_tail = (1.0 - mass).ln() / t;
            let mut all = lp_t.clone();
            all.push(log_tail);
            let log_z = lse_k(&all);
            let log_p: Vec<f64> = lp_t.iter().map(|x| x - log_z).collect();
            let log_p_tail = log_tail - log_z;
            let p_tail = log_p_tail.exp();
            // Q_tail from the entries outside the ids, not from 1 − Σ q.
            let outside: Vec<f64> =
                (0..s.len()).filter(|v| !ids.contains(v)).map(|v| z[v]).collect();
            let log_q_tail = lse_k(&outside) - lse;
            let mut v = p_tail * (log_p_tail - log_q_tail);
            for (j, &i) in ids.iter().enumerate() {
                let p = log_p[j].exp();
                v += p * (log_p[j] - log_q_k[j]);
                grad[i] -= p;
            }
            for (v_idx, g) in grad.iter_mut().enumerate() {
                *g += q[v_idx];
                if !ids.contains(&v_idx) {
                    *g -= p_tail * (z[v_idx] - lse - log_q_tail).exp();
                }
            }
            v
        }
    };
    (value, grad.into_iter().map(|g| g / t).collect())
}

struct Case {
    student: Vec<f64>, // [rows, VOCAB]
    ids: Vec<usize>,   // [rows, K]
    lp: Vec<f64>,      // [rows, K]
    rows: usize,
}

/// Rows whose student tail outside the teacher's ids is about `exp(−gap)·(VOCAB − K)/K`:
/// gaps 1 and 4 stay on the fast path, 8 sits just above the exact threshold, 12, 20 and 40
/// (tails of ~5e-5, ~2e-8 and ~4e-17) need the exact fallback.
fn case() -> Case {
    let gaps = [1.0, 4.0, 8.0, 12.0, 20.0, 40.0];
    let rows = gaps.len();
    let mut student = Vec::new();
    let mut ids = Vec::new();
    let mut lp = Vec::new();
    for (r, gap) in gaps.iter().enumerate() {
        let row_ids: Vec<usize> = (0..K).map(|j| (7 * r + 11 * j + 3) % VOCAB).collect();
        for v in 0..VOCAB {
            let jitter = ((v * 31 + r * 17) % 13) as f64 * 0.05;
            student.push(if row_ids.contains(&v) { 1.0 + jitter } else { -gap + jitter });
        }
        // Teacher: mass 0.9 over its ids, uneven.
        let w: Vec<f64> = (0..K).map(|j| 1.0 + j as f64 + r as f64 * 0.1).collect();
        let total: f64 = w.iter().sum();
        lp.extend(w.iter().map(|x| (0.9 * x / total).ln()));
        ids.extend(row_ids);
    }
    Case { student, ids, lp, rows }
}

/// One call on `path` with `reduction`: (loss, per-row values, student gradient). The
/// gradient is of `Σ_i w_i loss_i` with `w_i = 1 + i` for `Reduction::None` (exercising the fused
/// backward's row rescaling), of the loss otherwise.
#[allow(clippy::too_many_arguments)]
fn run(
    c: &Case,
    convention: TopKConvention,
    t: f64,
    scale: bool,
    valid: &[bool],
    path: Path,
    reduction: Reduction,
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    with_path(path, || {
        let device = Device::flex().autodiff();
        let student =
            Tensor::<2>::from_data(TensorData::new(to_f32(&c.student), [c.rows, VOCAB]), &device)
                .require_grad();
        let before = fused_calls();
        let out = cfg(convention, t, scale)
            .forward(batch(c, student.clone(), valid, &device), reduction)
            .unwrap();
        let routed = if path == Path::Auto { 1 } else { 0 };
        assert_eq!(fused_calls(), before + routed, "{path:?}: fused route");
        let total = match reduction {
            Reduction::None => {
                let w: Vec<f32> = (0..c.rows).map(|i| 1.0 + i as f32).collect();
                out.loss.clone().mul(Tensor::from_data(TensorData::new(w, [c.rows]), &device)).sum()
            }
            _ => out.loss.clone().sum(),
        };
        let grads = total.backward();
        (host(out.loss), host(out.per_row), host(student.grad(&grads).unwrap()))
    })
}

fn to_f32(x: &[f64]) -> Vec<f32> {
    x.iter().map(|v| *v as f32).collect()
}

fn host<const D: usize>(t: Tensor<D>) -> Vec<f64> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap()
        .into_iter()
        .map(f64::from)
        .collect()
}

fn cfg(convention: TopKConvention, t: f64, scale: bool) -> TopKKl {
    TopKKlConfig { convention, temperature: t, scale_by_t2: scale }.init().unwrap()
}

fn batch(c: &Case, student: Tensor<2>, valid: &[bool], device: &Device) -> SparseKdBatch {
    let ids = c.ids.iter().map(|i| *i as i64).collect::<Vec<_>>();
    SparseKdBatch {
        student_logits: student,
        teacher_topk_ids: Tensor::<2, Int>::from_data(TensorData::new(ids, [c.rows, K]), device),
        teacher_topk_logprobs: Tensor::<2>::from_data(
            TensorData::new(to_f32(&c.lp), [c.rows, K]),
            device,
        ),
        labels: None,
        mask: Some(Tensor::<1, Bool>::from_data(TensorData::new(valid.to_vec(), [c.rows]), device)),
    }
}

/// Both paths and every reduction against the f64 reference.
fn check(convention: TopKConvention, t: f64, scale: bool, valid: &[bool]) {
    let c = case();
    let n_valid = valid.iter().filter(|v| **v).count() as f64;
    let factor = if scale { t * t } else { 1.0 };
    let reference: Vec<(f64, Vec<f64>)> = (0..c.rows)
        .map(|r| {
            let (v, g) = reference_row(
                &c.student[r * VOCAB..(r + 1) * VOCAB],
                &c.ids[r * K..(r + 1) * K],
                &c.lp[r * K..(r + 1) * K],
                convention,
                t,
            );
            if valid[r] {
                (v * factor, g.into_iter().map(|x| x * factor).collect())
            } else {
                (0.0, vec![0.0; VOCAB])
            }
        })
        .collect();
    for path in [Path::Auto, Path::Composed] {
        for reduction in [Reduction::Mean, Reduction::Sum, Reduction::None] {
            let (loss, per_row, grad) = run(&c, convention, t, scale, valid, path, reduction);
            let at = format!("{convention:?} T={t} {path:?} {reduction:?}");
            // Upstream of row r: 1/n_valid (mean), 1 (sum) or 1 + r (none).
            let upstream = |r: usize| match reduction {
                Reduction::Mean => 1.0 / n_valid,
                Reduction::Sum => 1.0,
                Reduction::None => 1.0 + r as f64,
            };
            let mut want_loss = 0.0;
            for (r, (v, g)) in reference.iter().enumerate() {
                want_loss += v * upstream(r).min(1.0);
                let v = *v;
                assert!(
                    (per_row[r] - v).abs() <= 1e-4 * v.abs() + 2e-6,
                    "{at} row {r}: value {} vs {v}",
                    per_row[r]
                );
                let u = upstream(r);
                // The composed path's fast tail 1 − Σ_k q carries ~1e-7 absolute error, up to
                // ~1e-4 relative on Q_tail just above the exact threshold (row 2), which the
                // tail term's P'_tail/Q_tail passes on to the gradient.
                let rel = if path == Path::Composed { 3e-4 } else { 1e-4 };
                let scale_max = g.iter().fold(0f64, |m, x| m.max(x.abs())) * u;
                for (j, want) in g.iter().enumerate() {
                    let want = want * u;
                    let got = grad[r * VOCAB + j];
                    assert!(
                        (got - want).abs() <= rel * want.abs() + 1e-5 * scale_max + 1e-9,
                        "{at} row {r}: grad[{j}] {got} vs {want}"
                    );
                }
            }
            if reduction == Reduction::None {
                assert_eq!(loss, per_row, "{at}");
            } else {
                assert!(
                    (loss[0] - want_loss).abs() <= 1e-4 * want_loss.abs(),
                    "{at}: {loss:?} vs {want_loss}"
                );
            }
        }
    }
}

#[test]
fn tail_bucket_matches_f64_for_large_and_vanishing_student_tails() {
    let all = [true; 6];
    check(TopKConvention::TailBucket, 1.0, false, &all);
    check(TopKConvention::TailBucket, 2.0, true, &all);
    check(TopKConvention::TailBucket, 0.5, false, &[true, false, true, true, false, true]);
    check(TopKConvention::TailBucket, 0.5, true, &all);
}

#[test]
fn renorm_conventions_match_f64() {
    for convention in [TopKConvention::RenormTeacher, TopKConvention::RenormBoth] {
        check(convention, 1.0, false, &[true; 6]);
        check(convention, 2.0, true, &[true, true, false, true, true, true]);
        check(convention, 0.5, false, &[false, true, true, true, true, false]);
    }
}

#[test]
fn vanishing_tail_is_finite_and_exact() {
    // Row 5's student tail (~4e-17) is 0 in f32 as 1 − Σ q; the exact tail (the composed
    // path's fallback, the fused kernel's sum over the entries outside the ids) still gives
    // log Q_tail ≈ −37.7 and a tail term of the right size.
    let c = case();
    let (want, _) = reference_row(
        &c.student[5 * VOCAB..],
        &c.ids[5 * K..],
        &c.lp[5 * K..],
        TopKConvention::TailBucket,
        1.0,
    );
    assert!(want > 3.0, "the tail term dominates: {want}");
    for path in [Path::Auto, Path::Composed] {
        let (_, per_row, grad) =
            run(&c, TopKConvention::TailBucket, 1.0, false, &[true; 6], path, Reduction::Mean);
        assert!(per_row.iter().chain(&grad).all(|x| x.is_finite()), "{path:?}");
        assert!((per_row[5] - want).abs() < 1e-4 * want, "{path:?}: {} vs {want}", per_row[5]);
    }
}

#[test]
fn routing_untracked_students_and_extras_agree_with_the_composed_path() {
    let c = case();
    let valid = [true, true, false, true, true, true];
    for convention in
        [TopKConvention::RenormTeacher, TopKConvention::RenormBoth, TopKConvention::TailBucket]
    {
        // Untracked student (no autodiff): the loss-only kernel, still counted as fused.
        let device = Device::flex();
        let student =
            Tensor::<2>::from_data(TensorData::new(to_f32(&c.student), [c.rows, VOCAB]), &device);
        let loss = cfg(convention, 2.0, true);
        let before = fused_calls();
        let fused =
            loss.forward(batch(&c, student.clone(), &valid, &device), Reduction::Mean).unwrap();
        assert_eq!(fused_calls(), before + 1, "{convention:?}: untracked flex f32 is fused");
        let composed = with_path(Path::Composed, || {
            loss.forward(batch(&c, student, &valid, &device), Reduction::Mean).unwrap()
        });
        assert_eq!(fused_calls(), before + 1, "{convention:?}: Path::Composed is not");
        let close = |what: &str, a: Vec<f64>, b: Vec<f64>| {
            assert_eq!(a.len(), b.len(), "{what}");
            for (x, y) in a.iter().zip(&b) {
                assert!(
                    (x - y).abs() <= 1e-4 * y.abs() + 1e-6,
                    "{convention:?} {what}: {x} vs {y}"
                );
            }
        };
        close("loss", host(fused.loss), host(composed.loss));
        close("per_row", host(fused.per_row), host(composed.per_row));
        assert_eq!(fused.extras.len(), composed.extras.len(), "{convention:?}");
        for (a, b) in fused.extras.into_iter().zip(composed.extras) {
            assert_eq!(a.name, b.name);
            close(a.name, host(a.value), host(b.value));
        }
    }
}

fn sparse(ids: [[i64; 3]; 2], mask: [bool; 2]) -> SparseKdBatch {
    let device = Device::flex();
    SparseKdBatch {
        student_logits: Tensor::<2>::from_floats(
            [[0.0, 1.0, 2.0, 3.0], [1.0, 0.0, 0.5, 0.2]],
            &device,
        ),
        teacher_topk_ids: Tensor::<2, Int>::from_ints(ids, &device),
        teacher_topk_logprobs: Tensor::<2>::from_floats(
            [[-1.0, -2.0, -3.0], [-1.0, -2.0, -3.0]],
            &device,
        ),
        labels: None,
        mask: Some(Tensor::<1, Bool>::from_bool(TensorData::from(mask), &device)),
    }
}

#[test]
fn repeated_ids_in_a_counted_row_are_an_error_but_padding_rows_are_not_checked() {
    for convention in [TopKConvention::TailBucket, TopKConvention::RenormTeacher] {
        let loss = TopKKlConfig::new(convention).init().unwrap();
        let err = loss
            .forward(sparse([[0, 1, 2], [3, 3, 0]], [true, true]), Reduction::Mean)
            .unwrap_err();
        assert!(
            matches!(err, KdError::InvalidHyperparameter { name: "teacher_topk_ids", got, .. } if got == 3.0),
            "{err}"
        );
        // The same ids on an ignored (padding) row are fine.
        let out =
            loss.forward(sparse([[0, 1, 2], [3, 3, 0]], [true, false]), Reduction::Mean).unwrap();
        assert!(out.loss.into_scalar::<f32>().is_finite());
    }
}

#[test]
fn out_of_range_and_shape_errors() {
    let loss = TopKKlConfig::default().init().unwrap();
    let err =
        loss.forward(sparse([[0, 1, 4], [0, 1, 2]], [true, true]), Reduction::Mean).unwrap_err();
    assert!(matches!(err, KdError::InvalidHyperparameter { got, .. } if got == 4.0), "{err}");
    let mut batch = sparse([[0, 1, 2], [0, 1, 2]], [true, true]);
    batch.teacher_topk_logprobs = Tensor::<2>::from_floats([[-1.0, -2.0]], &Device::flex());
    assert!(matches!(loss.forward(batch, Reduction::Mean), Err(KdError::ShapeMismatch { .. })));
}

/// A NaN or `+inf` among the logits a row reads (the student's, or the teacher's top-k
/// log-probabilities) gives that row a NaN value and gradient on the fused path, for every
/// convention; the other rows are unaffected. The renormalised-both convention reads the student
/// only at the teacher's ids.
#[test]
fn non_finite_inputs_give_nan_rows() {
    let all =
        [TopKConvention::TailBucket, TopKConvention::RenormTeacher, TopKConvention::RenormBoth];
    for convention in all {
        for (side, bad) in
            [("student", f32::NAN), ("student", f32::INFINITY), ("teacher", f32::NAN)]
        {
            let mut c = case();
            if side == "student" {
                let id = c.ids[K]; // row 1's first teacher id: read by every convention
                c.student[VOCAB + id] = bad as f64;
            } else {
                c.lp[K + 1] = bad as f64;
            }
            let valid = vec![true; c.rows];
            let (_, per_row, grad) =
                run(&c, convention, 1.0, false, &valid, Path::Auto, Reduction::None);
            let what = format!("{convention:?} with {bad} in the {side}");
            assert!(per_row[1].is_nan(), "{what}: {per_row:?}");
            assert!(per_row[0].is_finite() && per_row[2].is_finite(), "{what}: {per_row:?}");
            assert!(grad[VOCAB..2 * VOCAB].iter().all(|g| g.is_nan()), "{what}: row 1's gradient");
            assert!(grad[..VOCAB].iter().all(|g| g.is_finite()), "{what}: row 0's gradient");
        }
    }
}
