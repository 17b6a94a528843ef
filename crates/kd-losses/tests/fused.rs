//! The fused flex path against the op-composed reference path on stress inputs: logits spread to
//! ±200, vocabularies that are not multiples of 8 or 16, a single row, rows of `-inf` except one
//! entry, masking and every reduction, with and without a hard-label mix.

mod common;

use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use common::rng::uniform;
use kd_losses::fused::{FusedKind, Path, fused_calls, with_path};
use kd_losses::{
    AdaptiveKlConfig, Divergence, FDistillConfig, FDivergenceKind, ForwardKlConfig,
    GeneralizedJsdConfig, HardLabelMix, HintonKdConfig, JensenShannonConfig, KdBatch, Reduction,
    ReverseKlConfig, SkewForwardKlConfig, SkewReverseKlConfig, TaidConfig, TvdConfig,
};

fn losses() -> Vec<Box<dyn Divergence>> {
    vec![
        Box::new(
            ForwardKlConfig::new().with_temperature(2.0).with_scale_by_t2(true).init().unwrap(),
        ),
        Box::new(ReverseKlConfig::new().with_temperature(0.7).init().unwrap()),
        Box::new(GeneralizedJsdConfig::new().with_beta(0.3).init().unwrap()),
        Box::new(GeneralizedJsdConfig::new().with_beta(0.0).init().unwrap()),
        Box::new(GeneralizedJsdConfig::new().with_beta(1.0).init().unwrap()),
        Box::new(JensenShannonConfig::new().init().unwrap()),
        Box::new(HintonKdConfig::new().with_alpha(0.6).with_temperature(3.0).init().unwrap()),
        Box::new(
            FDistillConfig { beta: 0.2, ..FDistillConfig::new(FDivergenceKind::Js) }
                .init()
                .unwrap(),
        ),
        Box::new(HardLabelMix::new(ReverseKlConfig::new().init().unwrap(), 0.25).unwrap()),
        Box::new(SkewForwardKlConfig::new().with_alpha(0.1).init().unwrap()),
        Box::new(SkewReverseKlConfig::new().with_alpha(0.1).init().unwrap()),
        Box::new(TvdConfig::new().with_temperature(1.5).init().unwrap()),
        Box::new(TaidConfig { temperature: 2.0, ..TaidConfig::new().with_t(0.4) }.init().unwrap()),
        Box::new(FDistillConfig::new(FDivergenceKind::Tvd).init().unwrap()),
        Box::new(HardLabelMix::new(TvdConfig::new().init().unwrap(), 0.5).unwrap()),
        Box::new(AdaptiveKlConfig { mu: 0.3, temperature: 1.0 }.init().unwrap()),
    ]
}

struct Run {
    loss: Vec<f32>,
    per_row: Vec<f32>,
    grad: Vec<f32>,
}

fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_into_vec::<f32>().unwrap()
}

#[allow(clippy::too_many_arguments)]
fn run(
    loss: &dyn Divergence,
    s: &[f32],
    t: &[f32],
    rows: usize,
    vocab: usize,
    mask: &[bool],
    reduction: Reduction,
    path: Path,
) -> Run {
    with_path(path, || {
        let d = Device::flex().autodiff();
        let student =
            Tensor::<2>::from_data(TensorData::new(s.to_vec(), [rows, vocab]), &d).require_grad();
        let teacher = Tensor::<2>::from_data(TensorData::new(t.to_vec(), [rows, vocab]), &d);
        let labels: Vec<i64> = (0..rows).map(|i| (i * 7 % vocab) as i64).collect();
        let batch = KdBatch::new(student.clone(), teacher)
            .with_labels(Tensor::<1, Int>::from_data(TensorData::new(labels, [rows]), &d))
            .with_mask(Tensor::<1, Bool>::from_data(TensorData::new(mask.to_vec(), [rows]), &d));
        let out = loss.forward(batch, reduction).unwrap();
        // A non-uniform upstream for Reduction::None exercises the backward's row rescaling.
        let total = match reduction {
            Reduction::None => {
                let w: Vec<f32> = (0..rows).map(|i| 1.0 + i as f32).collect();
                out.loss.clone().mul(Tensor::from_data(TensorData::new(w, [rows]), &d)).sum()
            }
            _ => out.loss.clone().sum(),
        };
        let grads = total.backward();
        Run {
            loss: host(out.loss),
            per_row: host(out.per_row),
            grad: host(student.grad(&grads).unwrap()),
        }
    })
}

