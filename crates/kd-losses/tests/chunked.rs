//! The chunked LM head + loss against the dense path (logits = h·Wᵀ (+ b), then the loss):
//! values and gradients w.r.t. hidden states, head weight and bias, for several losses,
//! reductions, masks and chunk sizes, and the error cases.

mod common;

use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use common::rng::bell;
use kd_losses::fused::{Path, with_path};
use kd_losses::{
    ChunkedHeadBatch, ChunkedHeadLoss, ChunkedTeacher, Divergence, KdBatch, KdError, LossConfig,
    Reduction,
};

const ROWS: usize = 7;
const HIDDEN: usize = 5;
const VOCAB: usize = 11;

fn tensor<const D: usize>(shape: [usize; D], seed: u64, std: f32, device: &Device) -> Tensor<D> {
    let n = shape.iter().product();
    Tensor::from_data(TensorData::new(bell(n, seed, std), shape), device)
}

fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_into_vec::<f32>().unwrap()
}

/// `|a − b| ≤ rel·|b| + abs_scale·max|b| + 1e-7` element-wise.
fn assert_close(what: &str, got: &[f32], want: &[f32], rel: f32, abs_scale: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let tol = rel * w.abs() + abs_scale * scale + 1e-7;
        assert!((g - w).abs() <= tol, "{what}[{i}]: chunked {g} vs dense {w} (tol {tol})");
    }
}

/// Labels with an ignored row, and a mask dropping another row.
fn labels_and_mask(device: &Device) -> (Tensor<1, Int>, Tensor<1, Bool>) {
    let labels = Tensor::<1, Int>::from_ints([3, 0, -100, 10, 4, 7, 1], device);
    let mask = Tensor::<1, Bool>::from_bool(
        TensorData::from([true, true, true, true, false, true, true]),
        device,
    );
    (labels, mask)
}

struct Case {
    hidden: Tensor<2>,
    weight: Tensor<2>,
    bias: Option<Tensor<1>>,
    teacher: Tensor<2>,
    labels: Option<Tensor<1, Int>>,
    mask: Option<Tensor<1, Bool>>,
}

impl Case {
    fn new(device: &Device, bias: bool, masked: bool) -> Self {
        let (labels, mask) = labels_and_mask(device);
        Self {
            hidden: tensor([ROWS, HIDDEN], 1, 1.0, device),
            weight: tensor([VOCAB, HIDDEN], 2, 1.0, device),
            bias: bias.then(|| tensor([VOCAB], 3, 0.5, device)),
            teacher: tensor([ROWS, VOCAB], 4, 2.0, device),
            labels: Some(labels),
            mask: masked.then_some(mask),
        }
    }
}

struct Result3 {
    loss: Vec<f32>,
    grad_h: Vec<f32>,
    grad_w: Vec<f32>,
    grad_b: Option<Vec<f32>>,
}

fn dense(loss: &dyn Divergence, c: &Case, reduction: Reduction) -> Result3 {
    let h = c.hidden.clone().require_grad();
    let w = c.weight.clone().require_grad();
    let b = c.bias.clone().map(Tensor::require_grad);
    let mut logits = h.clone().matmul(w.clone().transpose()); // [rows, vocab]
    if let Some(b) = &b {
        logits = logits.add(b.clone().unsqueeze_dim::<2>(0));
    }
    let mut batch = KdBatch::new(logits, c.teacher.clone());
    if let Some(l) = &c.labels {
        batch = batch.with_labels(l.clone());
    }
    if let Some(m) = &c.mask {
        batch = batch.with_mask(m.clone());
    }
    let out = loss.forward(batch, reduction).unwrap();
    let grads = out.loss.backward();
    Result3 {
        loss: host(out.loss),
        grad_h: host(h.grad(&grads).unwrap()),
        grad_w: host(w.grad(&grads).unwrap()),
        grad_b: b.map(|b| host(b.grad(&grads).unwrap())),
    }
}

