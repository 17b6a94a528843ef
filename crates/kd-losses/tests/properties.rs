//! Property tests (proptest): invariants every divergence must satisfy, on tiny random shapes,
//! for every dense loss and on every enabled backend.

mod common;

use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use kd_losses::fused::{Path, with_path};
use kd_losses::{
    Divergence, ForwardKlConfig, GeneralizedJsdConfig, KdBatch, LOSSES, LossConfig, Reduction,
    ReverseKlConfig, TaidConfig, TvdConfig,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};

/// Dense losses whose value is a divergence: `≥ 0`, and `0` when student = teacher (from the
/// crate's one loss list).
fn divergences() -> Vec<&'static str> {
    LOSSES.iter().filter(|l| l.dense && l.divergence).map(|l| l.id).collect()
}

/// Every dense loss (divergences plus the label-mixing and interpolating ones).
fn all_dense() -> Vec<&'static str> {
    LOSSES.iter().filter(|l| l.dense).map(|l| l.id).collect()
}

/// A random batch: `rows × vocab` student and teacher logits plus labels.
#[derive(Debug, Clone)]
struct Case {
    rows: usize,
    vocab: usize,
    student: Vec<f32>,
    teacher: Vec<f32>,
    labels: Vec<i64>,
}

fn case(scale: f32) -> impl Strategy<Value = Case> {
    (1usize..5, 2usize..9).prop_flat_map(move |(rows, vocab)| {
        let n = rows * vocab;
        (
            prop::collection::vec(-scale..scale, n),
            prop::collection::vec(-scale..scale, n),
            prop::collection::vec(0..vocab as i64, rows),
        )
            .prop_map(move |(student, teacher, labels)| Case {
                rows,
                vocab,
                student,
                teacher,
                labels,
            })
    })
}

fn tensor(data: &[f32], rows: usize, vocab: usize, device: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(data.to_vec(), [rows, vocab]), device)
}

fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

/// Loss value, gradient w.r.t. the student and per-row values.
struct Eval {
    loss: f32,
    grad: Vec<f32>,
    per_row: Vec<f32>,
}

fn eval(
    loss: &dyn Divergence,
    c: &Case,
    student: &[f32],
    teacher: &[f32],
    mask: Option<&[bool]>,
    reduction: Reduction,
    device: &Device,
) -> Eval {
    let s = tensor(student, c.rows, c.vocab, device).require_grad();
    let t = tensor(teacher, c.rows, c.vocab, device);
    let labels = Tensor::<1, Int>::from_data(TensorData::new(c.labels.clone(), [c.rows]), device);
    let mut batch = KdBatch::new(s.clone(), t).with_labels(labels);
    if let Some(m) = mask {
        batch = batch
            .with_mask(Tensor::<1, Bool>::from_data(TensorData::new(m.to_vec(), [c.rows]), device));
    }
    let out = loss.forward(batch, reduction).expect("valid inputs");
    let total = out.loss.clone().sum();
    let grads = total.backward();
    Eval {
        loss: host(total)[0],
        grad: host(s.grad(&grads).expect("gradient")),
        per_row: host(out.per_row),
    }
}

fn dense(name: &str) -> Box<dyn Divergence> {
    LossConfig::by_name(name).unwrap().init().unwrap()
}

fn close(a: f32, b: f32, tol: f32) -> bool {
    (a - b).abs() <= tol * (1.0 + a.abs().max(b.abs()))
}