fn assert_close(what: &str, a: &[f32], b: &[f32]) {
    assert_eq!(a.len(), b.len(), "{what}");
    let scale = b.iter().fold(0f32, |m, x| m.max(x.abs()));
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(x.is_finite(), "{what}[{i}] not finite: {x}");
        assert!((x - y).abs() <= 1e-6 + 1e-3 * scale, "{what}[{i}]: fused {x} vs composed {y}");
    }
}

/// f64 reference of the per-row value of each loss in [`losses`], from the definitions; `s0`
/// is the unperturbed student row (TAID's target stops the gradient).
fn reference_row(i: usize, s: &[f64], s0: &[f64], t: &[f64], label: usize) -> f64 {
    let log_softmax = |x: &[f64], temp: f64| -> Vec<f64> {
        let y: Vec<f64> = x.iter().map(|v| v.max(-1e4) / temp).collect();
        let m = y.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + y.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
        y.iter().map(|v| v - lse).collect()
    };
    let kl =
        |la: &[f64], lb: &[f64]| la.iter().zip(lb).map(|(a, b)| a.exp() * (a - b)).sum::<f64>();
    let jsd = |beta: f64, temp: f64| {
        let (lq, lp) = (log_softmax(s, temp), log_softmax(t, temp));
        let lm: Vec<f64> = lp
            .iter()
            .zip(&lq)
            .map(|(p, q)| (beta * p.exp() + (1.0 - beta) * q.exp()).ln())
            .collect();
        beta * kl(&lp, &lm) + (1.0 - beta) * kl(&lq, &lm)
    };
    let ce = || -log_softmax(s, 1.0)[label];
    let mix_kl = |wp: f64, teacher_first: bool| {
        let (lq, lp) = (log_softmax(s, 1.0), log_softmax(t, 1.0));
        let lm: Vec<f64> =
            lp.iter().zip(&lq).map(|(p, q)| (wp * p.exp() + (1.0 - wp) * q.exp()).ln()).collect();
        if teacher_first { kl(&lp, &lm) } else { kl(&lq, &lm) }
    };
    let tvd = |temp: f64| {
        let (lq, lp) = (log_softmax(s, temp), log_softmax(t, temp));
        0.5 * lq.iter().zip(&lp).map(|(q, p)| (q.exp() - p.exp()).abs()).sum::<f64>()
    };
    match i {
        0 => 4.0 * kl(&log_softmax(t, 2.0), &log_softmax(s, 2.0)),
        1 => kl(&log_softmax(s, 0.7), &log_softmax(t, 0.7)),
        2 => jsd(0.3, 1.0),
        3 => kl(&log_softmax(t, 1.0), &log_softmax(s, 1.0)),
        4 => kl(&log_softmax(s, 1.0), &log_softmax(t, 1.0)),
        5 => jsd(0.5, 1.0),
        6 => 0.6 * 9.0 * kl(&log_softmax(t, 3.0), &log_softmax(s, 3.0)) + 0.4 * ce(),
        7 => jsd(0.8, 1.0),
        8 => 0.75 * kl(&log_softmax(s, 1.0), &log_softmax(t, 1.0)) + 0.25 * ce(),
        9 => mix_kl(0.1, true),
        10 => mix_kl(0.9, false),
        11 => tvd(1.5),
        12 => {
            // −Σ p_t log q,  p_t = softmax((0.6 s0 + 0.4 t)/2) with s0 held fixed.
            let target: Vec<f64> =
                s0.iter().zip(t).map(|(a, b)| 0.6 * a.max(-1e4) + 0.4 * b.max(-1e4)).collect();
            let (lpt, lq) = (log_softmax(&target, 2.0), log_softmax(s, 2.0));
            -lpt.iter().zip(&lq).map(|(p, q)| p.exp() * q).sum::<f64>()
        }
        13 => tvd(1.0),
        14 => 0.5 * tvd(1.0) + 0.5 * ce(),
        _ => {
            // AKL, μ = 0.3: head/tail split and weights from the stop-gradient student s0.
            let (lq, lp, lq0) = (log_softmax(s, 1.0), log_softmax(t, 1.0), log_softmax(s0, 1.0));
            let mut order: Vec<usize> = (0..lp.len()).collect();
            order.sort_by(|a, b| lp[*b].total_cmp(&lp[*a]).then(a.cmp(b)));
            let (mut cum, mut gh, mut gt) = (0.0, 0.0, 0.0);
            for (k, v) in order.into_iter().enumerate() {
                cum += lp[v].exp();
                let gap = (lp[v].exp() - lq0[v].exp()).abs();
                if k == 0 || cum <= 0.3 { gh += gap } else { gt += gap }
            }
            let wh = gh / (gh + gt).max(1e-30);
            wh * kl(&lp, &lq) + (1.0 - wh) * kl(&lq, &lp)
        }
    }
}

