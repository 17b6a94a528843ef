//! Unit tests of DNKD: hand-derived cases, limits and errors.

use burn::tensor::{Device, Int, Tensor, TensorData};

use super::*;
use crate::{DecoupledKdConfig, Divergence, KdBatch};

fn dev() -> Device {
    Device::flex().autodiff()
}

fn mat(rows: &[&[f32]]) -> Tensor<2> {
    let flat: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    Tensor::from_data(TensorData::new(flat, [rows.len(), rows[0].len()]), &dev())
}

fn ids(v: &[i64]) -> Tensor<1, Int> {
    Tensor::from_data(TensorData::new(v.to_vec(), [v.len()]), &dev())
}

fn host<const D: usize>(t: Tensor<D>) -> Vec<f64> {
    t.into_data().try_into_vec_as::<f64>().unwrap()
}

fn log_softmax_host(s: &[f64]) -> Vec<f64> {
    let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let z = s.iter().map(|x| (x - m).exp()).sum::<f64>().ln() + m;
    s.iter().map(|x| x - z).collect()
}

fn close(got: f64, want: f64, what: &str) {
    assert!((got - want).abs() <= 1e-5 + 1e-5 * want.abs(), "{what}: got {got}, want {want}");
}

/// Runs DNKD (mean reduction) and returns the output and the student gradient.
fn run(dnkd: &Dnkd, store: &Datastore, batch: DnkdBatch) -> (DnkdOutput, Vec<f64>) {
    let student = batch.student_logits.clone().require_grad();
    let batch = DnkdBatch { student_logits: student.clone(), ..batch };
    let out = dnkd.forward(store, &ExactIndex, batch, Reduction::Mean).unwrap();
    let grads = out.loss.backward();
    let g = host(student.grad(&grads).unwrap());
    (out, g)
}

#[test]
fn all_neighbours_carry_the_target_so_nckd_is_zero() {
    // The three nearest keys of 0.2 all store token 2: the teacher is one-hot on the label.
    let store = Datastore::from_rows(1, vec![0.0, 0.5, 1.0, 10.0], vec![2, 2, 2, 0]).unwrap();
    let dnkd = DnkdConfig::new().with_k(3).init().unwrap();
    let s = [0.5, -1.0, 2.0, 0.3];
    let batch = DnkdBatch::new(mat(&[&[0.2]]), mat(&[&[0.5, -1.0, 2.0, 0.3]]), ids(&[2]));
    let (out, g) = run(&dnkd, &store, batch);
    assert_eq!(host(out.extra("nckd").unwrap().clone()), vec![0.0]);
    let lq = log_softmax_host(&s);
    close(host(out.extra("tckd").unwrap().clone())[0], -lq[2], "tckd = −log q_y");
    close(host(out.per_row.clone())[0], -2.0 * lq[2], "per_row = CE + TCKD");
    // Gradient 2·(q − e_y): NCKD contributes nothing, and nothing is NaN.
    for (v, gv) in g.iter().enumerate() {
        let want = 2.0 * (lq[v].exp() - f64::from(u8::from(v == 2)));
        close(*gv, want, "gradient");
    }
}