fn chunked(
    loss: &dyn Divergence,
    c: &Case,
    teacher: ChunkedTeacher,
    reduction: Reduction,
    chunk: usize,
) -> Result3 {
    let h = c.hidden.clone().require_grad();
    let w = c.weight.clone().require_grad();
    let b = c.bias.clone().map(Tensor::require_grad);
    let mut batch = ChunkedHeadBatch::new(h.clone(), w.clone(), teacher);
    if let Some(b) = &b {
        batch = batch.with_bias(b.clone());
    }
    if let Some(l) = &c.labels {
        batch = batch.with_labels(l.clone());
    }
    if let Some(m) = &c.mask {
        batch = batch.with_mask(m.clone());
    }
    let out = ChunkedHeadLoss::new(chunk).unwrap().forward(loss, batch, reduction).unwrap();
    assert_eq!(out.loss.dims(), [1]);
    assert_eq!(out.per_row.dims(), [ROWS]);
    let grads = out.loss.backward();
    Result3 {
        loss: host(out.loss),
        grad_h: host(h.grad(&grads).unwrap()),
        grad_w: host(w.grad(&grads).unwrap()),
        grad_b: b.map(|b| host(b.grad(&grads).unwrap())),
    }
}

fn compare(what: &str, got: &Result3, want: &Result3) {
    assert_close(&format!("{what} loss"), &got.loss, &want.loss, 2e-6, 0.0);
    assert_close(&format!("{what} grad hidden"), &got.grad_h, &want.grad_h, 1e-5, 1e-6);
    assert_close(&format!("{what} grad weight"), &got.grad_w, &want.grad_w, 1e-5, 1e-6);
    if let (Some(g), Some(w)) = (&got.grad_b, &want.grad_b) {
        assert_close(&format!("{what} grad bias"), g, w, 1e-5, 1e-6);
    }
    assert!(want.grad_h.iter().any(|x| x.abs() > 1e-4), "{what}: dense gradient is trivially zero");
}

fn loss_by_name(json: &str) -> Box<dyn Divergence> {
    serde_json::from_str::<LossConfig>(json).unwrap().init().unwrap()
}

const LOSSES: &[&str] = &[
    r#"{"loss": "forward_kl", "temperature": 2.0, "scale_by_t2": true}"#,
    r#"{"loss": "reverse_kl"}"#,
    r#"{"loss": "gkd_jsd", "beta": 0.3}"#,
    r#"{"loss": "tvd"}"#,
    r#"{"loss": "hinton_kd", "alpha": 0.4, "temperature": 1.5}"#,
    r#"{"loss": "skew_forward_kl"}"#,
];

#[test]
fn matches_dense_for_losses_reductions_masks_and_chunk_sizes() {
    let device = Device::flex().autodiff();
    for json in LOSSES {
        let loss = loss_by_name(json);
        for (bias, masked) in [(false, false), (true, true)] {
            let case = Case::new(&device, bias, masked);
            for reduction in [Reduction::Mean, Reduction::Sum] {
                let want = dense(&*loss, &case, reduction);
                for chunk in [1, 2, 3, ROWS, ROWS + 5] {
                    let got = chunked(
                        &*loss,
                        &case,
                        ChunkedTeacher::Logits(case.teacher.clone()),
                        reduction,
                        chunk,
                    );
                    let what =
                        format!("{json} bias={bias} masked={masked} {reduction:?} chunk={chunk}");
                    compare(&what, &got, &want);
                }
            }
        }
    }
}

#[test]
fn composed_and_fused_paths_agree_with_dense() {
    let device = Device::flex().autodiff();
    let case = Case::new(&device, false, true);
    for json in [r#"{"loss": "forward_kl"}"#, r#"{"loss": "gkd_jsd"}"#] {
        let loss = loss_by_name(json);
        for path in [Path::Auto, Path::Composed] {
            with_path(path, || {
                let want = dense(&*loss, &case, Reduction::Mean);
                let teacher = ChunkedTeacher::Logits(case.teacher.clone());
                let got = chunked(&*loss, &case, teacher, Reduction::Mean, 3);
                compare(&format!("{json} {path:?}"), &got, &want);
            });
        }
    }
}