/// Reference loss and gradient in f64 (central differences) for a reduction; `None` is summed
/// with row weights `1 + i`, as [`run`] does.
#[allow(clippy::too_many_arguments)]
fn reference(
    i: usize,
    s: &[f32],
    t: &[f32],
    rows: usize,
    vocab: usize,
    mask: &[bool],
    reduction: Reduction,
) -> (f64, Vec<f64>) {
    let n = mask.iter().filter(|m| **m).count().max(1) as f64;
    let td: Vec<f64> = t.iter().map(|x| *x as f64).collect();
    let mut loss = 0.0;
    let mut grad = vec![0.0; rows * vocab];
    for r in (0..rows).filter(|r| mask[*r]) {
        let w = match reduction {
            Reduction::Mean => 1.0 / n,
            Reduction::Sum => 1.0,
            Reduction::None => 1.0 + r as f64,
        };
        let range = r * vocab..(r + 1) * vocab;
        let mut sd: Vec<f64> = s[range.clone()].iter().map(|x| *x as f64).collect();
        let s0 = sd.clone();
        let label = r * 7 % vocab;
        loss += w * reference_row(i, &sd, &s0, &td[range.clone()], label);
        for v in 0..vocab {
            let h = 1e-5 * (1.0 + sd[v].abs());
            let x = sd[v];
            sd[v] = x + h;
            let up = reference_row(i, &sd, &s0, &td[range.clone()], label);
            sd[v] = x - h;
            let down = reference_row(i, &sd, &s0, &td[range.clone()], label);
            sd[v] = x;
            grad[r * vocab + v] = w * (up - down) / (2.0 * h);
        }
    }
    (loss, grad)
}

/// `rel` of the largest reference entry, plus `floor`: the f32 rounding of the scaled logits
/// themselves (an ulp of the largest |logit|/T), which no f32 implementation can beat.
fn close_to(what: &str, got: &[f32], want: &[f64], rel: f64, floor: f64) {
    let scale = want.iter().fold(0f64, |m, x| m.max(x.abs()));
    for (i, (x, y)) in got.iter().zip(want).enumerate() {
        assert!(x.is_finite(), "{what}[{i}] not finite");
        let err = (*x as f64 - y).abs();
        assert!(err <= 1e-6 + floor + rel * scale, "{what}[{i}]: {x} vs f64 {y} (scale {scale:e})");
    }
}