#[test]
fn lambda_zero_is_dkd_on_the_model_plus_cross_entropy() {
    let store = Datastore::from_rows(2, vec![0.0, 0.0, 1.0, 1.0, 2.0, 0.0], vec![0, 1, 3]).unwrap();
    let s: &[&[f32]] = &[&[0.3, -1.0, 2.0, 0.5], &[1.0, 1.0, -2.0, 0.0]];
    let m: &[&[f32]] = &[&[1.0, 0.5, -0.5, 0.0], &[-1.0, 3.0, 0.2, 0.1]];
    let labels = [2, 1];
    let dnkd = DnkdConfig::new()
        .with_k(2)
        .with_lambda_knn(0.0)
        .with_temperature(2.0)
        .with_label_smoothing(0.1)
        .init()
        .unwrap();
    let batch = DnkdBatch::new(mat(&[&[0.1, 0.0], &[1.0, 0.9]]), mat(s), ids(&labels))
        .with_model_logits(mat(m));
    let (out, _) = run(&dnkd, &store, batch);
    let dkd = DecoupledKdConfig { alpha: 1.0, beta: 8.0, temperature: 2.0, warmup_factor: 1.0 }
        .init()
        .unwrap();
    let reference = dkd
        .forward(KdBatch::new(mat(s), mat(m)).with_labels(ids(&labels)), Reduction::None)
        .unwrap();
    let want_kd = host(reference.per_row);
    let per_row = host(out.per_row.clone());
    let ce = host(out.extra("ce").unwrap().clone());
    for i in 0..2 {
        let lq = log_softmax_host(&s[i].iter().map(|x| f64::from(*x)).collect::<Vec<_>>());
        let want_ce = 0.9 * -lq[labels[i] as usize] + 0.1 / 4.0 * -lq.iter().sum::<f64>();
        close(ce[i], want_ce, "label-smoothed CE");
        close(per_row[i], want_ce + want_kd[i], "per_row = CE + DKD(model)");
    }
    // The teacher is the model's softmax, whatever the neighbours.
    let t = host(out.teacher_probs.clone());
    let lm = log_softmax_host(&[1.0, 0.5, -0.5, 0.0]);
    for v in 0..4 {
        close(t[v], lm[v].exp(), "teacher = softmax(model)");
    }
}

#[test]
fn interpolation_mixes_knn_and_model() {
    let store = Datastore::from_rows(1, vec![0.0, 5.0], vec![1, 2]).unwrap();
    let dnkd = DnkdConfig::new().with_k(1).with_lambda_knn(0.25).init().unwrap();
    let batch = DnkdBatch::new(mat(&[&[0.0]]), mat(&[&[0.0, 0.0, 0.0]]), ids(&[0]))
        .with_model_logits(mat(&[&[0.0, 0.0, 0.0]]));
    let (out, _) = run(&dnkd, &store, batch);
    let t = host(out.teacher_probs);
    let third = 0.75 / 3.0;
    for (g, w) in t.iter().zip([third, 0.25 + third, third]) {
        close(*g, w, "0.25·one_hot(1) + 0.75·uniform");
    }
}

#[test]
fn one_neighbour_off_target() {
    // k = 1: the teacher is one-hot on the nearest key's token 1, the label is 2.
    let store = Datastore::from_rows(2, vec![0.0, 0.0, 3.0, 3.0], vec![1, 0]).unwrap();
    let dnkd = DnkdConfig::new().with_k(1).init().unwrap();
    let s = [0.4, -0.2, 1.1];
    let batch = DnkdBatch::new(mat(&[&[0.1, 0.0]]), mat(&[&[0.4, -0.2, 1.1]]), ids(&[2]));
    let (out, g) = run(&dnkd, &store, batch);
    assert_eq!(out.knn.weights(), &[1.0]);
    assert_eq!(out.knn.values(), &[1]);
    let lq = log_softmax_host(&s);
    let tckd = -(lq[0].exp() + lq[1].exp()).ln(); // p = [0, 1]: −log(1 − q_y)
    let nckd = -log_softmax_host(&s[..2])[1]; // p̂ = e_1 over {0, 1}
    close(host(out.extra("tckd").unwrap().clone())[0], tckd, "tckd");
    close(host(out.extra("nckd").unwrap().clone())[0], nckd, "nckd");
    close(host(out.per_row)[0], -lq[2] + tckd + 8.0 * nckd, "per_row");
    assert!(g.iter().all(|x| x.is_finite()), "{g:?}");
}

#[test]
fn distance_ties_keep_the_lower_row() {
    // Rows 0, 1, 2 are all at distance 1 from the query; k = 2 keeps rows 0 and 1.
    let store = Datastore::from_rows(1, vec![1.0, 3.0, 3.0, 0.0], vec![0, 1, 2, 0]).unwrap();
    let dnkd = DnkdConfig::new().with_k(2).init().unwrap();
    let batch = DnkdBatch::new(mat(&[&[2.0]]), mat(&[&[0.0, 0.0, 0.0]]), ids(&[0]));
    let (out, _) = run(&dnkd, &store, batch);
    assert_eq!(out.knn.neighbours().row(0), (&[0usize, 1][..], &[1.0, 1.0][..]));
    assert_eq!(host(out.knn_probs), vec![0.5, 0.5, 0.0]);
}