/// 24 cases per property, or `KD_PROPTEST_CASES` (the slow wgpu-on-llvmpipe lane uses fewer).
fn runner() -> TestRunner {
    let cases = std::env::var("KD_PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(24);
    TestRunner::new(Config { cases, failure_persistence: None, ..Config::default() })
}

/// Runs a property on the default path (fused where it applies) and on the composed path.
fn check(
    device: &Device,
    strategy: impl Strategy<Value = Case>,
    f: impl Fn(&Case, &Device) -> Result<(), TestCaseError>,
) {
    for path in [Path::Auto, Path::Composed] {
        with_path(path, || runner().run(&strategy, |c| f(&c, device)))
            .unwrap_or_else(|e| panic!("{path:?} path: {e}"));
    }
}

/// Divergences are non-negative (up to f32 rounding).
fn prop_nonnegative(device: &Device) {
    check(device, case(6.0), |c, d| {
        for name in divergences() {
            let e = eval(&*dense(name), c, &c.student, &c.teacher, None, Reduction::Mean, d);
            prop_assert!(e.loss >= -1e-5, "{name}: {}", e.loss);
            prop_assert!(e.per_row.iter().all(|x| *x >= -1e-5), "{name}: {:?}", e.per_row);
        }
        Ok(())
    });
}

/// Every divergence is 0, with zero gradient, when student = teacher.
fn prop_zero_when_equal(device: &Device) {
    check(device, case(6.0), |c, d| {
        for name in divergences() {
            let e = eval(&*dense(name), c, &c.student, &c.student, None, Reduction::Mean, d);
            prop_assert!(e.loss.abs() < 1e-5, "{name}: {}", e.loss);
            // TVD and ULD are not differentiable at p = q (|x| at 0); their subgradient there is 0.
            prop_assert!(e.grad.iter().all(|g| g.abs() < 1e-4), "{name}: {:?}", e.grad);
        }
        Ok(())
    });
}

/// JSD(β = 0) is forward KL and JSD(β = 1) is reverse KL, in value and gradient.
fn prop_jsd_beta_edges(device: &Device) {
    check(device, case(5.0), |c, d| {
        let pairs: [(Box<dyn Divergence>, Box<dyn Divergence>); 2] = [
            (
                Box::new(GeneralizedJsdConfig::new().with_beta(0.0).init().unwrap()),
                Box::new(ForwardKlConfig::new().init().unwrap()),
            ),
            (
                Box::new(GeneralizedJsdConfig::new().with_beta(1.0).init().unwrap()),
                Box::new(ReverseKlConfig::new().init().unwrap()),
            ),
        ];
        for (a, b) in pairs {
            let x = eval(&*a, c, &c.student, &c.teacher, None, Reduction::Mean, d);
            let y = eval(&*b, c, &c.student, &c.teacher, None, Reduction::Mean, d);
            prop_assert!(close(x.loss, y.loss, 1e-5));
            prop_assert!(x.grad.iter().zip(&y.grad).all(|(g, h)| close(*g, *h, 1e-5)));
        }
        Ok(())
    });
}

/// Total variation distance lies in [0, 1] for any logits, however extreme.
fn prop_tvd_bounded(device: &Device) {
    check(device, case(60.0), |c, d| {
        let e = eval(
            &TvdConfig::new().init().unwrap(),
            c,
            &c.student,
            &c.teacher,
            None,
            Reduction::None,
            d,
        );
        prop_assert!(e.per_row.iter().all(|x| (-1e-6..=1.0 + 1e-6).contains(x)), "{:?}", e.per_row);
        Ok(())
    });
}

/// Masked rows change nothing: garbage in them leaves the loss equal and their gradient 0.
fn prop_masked_rows_ignored(device: &Device) {
    check(device, case(5.0), |c, d| {
        let mask: Vec<bool> = (0..c.rows).map(|i| i % 2 == 0).collect();
        let mut garbage_s = c.student.clone();
        let mut garbage_t = c.teacher.clone();
        for (i, keep) in mask.iter().enumerate() {
            if !keep {
                for v in 0..c.vocab {
                    garbage_s[i * c.vocab + v] = 1e3 * (v as f32 - 1.5);
                    garbage_t[i * c.vocab + v] = f32::NEG_INFINITY;
                }
            }
        }
        for name in all_dense() {
            let loss = dense(name);
            let a = eval(&*loss, c, &c.student, &c.teacher, Some(&mask), Reduction::Mean, d);
            let b = eval(&*loss, c, &garbage_s, &garbage_t, Some(&mask), Reduction::Mean, d);
            prop_assert!(close(a.loss, b.loss, 1e-5), "{name}: {} vs {}", a.loss, b.loss);
            for (i, keep) in mask.iter().enumerate() {
                let row = &b.grad[i * c.vocab..(i + 1) * c.vocab];
                if !keep {
                    prop_assert!(row.iter().all(|g| *g == 0.0), "{name}: masked row grad {row:?}");
                    prop_assert!(b.per_row[i] == 0.0);
                }
            }
        }
        Ok(())
    });
}

/// Adding a constant to every logit of a row (student or teacher) changes nothing.
fn prop_shift_invariant(device: &Device) {
    check(device, case(5.0), |c, d| {
        let shift_s: Vec<f32> = c
            .student
            .iter()
            .enumerate()
            .map(|(i, x)| x + 3.0 * (i / c.vocab) as f32 - 2.0)
            .collect();
        let shift_t: Vec<f32> = c.teacher.iter().map(|x| x + 7.5).collect();
        for name in all_dense() {
            let loss = dense(name);
            let a = eval(&*loss, c, &c.student, &c.teacher, None, Reduction::Mean, d);
            let b = eval(&*loss, c, &shift_s, &shift_t, None, Reduction::Mean, d);
            prop_assert!(close(a.loss, b.loss, 1e-4), "{name}: {} vs {}", a.loss, b.loss);
            prop_assert!(a.grad.iter().zip(&b.grad).all(|(g, h)| (g - h).abs() < 1e-4), "{name}");
        }
        Ok(())
    });
}

/// Relabelling the vocabulary (the same permutation on both sides, labels included) changes
/// neither the loss nor, up to the permutation, the gradient.
fn prop_vocab_permutation_invariant(device: &Device) {
    check(device, case(5.0), |c, d| {
        let perm: Vec<usize> = (0..c.vocab).map(|v| (v * 5 + 3) % c.vocab).collect();
        let is_perm = {
            let mut p = perm.clone();
            p.sort_unstable();
            p == (0..c.vocab).collect::<Vec<_>>()
        };
        prop_assume!(is_perm);
        let permute = |x: &[f32]| -> Vec<f32> {
            let mut out = vec![0.0; x.len()];
            for r in 0..c.rows {
                for v in 0..c.vocab {
                    out[r * c.vocab + perm[v]] = x[r * c.vocab + v];
                }
            }
            out
        };
        let mut pc = c.clone();
        pc.labels = c.labels.iter().map(|&y| perm[y as usize] as i64).collect();
        for name in all_dense() {
            let loss = dense(name);
            let a = eval(&*loss, c, &c.student, &c.teacher, None, Reduction::Mean, d);
            let b = eval(
                &*loss,
                &pc,
                &permute(&c.student),
                &permute(&c.teacher),
                None,
                Reduction::Mean,
                d,
            );
            prop_assert!(close(a.loss, b.loss, 1e-4), "{name}: {} vs {}", a.loss, b.loss);
            let pg = permute(&a.grad);
            prop_assert!(pg.iter().zip(&b.grad).all(|(g, h)| (g - h).abs() < 1e-4), "{name}");
        }
        Ok(())
    });
}

/// Softmax losses have gradient rows summing to 0 (the logits' common shift is free).
fn prop_grad_rows_sum_to_zero(device: &Device) {
    check(device, case(6.0), |c, d| {
        for name in all_dense() {
            let e = eval(&*dense(name), c, &c.student, &c.teacher, None, Reduction::Mean, d);
            for r in 0..c.rows {
                let s: f32 = e.grad[r * c.vocab..(r + 1) * c.vocab].iter().sum();
                prop_assert!(s.abs() < 1e-4, "{name}: row {r} sums to {s}");
            }
        }
        Ok(())
    });
}

/// Extreme logits (±200) and `-inf` teacher entries (padded vocabulary) stay finite.
fn prop_finite_on_extreme_logits(device: &Device) {
    check(device, case(200.0), |c, d| {
        let mut teacher = c.teacher.clone();
        for r in 0..c.rows {
            teacher[r * c.vocab + c.vocab - 1] = f32::NEG_INFINITY; // padded vocabulary entry
        }
        for name in all_dense() {
            let e = eval(&*dense(name), c, &c.student, &teacher, None, Reduction::Mean, d);
            prop_assert!(e.loss.is_finite(), "{name}: loss {}", e.loss);
            prop_assert!(e.grad.iter().all(|g| g.is_finite()), "{name}: {:?}", e.grad);
        }
        Ok(())
    });
}

/// `scale_by_t2` multiplies value and gradient by exactly T².
fn prop_t2_scaling(device: &Device) {
    check(device, case(5.0), |c, d| {
        for t in [0.5, 2.0, 4.0] {
            let plain = ForwardKlConfig::new().with_temperature(t).init().unwrap();
            let scaled =
                ForwardKlConfig::new().with_temperature(t).with_scale_by_t2(true).init().unwrap();
            let a = eval(&plain, c, &c.student, &c.teacher, None, Reduction::Mean, d);
            let b = eval(&scaled, c, &c.student, &c.teacher, None, Reduction::Mean, d);
            let t2 = (t * t) as f32;
            prop_assert!(close(a.loss * t2, b.loss, 1e-5));
            prop_assert!(a.grad.iter().zip(&b.grad).all(|(g, h)| close(g * t2, *h, 1e-5)));
        }
        Ok(())
    });
}

/// A fully masked batch has loss exactly 0 and gradient exactly 0 (no 0/0).
fn prop_fully_masked_is_zero(device: &Device) {
    check(device, case(5.0), |c, d| {
        let mask = vec![false; c.rows];
        for name in all_dense() {
            let e = eval(&*dense(name), c, &c.student, &c.teacher, Some(&mask), Reduction::Mean, d);
            prop_assert!(e.loss == 0.0, "{name}: {}", e.loss);
            prop_assert!(e.grad.iter().all(|g| *g == 0.0), "{name}");
        }
        Ok(())
    });
}

/// Reductions agree: sum = mean · n_valid, none = per-row.
fn prop_reductions_agree(device: &Device) {
    check(device, case(5.0), |c, d| {
        let mask: Vec<bool> = (0..c.rows).map(|i| i != 1).collect();
        let n = mask.iter().filter(|m| **m).count() as f32;
        for name in all_dense() {
            let loss = dense(name);
            let mean = eval(&*loss, c, &c.student, &c.teacher, Some(&mask), Reduction::Mean, d);
            let sum = eval(&*loss, c, &c.student, &c.teacher, Some(&mask), Reduction::Sum, d);
            prop_assert!(close(mean.loss * n, sum.loss, 1e-5), "{name}");
            prop_assert!(close(sum.per_row.iter().sum::<f32>(), sum.loss, 1e-5), "{name}");
        }
        Ok(())
    });
}

/// TAID at t = 1 has the gradient of forward KL (its target is then the teacher).
fn prop_taid_t1_matches_forward_kl_gradient(device: &Device) {
    check(device, case(5.0), |c, d| {
        let taid = TaidConfig::new().with_t(1.0).init().unwrap();
        let fkl = ForwardKlConfig::new().init().unwrap();
        let a = eval(&taid, c, &c.student, &c.teacher, None, Reduction::Mean, d);
        let b = eval(&fkl, c, &c.student, &c.teacher, None, Reduction::Mean, d);
        prop_assert!(a.grad.iter().zip(&b.grad).all(|(g, h)| (g - h).abs() < 1e-5));
        prop_assert!(a.loss >= b.loss - 1e-5, "cross-entropy ≥ KL");
        Ok(())
    });
}

backend_tests! {
    nonnegative => crate::prop_nonnegative;
    zero_when_equal => crate::prop_zero_when_equal;
    jsd_beta_edges => crate::prop_jsd_beta_edges;
    tvd_bounded => crate::prop_tvd_bounded;
    masked_rows_ignored => crate::prop_masked_rows_ignored;
    shift_invariant => crate::prop_shift_invariant;
    vocab_permutation_invariant => crate::prop_vocab_permutation_invariant;
    grad_rows_sum_to_zero => crate::prop_grad_rows_sum_to_zero;
    finite_on_extreme_logits => crate::prop_finite_on_extreme_logits;
    t2_scaling => crate::prop_t2_scaling;
    fully_masked_is_zero => crate::prop_fully_masked_is_zero;
    reductions_agree => crate::prop_reductions_agree;
    taid_t1_matches_forward_kl_gradient => crate::prop_taid_t1_matches_forward_kl_gradient;
}