/// Both paths against the f64 reference for every reduction (`None` with a non-uniform
/// upstream gradient, which exercises the fused backward's row rescaling). The composed path
/// gets a looser gradient tolerance: at extreme spreads its autodiff chain loses more bits.
fn compare(s: &[f32], t: &[f32], rows: usize, vocab: usize, mask: &[bool]) {
    let max_logit = s.iter().chain(t).filter(|x| x.is_finite()).fold(0f32, |m, x| m.max(x.abs()));
    let floor = 4.0 * f64::from(f32::EPSILON) * f64::from(max_logit) / 0.7;
    for (i, loss) in losses().iter().enumerate() {
        for reduction in [Reduction::Mean, Reduction::Sum, Reduction::None] {
            let (want_loss, want_grad) = reference(i, s, t, rows, vocab, mask, reduction);
            let what = format!("{} {rows}×{vocab} {reduction:?}", loss.name());
            let f = run(&**loss, s, t, rows, vocab, mask, reduction, Path::Auto);
            let c = run(&**loss, s, t, rows, vocab, mask, reduction, Path::Composed);
            let total = |r: &Run| {
                vec![
                    r.per_row
                        .iter()
                        .enumerate()
                        .map(|(i, x)| {
                            let w = if reduction == Reduction::None { 1.0 + i as f32 } else { 1.0 };
                            w * x
                        })
                        .sum::<f32>(),
                ]
            };
            let scale = if reduction == Reduction::Mean {
                1.0 / mask.iter().filter(|m| **m).count().max(1) as f32
            } else {
                1.0
            };
            let fl: Vec<f32> = total(&f).iter().map(|x| x * scale).collect();
            let cl: Vec<f32> = total(&c).iter().map(|x| x * scale).collect();
            close_to(&format!("{what} fused loss"), &fl, &[want_loss], 1e-5, floor);
            close_to(&format!("{what} fused grad"), &f.grad, &want_grad, 1e-4, floor);
            close_to(&format!("{what} composed loss"), &cl, &[want_loss], 1e-5, floor);
            close_to(&format!("{what} composed grad"), &c.grad, &want_grad, 2e-3, floor);
            assert_close(&format!("{what} per_row"), &f.per_row, &c.per_row);
        }
    }
}

#[test]
fn fused_path_is_taken_for_flex_f32_and_composed_when_asked() {
    assert_eq!(ForwardKlConfig::new().init().unwrap().fused_kind(), Some(FusedKind::ForwardKl));
    let (s, t) = (uniform(3 * 11, 1, 3.0), uniform(3 * 11, 2, 3.0));
    let loss = ReverseKlConfig::new().init().unwrap();
    let before = fused_calls();
    run(&loss, &s, &t, 3, 11, &[true; 3], Reduction::Mean, Path::Auto);
    assert_eq!(fused_calls(), before + 1, "flex f32 must take the fused kernel");
    run(&loss, &s, &t, 3, 11, &[true; 3], Reduction::Mean, Path::Composed);
    assert_eq!(fused_calls(), before + 1, "Path::Composed must not");
    // Untracked student (no autodiff): the loss-only kernel.
    let d = Device::flex();
    let st = Tensor::<2>::from_data(TensorData::new(s.clone(), [3, 11]), &d);
    let tt = Tensor::<2>::from_data(TensorData::new(t.clone(), [3, 11]), &d);
    let a = loss.forward(KdBatch::new(st.clone(), tt.clone()), Reduction::Mean).unwrap();
    assert_eq!(fused_calls(), before + 2);
    let b =
        with_path(Path::Composed, || loss.forward(KdBatch::new(st, tt), Reduction::Mean).unwrap());
    let (a, b) = (host(a.loss)[0], host(b.loss)[0]);
    assert!((a - b).abs() <= 1e-6 * (1.0 + b.abs()), "{a} vs {b}");
}

#[test]
fn spread_logits_and_odd_vocabularies() {
    for (rows, vocab) in [(1, 7), (4, 13), (5, 17), (3, 33), (2, 1000)] {
        let s = uniform(rows * vocab, rows as u64, 200.0);
        let t = uniform(rows * vocab, vocab as u64, 200.0);
        let mask: Vec<bool> = (0..rows).map(|i| rows == 1 || i != 1).collect();
        compare(&s, &t, rows, vocab, &mask);
    }
}