#[test]
fn teacher_zeros_at_temperature_two_match_host_math() {
    let dnkd = DnkdConfig::new().with_temperature(2.0).with_ce_weight(0.0).init().unwrap();
    let s = [0.7, -0.4, 0.9, 2.0];
    let student = mat(&[&[0.7, -0.4, 0.9, 2.0]]).require_grad();
    let teacher = mat(&[&[0.6, 0.4, 0.0, 0.0]]);
    let out = dnkd.loss(teacher, student.clone(), ids(&[0]), None, Reduction::Mean).unwrap();
    let g = host(student.grad(&out.loss.backward()).unwrap());
    assert!(g.iter().all(|x| x.is_finite()), "{g:?}");
    // p ∝ t^(1/2) = [√0.6, √0.4, 0, 0]; q = softmax(s/2).
    let z = 0.6f64.sqrt() + 0.4f64.sqrt();
    let (p0, p1) = (0.6f64.sqrt() / z, 0.4f64.sqrt() / z);
    let lq = log_softmax_host(&s.map(|x| x / 2.0));
    let tckd = p0 * (p0.ln() - lq[0]) + p1 * (p1.ln() - (1.0 - lq[0].exp()).ln());
    let nckd = -log_softmax_host(&[s[1] / 2.0, s[2] / 2.0, s[3] / 2.0])[0];
    close(host(out.extra("tckd").unwrap().clone())[0], tckd, "tckd");
    close(host(out.extra("nckd").unwrap().clone())[0], nckd, "nckd");
    close(host(out.loss)[0], 4.0 * tckd + 32.0 * nckd, "α τ² TCKD + β τ² NCKD");
}

#[test]
fn ignored_rows_give_zero_and_no_gradient() {
    let store = Datastore::from_rows(1, vec![0.0, 1.0, 2.0], vec![0, 1, 2]).unwrap();
    let dnkd = DnkdConfig::new().with_k(2).init().unwrap();
    let rows: &[&[f32]] = &[&[0.1, 0.2, 0.3], &[1.0, -1.0, 0.0], &[0.5, 0.5, 0.0]];
    let batch = DnkdBatch::new(mat(&[&[0.0], &[1.0], &[2.0]]), mat(rows), ids(&[0, -100, 2]))
        .with_mask(ids(&[1, 1, 0]).equal_elem(1));
    let (out, g) = run(&dnkd, &store, batch);
    let per_row = host(out.per_row.clone());
    assert_eq!(&per_row[1..], &[0.0, 0.0]);
    assert!(per_row[0] > 0.0);
    assert_eq!(&g[3..], &[0.0; 6]);
    close(host(out.loss.clone())[0], per_row[0], "mean over the one valid row");
    assert_eq!(host(out.n_valid.clone()), vec![1.0]);
    for name in ["tckd", "nckd", "ce"] {
        assert_eq!(&host(out.extra(name).unwrap().clone())[1..], &[0.0, 0.0], "{name}");
    }
    // Neighbours are reported for every row.
    assert_eq!(out.knn.len(), 3);
}