#[test]
fn teacher_given_as_hidden_and_head() {
    let device = Device::flex().autodiff();
    let mut case = Case::new(&device, true, true);
    let t_hidden = tensor([ROWS, 4], 7, 1.0, &device); // teacher hidden size 4
    let t_weight = tensor([VOCAB, 4], 8, 1.5, &device);
    let t_bias = tensor([VOCAB], 9, 0.3, &device);
    // The dense reference sees the teacher logits the head would give.
    case.teacher =
        t_hidden.clone().matmul(t_weight.clone().transpose()).add(t_bias.clone().unsqueeze_dim(0));
    let loss = loss_by_name(r#"{"loss": "forward_kl"}"#);
    let want = dense(&*loss, &case, Reduction::Mean);
    for chunk in [1, 4, 100] {
        let teacher = ChunkedTeacher::Hidden {
            hidden: t_hidden.clone(),
            weight: t_weight.clone(),
            bias: Some(t_bias.clone()),
        };
        let got = chunked(&*loss, &case, teacher, Reduction::Mean, chunk);
        compare(&format!("teacher hidden chunk={chunk}"), &got, &want);
    }
}

#[test]
fn cross_vocabulary_loss_accepts_a_different_teacher_vocabulary() {
    let device = Device::flex().autodiff();
    let mut case = Case::new(&device, false, false);
    case.teacher = tensor([ROWS, VOCAB + 3], 10, 2.0, &device);
    let loss = loss_by_name(r#"{"loss": "uld"}"#);
    let want = dense(&*loss, &case, Reduction::Mean);
    let got =
        chunked(&*loss, &case, ChunkedTeacher::Logits(case.teacher.clone()), Reduction::Mean, 2);
    compare("uld", &got, &want);
}

#[test]
fn gradient_reaches_the_graph_behind_the_hidden_states() {
    // h = 2·x: the chunked loss must carry its gradient through the caller's graph to x.
    let device = Device::flex().autodiff();
    let x = tensor([ROWS, HIDDEN], 11, 1.0, &device).require_grad();
    let w = tensor([VOCAB, HIDDEN], 12, 1.0, &device); // frozen head
    let teacher = tensor([ROWS, VOCAB], 13, 2.0, &device);
    let loss = loss_by_name(r#"{"loss": "reverse_kl"}"#);

    let dense_out = loss
        .forward(
            KdBatch::new(x.clone().mul_scalar(2.0).matmul(w.clone().transpose()), teacher.clone()),
            Reduction::Mean,
        )
        .unwrap();
    let want = host(x.grad(&dense_out.loss.backward()).unwrap());

    let batch = ChunkedHeadBatch::new(
        x.clone().mul_scalar(2.0),
        w.clone(),
        ChunkedTeacher::Logits(teacher),
    );
    let out = ChunkedHeadLoss::new(3).unwrap().forward(&*loss, batch, Reduction::Mean).unwrap();
    let grads = out.loss.backward();
    assert_close("grad x", &host(x.grad(&grads).unwrap()), &want, 1e-5, 1e-6);
    assert!(w.grad(&grads).is_none(), "frozen head gets no gradient");
}

#[test]
fn untracked_inputs_give_the_value_only() {
    let device = Device::flex(); // no autodiff at all
    let case = Case::new(&device, true, true);
    let loss = loss_by_name(r#"{"loss": "gkd_jsd"}"#);
    let logits = case
        .hidden
        .clone()
        .matmul(case.weight.clone().transpose())
        .add(case.bias.clone().unwrap().unsqueeze_dim(0));
    let want = loss
        .forward(
            KdBatch::new(logits, case.teacher.clone())
                .with_labels(case.labels.clone().unwrap())
                .with_mask(case.mask.clone().unwrap()),
            Reduction::Sum,
        )
        .unwrap();
    let batch = ChunkedHeadBatch::new(
        case.hidden.clone(),
        case.weight.clone(),
        ChunkedTeacher::Logits(case.teacher.clone()),
    )
    .with_bias(case.bias.clone().unwrap())
    .with_labels(case.labels.clone().unwrap())
    .with_mask(case.mask.clone().unwrap());
    let out = ChunkedHeadLoss::new(2).unwrap().forward(&*loss, batch, Reduction::Sum).unwrap();
    assert_eq!(out.n_valid, 5);
    assert_close("loss", &host(out.loss), &host(want.loss), 2e-6, 0.0);
    assert_close("per_row", &host(out.per_row), &host(want.per_row), 2e-6, 1e-7);
}

#[test]
fn fully_masked_batch_gives_zero_loss_and_zero_gradients() {
    let device = Device::flex().autodiff();
    let h = tensor([ROWS, HIDDEN], 14, 1.0, &device).require_grad();
    let w = tensor([VOCAB, HIDDEN], 15, 1.0, &device).require_grad();
    let mask = Tensor::<1, Bool>::from_bool(TensorData::from([false; ROWS]), &device);
    let batch = ChunkedHeadBatch::new(
        h.clone(),
        w.clone(),
        ChunkedTeacher::Logits(tensor([ROWS, VOCAB], 16, 2.0, &device)),
    )
    .with_mask(mask);
    let loss = loss_by_name(r#"{"loss": "forward_kl"}"#);
    let out = ChunkedHeadLoss::new(4).unwrap().forward(&*loss, batch, Reduction::Mean).unwrap();
    assert_eq!(out.n_valid, 0);
    let grads = out.loss.backward();
    assert_eq!(host(out.loss), vec![0.0]);
    assert!(host(h.grad(&grads).unwrap()).iter().all(|g| *g == 0.0));
    assert!(host(w.grad(&grads).unwrap()).iter().all(|g| *g == 0.0));
}

fn err(loss: &dyn Divergence, batch: ChunkedHeadBatch, reduction: Reduction) -> KdError {
    ChunkedHeadLoss::new(2).unwrap().forward(loss, batch, reduction).unwrap_err()
}

#[test]
fn errors_are_typed() {
    let device = Device::flex().autodiff();
    let fkl = loss_by_name(r#"{"loss": "forward_kl"}"#);
    let h = tensor([ROWS, HIDDEN], 1, 1.0, &device);
    let w = tensor([VOCAB, HIDDEN], 2, 1.0, &device);
    let t = tensor([ROWS, VOCAB], 3, 1.0, &device);
    let logits = |t: Tensor<2>| ChunkedTeacher::Logits(t);

    assert!(matches!(
        ChunkedHeadLoss::new(0),
        Err(KdError::InvalidHyperparameter { name: "chunk_rows", .. })
    ));
    // Head with the wrong hidden size.
    let bad_w = tensor([VOCAB, HIDDEN + 1], 2, 1.0, &device);
    let e = err(&*fkl, ChunkedHeadBatch::new(h.clone(), bad_w, logits(t.clone())), Reduction::Mean);
    assert!(
        matches!(&e, KdError::ShapeMismatch { got, .. } if got == &vec![VOCAB, HIDDEN + 1]),
        "{e}"
    );
    // Bias of the wrong length.
    let batch = ChunkedHeadBatch::new(h.clone(), w.clone(), logits(t.clone())).with_bias(tensor(
        [VOCAB - 1],
        3,
        1.0,
        &device,
    ));
    assert!(matches!(err(&*fkl, batch, Reduction::Mean), KdError::ShapeMismatch { .. }));
    // Teacher rows, teacher vocabulary, teacher head.
    let short = tensor([ROWS - 1, VOCAB], 3, 1.0, &device);
    let e = err(&*fkl, ChunkedHeadBatch::new(h.clone(), w.clone(), logits(short)), Reduction::Mean);
    assert!(matches!(e, KdError::ShapeMismatch { .. }), "{e}");
    let wide = tensor([ROWS, VOCAB + 1], 3, 1.0, &device);
    let e = err(&*fkl, ChunkedHeadBatch::new(h.clone(), w.clone(), logits(wide)), Reduction::Mean);
    assert!(
        matches!(e, KdError::VocabMismatch { student: VOCAB, teacher, .. } if teacher == VOCAB + 1)
    );
    let teacher = ChunkedTeacher::Hidden {
        hidden: tensor([ROWS, 4], 3, 1.0, &device),
        weight: tensor([VOCAB, 3], 3, 1.0, &device),
        bias: None,
    };
    let e = err(&*fkl, ChunkedHeadBatch::new(h.clone(), w.clone(), teacher), Reduction::Mean);
    assert!(matches!(e, KdError::ShapeMismatch { .. }), "{e}");
    // Labels and mask of the wrong length.
    let batch = ChunkedHeadBatch::new(h.clone(), w.clone(), logits(t.clone()))
        .with_labels(Tensor::<1, Int>::from_ints([0, 1], &device));
    assert!(matches!(err(&*fkl, batch, Reduction::Mean), KdError::ShapeMismatch { .. }));
    // A per-row reduction and a batch-coupled loss are refused.
    let batch = ChunkedHeadBatch::new(h.clone(), w.clone(), logits(t.clone()));
    assert!(matches!(
        err(&*fkl, batch, Reduction::None),
        KdError::UnknownOption { name: "reduction", .. }
    ));
    let atkd = loss_by_name(r#"{"loss": "atkd"}"#);
    let batch = ChunkedHeadBatch::new(h.clone(), w.clone(), logits(t.clone()))
        .with_labels(Tensor::<1, Int>::from_ints([0, 1, 2, 3, 4, 5, 6], &device));
    assert!(matches!(
        err(&*atkd, batch, Reduction::Mean),
        KdError::UnknownOption { name: "loss", .. }
    ));
    // Errors of the loss itself come through (hinton_kd needs labels).
    let hinton = loss_by_name(r#"{"loss": "hinton_kd"}"#);
    let batch = ChunkedHeadBatch::new(h, w, logits(t));
    assert!(matches!(err(&*hinton, batch, Reduction::Mean), KdError::MissingInput { .. }));
}