#[test]
fn teacher_rows_of_minus_infinity_except_one_entry() {
    let (rows, vocab) = (3, 19);
    let s = uniform(rows * vocab, 9, 5.0);
    let mut t = vec![f32::NEG_INFINITY; rows * vocab];
    for r in 0..rows {
        t[r * vocab + (r * 5) % vocab] = 1.0;
    }
    compare(&s, &t, rows, vocab, &[true, true, true]);
}

#[test]
fn fully_masked_batch_is_zero_on_both_paths() {
    let (rows, vocab) = (3, 10);
    let s = uniform(rows * vocab, 3, 4.0);
    let t = uniform(rows * vocab, 4, 4.0);
    for loss in losses() {
        let f = run(&*loss, &s, &t, rows, vocab, &[false; 3], Reduction::Mean, Path::Auto);
        assert_eq!(f.loss, vec![0.0], "{}", loss.name());
        assert!(f.grad.iter().all(|g| *g == 0.0), "{}", loss.name());
    }
}

#[test]
fn pooled_gradient_buffers_carry_nothing_over() {
    // The fused op reuses its gradient buffer from the previous call once burn drops the
    // gradient; stale values must never leak into masked rows or the next gradient.
    let (rows, vocab) = (4, 53);
    let mask = [true, false, true, false];
    for loss in losses() {
        let a = (uniform(rows * vocab, 21, 50.0), uniform(rows * vocab, 22, 50.0));
        let b = (uniform(rows * vocab, 23, 3.0), uniform(rows * vocab, 24, 3.0));
        run(&*loss, &a.0, &a.1, rows, vocab, &[true; 4], Reduction::Sum, Path::Auto);
        let f = run(&*loss, &b.0, &b.1, rows, vocab, &mask, Reduction::Mean, Path::Auto);
        let c = run(&*loss, &b.0, &b.1, rows, vocab, &mask, Reduction::Mean, Path::Composed);
        assert_close(&format!("{} reused grad", loss.name()), &f.grad, &c.grad);
        for r in [1, 3] {
            assert!(
                f.grad[r * vocab..(r + 1) * vocab].iter().all(|g| *g == 0.0),
                "{}",
                loss.name()
            );
        }
    }
}

/// A NaN or `+inf` logit in a row makes that row's value and gradient NaN on the fused path, as
/// on the op-composed path; the other rows are unaffected. (The floor at `LOGIT_FLOOR` and the
/// SIMD `exp`/`ln` clamps would each turn a NaN into a finite number: the kernels check rows.)
#[test]
fn non_finite_logits_give_nan_rows_not_finite_losses() {
    let (rows, vocab) = (3, 37);
    let mask = vec![true; rows];
    for loss in losses() {
        for (side, bad) in
            [("student", f32::NAN), ("teacher", f32::NAN), ("teacher", f32::INFINITY)]
        {
            let mut s = uniform(rows * vocab, 11, 4.0);
            let mut t = uniform(rows * vocab, 12, 4.0);
            // Row 1, in the vector body and in the tail.
            for at in [vocab + 3, 2 * vocab - 1] {
                if side == "student" { s[at] = bad } else { t[at] = bad }
            }
            let before = fused_calls();
            let r = run(loss.as_ref(), &s, &t, rows, vocab, &mask, Reduction::None, Path::Auto);
            let what = format!("{} with {bad} in the {side}", loss.name());
            assert_eq!(fused_calls(), before + 1, "{what}: the fused kernel ran");
            assert!(r.per_row[1].is_nan(), "{what}: row 1 = {}", r.per_row[1]);
            assert!(
                r.per_row[0].is_finite() && r.per_row[2].is_finite(),
                "{what}: {:?}",
                r.per_row
            );
            assert!(
                r.grad[vocab..2 * vocab].iter().all(|g| g.is_nan()),
                "{what}: row 1's gradient"
            );
            assert!(r.grad[..vocab].iter().all(|g| g.is_finite()), "{what}: row 0's gradient");
        }
    }
}