#[test]
fn hyperparameters_are_checked_at_init() {
    let bad = |c: DnkdConfig, name: &str| {
        let e = c.init().unwrap_err();
        assert!(matches!(e, KdError::InvalidHyperparameter { name: n, .. } if n == name), "{e}");
    };
    bad(DnkdConfig::new().with_k(0), "k");
    bad(DnkdConfig::new().with_knn_temperature(0.0), "knn_temperature");
    bad(DnkdConfig::new().with_knn_temperature(f64::NAN), "knn_temperature");
    bad(DnkdConfig::new().with_temperature(-1.0), "temperature");
    bad(DnkdConfig::new().with_lambda_knn(1.5), "lambda_knn");
    bad(DnkdConfig::new().with_alpha(-0.1), "alpha");
    bad(DnkdConfig::new().with_beta(f64::INFINITY), "beta");
    bad(DnkdConfig::new().with_ce_weight(-1.0), "ce_weight");
    bad(DnkdConfig::new().with_label_smoothing(1.1), "label_smoothing");
    assert!(DnkdConfig::new().init().is_ok());
    let json = r#"{"k": 8, "knn_temperature": 10.0, "lambda_knn": 1.0, "alpha": 1.0,
        "beta": 8.0, "temperature": 1.0, "ce_weight": 1.0, "label_smoothing": 0.0}"#;
    assert_eq!(serde_json::from_str::<DnkdConfig>(json).unwrap(), DnkdConfig::new());
}

#[test]
fn bad_inputs_are_errors() {
    let store = Datastore::from_rows(2, vec![0.0, 0.0, 1.0, 0.0, 0.0, 1.0], vec![0, 1, 5]).unwrap();
    let dnkd = DnkdConfig::new().with_k(2).init().unwrap();
    let student = || mat(&[&[0.0, 0.0, 0.0, 0.0, 0.0, 0.0]]);
    let call = |d: &Dnkd, b: DnkdBatch| d.forward(&store, &ExactIndex, b, Reduction::Mean);
    let is_hp = |e: KdError, name: &str| {
        assert!(matches!(e, KdError::InvalidHyperparameter { name: n, .. } if n == name), "{e}");
    };
    // k above the store size.
    let big = DnkdConfig::new().with_k(4).init().unwrap();
    is_hp(call(&big, DnkdBatch::new(mat(&[&[0.0, 0.0]]), student(), ids(&[0]))).unwrap_err(), "k");
    // Query dimension and rows.
    let e = call(&dnkd, DnkdBatch::new(mat(&[&[0.0, 0.0, 0.0]]), student(), ids(&[0])));
    assert!(matches!(e.unwrap_err(), KdError::ShapeMismatch { .. }));
    let e = call(&dnkd, DnkdBatch::new(mat(&[&[0.0, 0.0], &[1.0, 1.0]]), student(), ids(&[0])));
    assert!(matches!(e.unwrap_err(), KdError::ShapeMismatch { .. }));
    // Labels outside the vocabulary; a stored token beyond the vocabulary.
    let e = call(&dnkd, DnkdBatch::new(mat(&[&[0.0, 0.0]]), student(), ids(&[6])));
    is_hp(e.unwrap_err(), "labels");
    let e = call(&dnkd, DnkdBatch::new(mat(&[&[0.0, 1.0]]), mat(&[&[0.0; 5]]), ids(&[0])));
    is_hp(e.unwrap_err(), "datastore_values");
    // Interpolation without the model, or with the wrong shape.
    let mix = DnkdConfig::new().with_k(2).with_lambda_knn(0.5).init().unwrap();
    let e = call(&mix, DnkdBatch::new(mat(&[&[0.0, 0.0]]), student(), ids(&[0])));
    assert!(matches!(e.unwrap_err(), KdError::MissingInput { name: "model_logits", .. }));
    let b = DnkdBatch::new(mat(&[&[0.0, 0.0]]), student(), ids(&[0]))
        .with_model_logits(mat(&[&[0.0; 5]]));
    assert!(matches!(call(&mix, b).unwrap_err(), KdError::ShapeMismatch { .. }));
    // Non-finite query; negative teacher probabilities.
    let e = call(&dnkd, DnkdBatch::new(mat(&[&[f32::NAN, 0.0]]), student(), ids(&[0])));
    is_hp(e.unwrap_err(), "query_hidden");
    let e =
        dnkd.loss(mat(&[&[0.5, -0.1, 0.6]]), mat(&[&[0.0; 3]]), ids(&[0]), None, Reduction::Mean);
    is_hp(e.unwrap_err(), "teacher_probs");
}
