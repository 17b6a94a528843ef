//! The `feature` method: hand-checked feature distances and gradients, every hidden state of a
//! `CausalLm`, the learned projection, exact resume (projections and their AdamW moments
//! included), the saved projection file, clean errors for bad layer pairs, and the fitted
//! teacher normalisations (PHI-S and the standardisations): first-step loss by hand, refit
//! schedule, exact resume.

use std::path::{Path, PathBuf};

use burn::tensor::{Bool, Device, Int, Tensor, TensorData};
use kd_losses::teachers::feature_distance::{FeatureDistance, FeatureDistanceConfig};
use kd_losses::teachers::phi_s::{
    FittedNormalization, Normalization, PhiSTransform, Rotation, RunningStats,
};
use kd_models::CausalLm;
use kd_train::checkpoint::{Checkpoint, METHOD_OPTIMIZER_FILE, METHOD_PARAMS_FILE, read_tensors};
use kd_train::data::{TokenDataset, instruction_block};
use kd_train::methods::feature::{
    FeatureConfig, FeatureLoss, PROJECTIONS_FILE, Projection, Projections, TeacherNorm,
    feature_distance, standardize,
};
use kd_train::params::{load_param_values, param_values};
use kd_train::{
    LanguageModel, MethodConfig, StepRecord, TrainConfig, TrainError, TrainReport, Trainer,
};

use common::{SEQ, seeded};

mod common;

fn tmp(name: &str) -> PathBuf {
    common::tmp(&format!("feature-{name}"))
}

/// "Add" prompts `[1, a, b, 3]` with responses `[a + b (mod 20) + 4, 2]`.
fn data() -> TokenDataset {
    let blocks = (0..40)
        .map(|i| {
            let (a, b) = (4 + i % 7, 4 + (i * 3) % 9);
            let response = [((a + b) % 20 + 4) as u32, 2];
            instruction_block(&[1, a as u32, b as u32, 3], &response, SEQ, 0)
        })
        .collect();
    TokenDataset::new("add", blocks).unwrap()
}

fn config(method: FeatureConfig, steps: u64, out: Option<&Path>) -> TrainConfig {
    TrainConfig { steps, ..common::config(MethodConfig::Feature(method), out) }
}

/// A 1 × 8 student and a 2 × 16 teacher: the widths differ.
fn trainer(method: FeatureConfig, steps: u64, out: Option<&Path>, seed: u64) -> Trainer<CausalLm> {
    let device = Device::flex().autodiff();
    let student = seeded(seed, 8, 1, &device);
    let teacher = seeded(99, 16, 2, &Device::flex());
    Trainer::new(config(method, steps, out), student, &device)
        .unwrap()
        .with_teacher(teacher)
        .unwrap()
}

fn det(r: &StepRecord) -> (u64, u64, u64, u64, Vec<(String, u64)>) {
    let extra = r
        .extra
        .iter()
        .filter(|(k, _)| !k.ends_with("per_s"))
        .map(|(k, v)| (k.clone(), v.to_bits()));
    (r.step, r.loss.to_bits(), r.grad_norm.to_bits(), r.tokens, extra.collect())
}

/// An uninterrupted run `a` and a resumed run `b` agree: every step record, the student's
/// weights and the method's projections.
fn assert_same_run(a: (&TrainReport, &Trainer<CausalLm>), b: (&TrainReport, &Trainer<CausalLm>)) {
    let da: Vec<_> = a.0.history.iter().map(det).collect();
    let db: Vec<_> = b.0.history.iter().map(det).collect();
    assert_eq!(da, db, "step records differ after resume");
    assert_eq!(param_values(a.1.student()), param_values(b.1.student()), "student weights differ");
    assert_eq!(a.1.method_param_values(), b.1.method_param_values(), "projections differ");
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.inner().into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

/// The distance of `s` against `t` (all rows counted unless `mask` says otherwise) and its
/// gradient with respect to `s`.
fn distance_and_grad(
    loss: FeatureLoss,
    beta: f64,
    s: [[f32; 2]; 2],
    t: [[f32; 2]; 2],
    mask: [bool; 2],
) -> (f32, Vec<f32>) {
    distance_and_grad_with(FeatureConfig { loss, beta, ..Default::default() }, s, t, mask)
}

/// As [`distance_and_grad`], with the distance of a whole method config.
fn distance_and_grad_with(
    method: FeatureConfig,
    s: [[f32; 2]; 2],
    t: [[f32; 2]; 2],
    mask: [bool; 2],
) -> (f32, Vec<f32>) {
    let device = Device::flex().autodiff();
    let s = Tensor::<2>::from_floats(s, &device).require_grad();
    let t = Tensor::<2>::from_floats(t, &device);
    let mask = Tensor::<1, Bool>::from_bool(TensorData::new(mask.to_vec(), [2]), &device);
    let fd = method.distance().init().unwrap();
    let out = feature_distance(&fd, s.clone(), t, mask).unwrap();
    let grads = out.clone().backward();
    let g = s.grad(&grads).unwrap();
    (values(out)[0], g.into_data().convert::<f32>().try_to_vec::<f32>().unwrap())
}

fn close(a: &[f32], b: &[f32], tol: f32) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() <= tol, "{a:?} vs {b:?}");
    }
}

#[test]
fn mse_by_hand_with_its_gradient_and_mask() {
    let s = [[1.0, 2.0], [3.0, 4.0]];
    let t = [[0.0, 0.0], [1.0, 1.0]];
    // Rows: (1 + 4)/2 = 2.5 and (4 + 9)/2 = 6.5, mean 4.5; ∂/∂s = 2(s − t)/(d·rows).
    let (v, g) = distance_and_grad(FeatureLoss::Mse, 1.0, s, t, [true, true]);
    assert!((v - 4.5).abs() < 1e-6, "{v}");
    close(&g, &[0.5, 1.0, 1.0, 1.5], 1e-6);
    // The second row not counted: only the first one's 2.5, and no gradient into the second.
    let (v, g) = distance_and_grad(FeatureLoss::Mse, 1.0, s, t, [true, false]);
    assert!((v - 2.5).abs() < 1e-6, "{v}");
    close(&g, &[1.0, 2.0, 0.0, 0.0], 1e-6);
}

#[test]
fn smooth_l1_by_hand_with_its_gradient() {
    // β = 1: |0.5| < β → ½·0.25 = 0.125 (gradient d/β = 0.5); |3| ≥ β → 3 − ½ = 2.5 (gradient 1);
    // each over d = 2; second row equal → 0.
    let s = [[0.5, 3.0], [1.0, 1.0]];
    let t = [[0.0, 0.0], [1.0, 1.0]];
    let (v, g) = distance_and_grad(FeatureLoss::SmoothL1, 1.0, s, t, [true, true]);
    assert!((v - (0.125 + 2.5) / 2.0 / 2.0).abs() < 1e-6, "{v}");
    close(&g, &[0.25 / 2.0, 0.5 / 2.0, 0.0, 0.0], 1e-6);
    // β = 0 is the L1 distance.
    let (v, g) = distance_and_grad(FeatureLoss::SmoothL1, 0.0, s, t, [true, false]);
    assert!((v - 1.75).abs() < 1e-6, "{v}");
    close(&g, &[0.5, 0.5, 0.0, 0.0], 1e-6);
}

#[test]
fn cosine_by_hand_with_its_gradient() {
    // s = [1, 0], t = [1, 1]: cos = 1/√2; ∂(1 − cos)/∂s = −(t/(‖s‖‖t‖) − cos·s/‖s‖²) = [0, −1/√2].
    // Second row: s = 2t → distance 0 and gradient 0 (scale invariance).
    let r = std::f32::consts::FRAC_1_SQRT_2;
    let s = [[1.0, 0.0], [2.0, 4.0]];
    let t = [[1.0, 1.0], [1.0, 2.0]];
    let (v, g) = distance_and_grad(FeatureLoss::Cosine, 1.0, s, t, [true, true]);
    assert!((v - (1.0 - r) / 2.0).abs() < 1e-6, "{v}");
    close(&g, &[0.0, -r / 2.0, 0.0, 0.0], 1e-6);
    // A zero vector gives cos = 0 and a finite gradient, not NaN.
    let (v, g) =
        distance_and_grad(FeatureLoss::Cosine, 1.0, [[0.0, 0.0], [1.0, 0.0]], t, [true, false]);
    assert_eq!(v, 1.0);
    assert!(g.iter().all(|x| x.is_finite()), "{g:?}");
}

#[test]
fn hybrid_losses_by_hand() {
    // s = [1, 1], t = [2, 0]: cosine = 1 − 1/√2, mse = (1 + 1)/2 = 1, smooth_l1(β = 1) =
    // (0.5 + 0.5)/2 = 0.5, L1 = 1; c = 0.25; second row not counted.
    let cos = 1.0 - std::f32::consts::FRAC_1_SQRT_2;
    let (s, t) = ([[1.0, 1.0], [9.0, 9.0]], [[2.0, 0.0], [0.0, 0.0]]);
    let cases = [
        (FeatureLoss::HybMse, 1.0, 0.25 * cos + 0.75 * 1.0),
        (FeatureLoss::HybSmoothL1, 1.0, 0.25 * cos + 0.75 * 0.5),
        (FeatureLoss::HybSmoothL1, 0.0, 0.25 * cos + 0.75 * 1.0),
    ];
    for (loss, beta, want) in cases {
        let method = FeatureConfig { loss, beta, cos_weight: 0.25, ..Default::default() };
        let (v, g) = distance_and_grad_with(method, s, t, [true, false]);
        assert!((v - want).abs() < 1e-6, "{loss:?} β = {beta}: {v} vs {want}");
        close(&g[2..], &[0.0, 0.0], 0.0);
    }
}

#[test]
fn standardize_by_hand() {
    // [1, 2, 3]: mean 2, variance 2/3 → ±1/√(2/3 + 1e-5); a constant row → 0.
    let x = Tensor::<2>::from_floats([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]], &Device::flex());
    let e = 1.0 / (2.0f32 / 3.0 + 1e-5).sqrt();
    close(&values(standardize(x)), &[-e, 0.0, e, 0.0, 0.0, 0.0], 1e-6);
}

#[test]
fn gradients_match_finite_differences() {
    let s = [[0.3, -1.2], [2.0, 0.7]];
    let t = [[1.1, 0.4], [-0.5, 0.9]];
    for (loss, beta) in
        [(FeatureLoss::Mse, 1.0), (FeatureLoss::SmoothL1, 1.0), (FeatureLoss::Cosine, 1.0)]
    {
        let (_, g) = distance_and_grad(loss, beta, s, t, [true, true]);
        let h = 1e-2f32;
        for k in 0..4 {
            let (mut up, mut down) = (s, s);
            up[k / 2][k % 2] += h;
            down[k / 2][k % 2] -= h;
            let fd = (distance_and_grad(loss, beta, up, t, [true, true]).0
                - distance_and_grad(loss, beta, down, t, [true, true]).0)
                / (2.0 * h);
            assert!((fd - g[k]).abs() < 2e-3, "{loss:?} [{k}]: finite difference {fd} vs {}", g[k]);
        }
    }
}

#[test]
fn causal_lm_exposes_every_hidden_state_from_one_forward() {
    let device = Device::flex();
    let model = seeded(3, 16, 2, &device);
    let ids = Tensor::<2, Int>::from_ints([[1, 5, 7, 3]], &device);
    let h = model.hidden_states(ids.clone()).unwrap();
    assert_eq!(h.hidden.len(), 3, "embeddings + one per block");
    assert!(h.hidden.iter().all(|x| x.dims() == [1, 4, 16]));
    assert_eq!(values(h.logits), values(model.logits(ids.clone())));
    // The last one is the final (normed) hidden state.
    let last = model.hidden_and_head(ids).unwrap().hidden;
    assert_eq!(values(h.hidden[2].clone()), values(last));
}

#[test]
fn resume_is_exact_including_the_projections_and_their_moments() {
    let method = FeatureConfig {
        hard_label_weight: 0.2,
        normalize_teacher: TeacherNorm::Position,
        ..FeatureConfig::default()
    };
    let data = data();
    let a_dir = tmp("resume-a");
    let mut a = trainer(method.clone(), 6, Some(&a_dir), 1);
    let ra = a.fit(&data, None).unwrap();
    assert_eq!(ra.history.len(), 6);
    assert!(ra.history.iter().all(|r| r.extra.contains_key("feature_loss")));
    assert!(ra.history.iter().all(|r| r.extra.contains_key("logit_loss")));
    // Default mapping of 1 student block onto 2 teacher blocks: (0, 0), (1, 2).
    let params = a.method_param_values();
    let names: Vec<&str> = params.keys().map(String::as_str).collect();
    assert_eq!(names, ["proj.0.bias", "proj.0.weight", "proj.1.bias", "proj.1.weight"]);
    assert_eq!(params["proj.0.weight"].shape().to_vec(), [8, 16]);
    // The checkpoint holds the projections and their moments, checksummed.
    let ck3 = a_dir.join("checkpoint-000003");
    let sums = std::fs::read_to_string(ck3.join("checksums.json")).unwrap();
    assert!(sums.contains(METHOD_PARAMS_FILE) && sums.contains(METHOD_OPTIMIZER_FILE), "{sums}");
    let loaded = Checkpoint::load(&ck3).unwrap();
    assert_eq!(loaded.method_params.len(), 4);
    assert_eq!(loaded.method_optimizer.len(), 8);

    let b_dir = tmp("resume-b");
    let mut b = trainer(method, 6, Some(&b_dir), 2);
    b.resume_from(&ck3).unwrap();
    let rb = b.fit(&data, None).unwrap();
    assert_same_run((&ra, &a), (&rb, &b));
    let (fa, fb) = (
        Checkpoint::load(&a_dir.join("checkpoint-000006")).unwrap(),
        Checkpoint::load(&b_dir.join("checkpoint-000006")).unwrap(),
    );
    assert_eq!(fa.method_optimizer, fb.method_optimizer, "projection moments differ");
    assert_eq!(fa.optimizer, fb.optimizer);

    // A damaged projection file is caught by its checksum.
    let p = ck3.join(METHOD_PARAMS_FILE);
    let mut bytes = std::fs::read(&p).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&p, bytes).unwrap();
    assert!(matches!(Checkpoint::load(&ck3), Err(TrainError::CorruptCheckpoint { .. })));
    assert!(Checkpoint::verify(&ck3).is_err());
    let _ = std::fs::remove_dir_all(&a_dir);
    let _ = std::fs::remove_dir_all(&b_dir);
}

#[test]
fn the_projection_learns_and_its_file_loads_back() {
    // Features only, one pair (the final hidden states), a long enough run to see it fall.
    let method =
        FeatureConfig { layers: Some(vec![[1, 2]]), logit_weight: 0.0, ..FeatureConfig::default() };
    let mut t = trainer(method, 30, None, 1);
    let before = t.method_param_values();
    let r = t.fit(&data(), None).unwrap();
    let f: Vec<f64> = r.history.iter().map(|r| r.extra["feature_loss"]).collect();
    let (first, last) = (f[0], f[f.len() - 1]);
    assert!(last < 0.5 * first, "the feature loss should fall: {first} → {last}");
    assert!(r.history.iter().all(|r| !r.extra.contains_key("logit_loss")));
    let after = t.method_param_values();
    assert_ne!(before["proj.0.weight"], after["proj.0.weight"], "the projection trains");

    let dir = tmp("export");
    let path = t.save_method_params(&dir).unwrap().unwrap();
    assert_eq!(path, dir.join(PROJECTIONS_FILE));
    let read = read_tensors(&path).unwrap();
    assert_eq!(read, after);
    // It loads into the projection module.
    let fresh = Projections::init(1, 8, 16, 0, &Device::flex());
    let loaded = load_param_values(fresh, &read).unwrap();
    assert_eq!(param_values(&loaded), after);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn equal_widths_need_no_projection_unless_asked() {
    let device = Device::flex().autodiff();
    let make = |projection| {
        let student = seeded(1, 16, 1, &device);
        let teacher = seeded(99, 16, 2, &Device::flex());
        let c = config(FeatureConfig { projection, ..FeatureConfig::default() }, 2, None);
        Trainer::new(c, student, &device).unwrap().with_teacher(teacher).unwrap()
    };
    let mut t = make(Projection::Auto);
    assert!(t.method_param_values().is_empty());
    t.fit(&data(), None).unwrap();
    assert_eq!(t.save_method_params(&tmp("none")).unwrap(), None);
    assert_eq!(make(Projection::Linear).method_param_values().len(), 4);
}

#[test]
fn bad_layers_and_missing_projection_are_clean_errors() {
    let device = Device::flex().autodiff();
    let attempt = |method: FeatureConfig| {
        let student = seeded(1, 8, 1, &device);
        let teacher = seeded(99, 16, 2, &Device::flex());
        Trainer::new(config(method, 2, None), student, &device).unwrap().with_teacher(teacher)
    };
    let err = attempt(FeatureConfig { layers: Some(vec![[1, 2], [2, 2]]), ..Default::default() })
        .unwrap_err();
    assert!(matches!(err, TrainError::InvalidConfig { name: "layers", .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("the student has 1 layers: 0..=1"), "{text}");
    let err = attempt(FeatureConfig { layers: Some(vec![[1, 3]]), ..Default::default() })
        .unwrap_err()
        .to_string();
    assert!(err.contains("the teacher has 2 layers: 0..=2"), "{err}");
    let err = attempt(FeatureConfig { projection: Projection::None, ..Default::default() })
        .unwrap_err()
        .to_string();
    assert!(err.contains("projection") && err.contains("width 8") && err.contains("16"), "{err}");
}

/// Step 1's gradient norm is the one global norm over the student's and the projections'
/// gradients, recomputed here from the same models, batch and loss without the trainer.
#[test]
fn the_gradient_norm_counts_the_projections() {
    use kd_train::data::{BatchOrder, DataCursor, IGNORE_INDEX};
    use kd_train::params::GradAccumulator;
    let method = FeatureConfig { logit_weight: 0.0, ..FeatureConfig::default() };
    let data = data();
    let mut t = trainer(method, 1, None, 1);
    let rec = t.fit(&data, None).unwrap().history[0].clone();

    let device = Device::flex().autodiff();
    let student = seeded(1, 8, 1, &device);
    let teacher = seeded(99, 16, 2, &Device::flex());
    let proj = Projections::init(2, 8, 16, 5, &device); // config seed 5, pairs (0, 0), (1, 2)
    let idx = BatchOrder::new(data.len(), 5, DataCursor::default()).next_batch(4);
    let batch = data.batch(&idx, &device);
    let [b, n] = batch.input_ids.dims();
    let mask = batch.labels.clone().flatten::<1>(0, 1).not_equal_elem(IGNORE_INDEX);
    let s = student.hidden_states(batch.input_ids.clone()).unwrap().hidden;
    let th = teacher.hidden_states(batch.input_ids.clone().inner()).unwrap().hidden;
    let mut loss = Tensor::<1>::zeros([1], &device);
    let fd = FeatureDistanceConfig::new().init().unwrap();
    for (k, (i, j)) in [(0, 0), (1, 2)].into_iter().enumerate() {
        let x = proj.proj[k].forward(s[i].clone().reshape([b * n, 8]));
        let y = Tensor::from_inner(th[j].clone().reshape([b * n, 16]));
        loss = loss + feature_distance(&fd, x, y, mask.clone()).unwrap();
    }
    let grads = loss.backward();
    let (mut gs, mut gp) = (GradAccumulator::new(), GradAccumulator::new());
    gs.add(&student, &grads);
    gp.add(&proj, &grads);
    let (ns, np) = (gs.global_norm(), gp.global_norm());
    assert!(np > 0.0);
    let expect = (ns * ns + np * np).sqrt();
    assert!((rec.grad_norm - expect).abs() < 1e-4 * expect, "{} vs {expect}", rec.grad_norm);
    assert!((rec.grad_norm - ns).abs() > 1e-3 * expect, "the projections' share is visible");
}

fn fitted(mode: TeacherNorm, loss: FeatureLoss) -> FeatureConfig {
    FeatureConfig {
        normalize_teacher: mode,
        loss,
        logit_weight: 0.0,
        normalizer_refit_every: 2,
        ..FeatureConfig::default()
    }
}

/// Step 1's feature loss with a fitted normalisation, recomputed without the trainer: the
/// teacher features of each pair at the counted positions of the first batch, the PHI-S
/// transform fitted on them by kd-losses (and the alternative fitted from it), the projected
/// student features, the kd-losses distance.
#[test]
fn fitted_normalisations_first_step_by_hand() {
    use kd_train::data::{BatchOrder, DataCursor, IGNORE_INDEX};
    let data = data();
    let device = Device::flex().autodiff();
    let student = seeded(1, 8, 1, &device);
    let teacher = seeded(99, 16, 2, &Device::flex());
    let proj = Projections::init(2, 8, 16, 5, &device); // config seed 5, pairs (0, 0), (1, 2)
    let idx = BatchOrder::new(data.len(), 5, DataCursor::default()).next_batch(4);
    let batch = data.batch(&idx, &device);
    let [b, n] = batch.input_ids.dims();
    let mask = batch.labels.clone().flatten::<1>(0, 1).not_equal_elem(IGNORE_INDEX);
    let keep: Vec<bool> = mask.clone().inner().into_data().try_to_vec::<bool>().unwrap();
    let s = student.hidden_states(batch.input_ids.clone()).unwrap().hidden;
    let th = teacher.hidden_states(batch.input_ids.clone().inner()).unwrap().hidden;
    let cases = [
        (TeacherNorm::PhiS, FeatureLoss::Mse, None),
        (TeacherNorm::PhiS, FeatureLoss::HybSmoothL1, None),
        (TeacherNorm::GlobalStandardize, FeatureLoss::Mse, Some(Normalization::GlobalStandardize)),
        (TeacherNorm::Standardize, FeatureLoss::SmoothL1, Some(Normalization::Standardize)),
    ];
    for (mode, loss, alternative) in cases {
        let method = fitted(mode, loss);
        let fd: FeatureDistance = method.distance().init().unwrap();
        let mut expect = 0.0f64;
        for (k, (i, j)) in [(0, 0), (1, 2)].into_iter().enumerate() {
            let x = proj.proj[k].forward(s[i].clone().reshape([b * n, 8]));
            let y = th[j].clone().reshape([b * n, 16]);
            // The counted rows, to the host, in f64.
            let rows: Vec<f64> = y
                .clone()
                .into_data()
                .convert::<f64>()
                .try_to_vec::<f64>()
                .unwrap()
                .chunks(16)
                .zip(&keep)
                .filter(|(_, k)| **k)
                .flat_map(|(r, _)| r.to_vec())
                .collect();
            let mut stats = RunningStats::new(16);
            stats.update(&rows).unwrap();
            let t = PhiSTransform::fit(&stats, Rotation::official(16, 0).unwrap()).unwrap();
            let target = match alternative {
                None => t.standardize(y).unwrap(),
                Some(kind) => FittedNormalization::fit(kind, &t).unwrap().apply(y).unwrap(),
            };
            let f = fd.forward(x, Tensor::from_inner(target), Some(mask.clone())).unwrap();
            expect += f64::from(f.loss_mean.inner().into_scalar::<f32>());
        }
        let mut tr = trainer(method, 1, None, 1);
        let got = tr.fit(&data, None).unwrap().history[0].extra["feature_loss"];
        assert!(
            (got - expect).abs() < 1e-4 * expect.abs().max(1.0),
            "{mode:?} {loss:?}: trainer {got} vs by hand {expect}"
        );
        // The normalised target is not the raw one: the raw run's loss differs.
        let raw = FeatureConfig { normalize_teacher: TeacherNorm::None, ..fitted(mode, loss) };
        let raw =
            trainer(raw, 1, None, 1).fit(&data, None).unwrap().history[0].extra["feature_loss"];
        assert!((raw - got).abs() > 1e-3 * raw.abs(), "{mode:?}: {raw} vs {got}");
    }
}

/// The normalisers' checkpoint state after `steps` steps.
fn normaliser_state(method: FeatureConfig, steps: u64) -> serde_json::Value {
    let mut t = trainer(method, steps, None, 1);
    t.fit(&data(), None).unwrap();
    t.checkpoint().state.method["normalizers"].clone()
}

#[test]
fn the_transform_is_refitted_on_its_schedule_and_frozen() {
    let count = |v: &serde_json::Value, what: &str| v[0][what]["count"].as_u64().unwrap();
    let method = fitted(TeacherNorm::PhiS, FeatureLoss::Mse); // refit every 2 steps
    let one = normaliser_state(method.clone(), 1);
    let two = normaliser_state(method.clone(), 2);
    let three = normaliser_state(method.clone(), 3);
    // Step 1: fitted on the first batch alone.
    assert_eq!(count(&one, "transform"), count(&one, "stats"));
    assert_eq!(one[0]["fits"], 1);
    // Step 2 re-fits on both batches; step 3 adds statistics but keeps that fit.
    assert!(count(&two, "stats") > count(&one, "stats"));
    assert_eq!(count(&two, "transform"), count(&two, "stats"));
    assert_eq!(two[0]["fits"], 2);
    assert!(count(&three, "stats") > count(&two, "stats"));
    assert!(three[0]["transform"] == two[0]["transform"], "refitted off schedule");
    assert_eq!(three[0]["fits"], 2);
    // Refit every step but frozen after 1: statistics and transform stop after step 1 (the
    // first fit, then the refit after step 1 on the same statistics).
    let frozen = FeatureConfig {
        normalizer_refit_every: 1,
        normalizer_freeze_after: Some(1),
        ..method.clone()
    };
    let f3 = normaliser_state(frozen, 3);
    for k in 0..2 {
        assert!(f3[k]["stats"] == one[k]["stats"], "pair {k}: statistics grew after the freeze");
        assert!(f3[k]["transform"] == one[k]["transform"], "pair {k}: refitted after the freeze");
        assert_eq!(f3[k]["fits"], 2);
    }
    // Never re-fitted: the first batch's fit, the statistics keep growing.
    let never = FeatureConfig { normalizer_refit_every: 0, ..method };
    let n3 = normaliser_state(never, 3);
    for k in 0..2 {
        assert!(n3[k]["transform"] == one[k]["transform"], "pair {k}: refitted");
        assert!(n3[k]["stats"] == three[k]["stats"], "pair {k}: statistics differ");
    }
}

#[test]
fn resume_is_exact_with_phi_s() {
    let method = FeatureConfig {
        normalize_teacher: TeacherNorm::PhiS,
        normalizer_refit_every: 2,
        hard_label_weight: 0.2,
        ..FeatureConfig::default()
    };
    let data = data();
    let a_dir = tmp("phis-resume-a");
    let mut a = trainer(method.clone(), 6, Some(&a_dir), 1);
    let ra = a.fit(&data, None).unwrap();
    let ck3 = a_dir.join("checkpoint-000003");
    let state = Checkpoint::load(&ck3).unwrap().state.method;
    assert_eq!(state["normalizers"].as_array().unwrap().len(), 2, "one per layer pair");

    let b_dir = tmp("phis-resume-b");
    let mut b = trainer(method, 6, Some(&b_dir), 2);
    b.resume_from(&ck3).unwrap();
    let rb = b.fit(&data, None).unwrap();
    assert_same_run((&ra, &a), (&rb, &b));
    assert_eq!(a.checkpoint().state.method, b.checkpoint().state.method, "normalisers differ");
    // (Without the normalisers in the state, the resumed run would fit a new transform on
    // step 4's batch alone, and step 4's feature loss would differ.)
    let _ = std::fs::remove_dir_all(&a_dir);
    let _ = std::fs::remove_dir_all(&b_dir);
}

/// Two teachers of different widths and depths (2 × 16 and 3 × 24) with PHI-S, weights 1 : 3:
/// step 1's feature loss recomputed by hand is `¼ Σ_k F_0,k + ¾ Σ_k F_1,k`, each teacher with
/// its own layer mapping, projection heads (entries 0–1 and 2–3 of one generator) and PHI-S
/// transforms; the run keeps one normaliser per pair of every teacher and resumes exactly.
#[test]
fn two_teachers_get_their_own_heads_and_normalisers() {
    use kd_train::data::{BatchOrder, DataCursor, IGNORE_INDEX};
    use kd_train::ensemble::TeacherEnsemble;
    let data = data();
    let device = Device::flex().autodiff();
    let student = seeded(1, 8, 1, &device);
    let t0 = seeded(99, 16, 2, &Device::flex());
    let t1 = seeded(77, 24, 3, &Device::flex());
    // Pairs: uniform over each teacher's depth: (0, 0), (1, 2) and (0, 0), (1, 3).
    let proj = Projections::init_widths(&[16, 16, 24, 24], 8, 5, &device);
    let idx = BatchOrder::new(data.len(), 5, DataCursor::default()).next_batch(4);
    let batch = data.batch(&idx, &device);
    let [b, n] = batch.input_ids.dims();
    let mask = batch.labels.clone().flatten::<1>(0, 1).not_equal_elem(IGNORE_INDEX);
    let keep: Vec<bool> = mask.clone().inner().into_data().try_to_vec::<bool>().unwrap();
    let s = student.hidden_states(batch.input_ids.clone()).unwrap().hidden;
    let method = fitted(TeacherNorm::PhiS, FeatureLoss::Mse);
    let fd: FeatureDistance = method.distance().init().unwrap();
    let mut expect = 0.0f64;
    let teachers = [(&t0, 16, [(0, 0), (1, 2)], 0.25), (&t1, 24, [(0, 0), (1, 3)], 0.75)];
    for (t, (model, width, pairs, w)) in teachers.into_iter().enumerate() {
        let th = model.hidden_states(batch.input_ids.clone().inner()).unwrap().hidden;
        for (k, (i, j)) in pairs.into_iter().enumerate() {
            let x = proj.proj[2 * t + k].forward(s[i].clone().reshape([b * n, 8]));
            let y = th[j].clone().reshape([b * n, width]);
            let rows: Vec<f64> = y
                .clone()
                .into_data()
                .convert::<f64>()
                .try_to_vec::<f64>()
                .unwrap()
                .chunks(width)
                .zip(&keep)
                .filter(|(_, k)| **k)
                .flat_map(|(r, _)| r.to_vec())
                .collect();
            let mut stats = RunningStats::new(width);
            stats.update(&rows).unwrap();
            let tr = PhiSTransform::fit(&stats, Rotation::official(width, 0).unwrap()).unwrap();
            let target = Tensor::from_inner(tr.standardize(y).unwrap());
            let f = fd.forward(x, target, Some(mask.clone())).unwrap();
            expect += w * f64::from(f.loss_mean.inner().into_scalar::<f32>());
        }
    }
    let run = |steps: u64, out: Option<&Path>, seed: u64| {
        let device = Device::flex().autodiff();
        let student = seeded(seed, 8, 1, &device);
        let ensemble = TeacherEnsemble { weights: vec![1.0, 3.0], ..TeacherEnsemble::default() };
        Trainer::new(config(method.clone(), steps, out), student, &device)
            .unwrap()
            .with_teacher(seeded(99, 16, 2, &Device::flex()))
            .unwrap()
            .with_extra_teachers(vec![seeded(77, 24, 3, &Device::flex())])
            .unwrap()
            .with_ensemble(ensemble)
    };
    let got = run(1, None, 1).fit(&data, None).unwrap().history[0].extra["feature_loss"];
    assert!((got - expect).abs() < 1e-4 * expect.abs().max(1.0), "trainer {got} vs {expect}");

    // Heads and normalisers per pair of every teacher; an exact resume.
    let a_dir = tmp("two-teachers-a");
    let mut a = run(4, Some(&a_dir), 1);
    let ra = a.fit(&data, None).unwrap();
    let heads = a.method_param_values();
    assert_eq!(heads.len(), 8, "4 heads × (weight, bias): {:?}", heads.keys());
    assert_eq!(heads["proj.3.weight"].shape().to_vec(), [8, 24]);
    assert_eq!(heads["proj.1.weight"].shape().to_vec(), [8, 16]);
    let ck = a_dir.join("checkpoint-000003");
    let state = Checkpoint::load(&ck).unwrap().state.method;
    assert_eq!(state["normalizers"].as_array().unwrap().len(), 4, "one per pair per teacher");
    let b_dir = tmp("two-teachers-b");
    let mut b = run(4, Some(&b_dir), 2);
    b.resume_from(&ck).unwrap();
    let rb = b.fit(&data, None).unwrap();
    assert_same_run((&ra, &a), (&rb, &b));
    let _ = std::fs::remove_dir_all(&a_dir);
    let _ = std::fs::remove_dir_all(&b_dir);
}

/// Per-example routing with two identical teachers and no projection: each position is
/// distilled from its own teacher only, so the feature term equals the one-teacher run's.
#[test]
fn routed_identical_teachers_match_one_teacher() {
    use kd_train::ensemble::TeacherEnsemble;
    let data = data();
    let method = FeatureConfig {
        logit_weight: 0.0,
        projection: Projection::None,
        layers: Some(vec![[1, 1]]),
        ..FeatureConfig::default()
    };
    let device = Device::flex().autodiff();
    let one = Trainer::new(config(method.clone(), 1, None), seeded(1, 16, 1, &device), &device)
        .unwrap()
        .with_teacher(seeded(99, 16, 2, &Device::flex()))
        .unwrap()
        .fit(&data, None)
        .unwrap()
        .history[0]
        .extra["feature_loss"];
    let routes: Vec<usize> = (0..data.len()).map(|i| i % 2).collect();
    for ensemble in [
        TeacherEnsemble { routes: Some(routes), ..TeacherEnsemble::default() },
        TeacherEnsemble { weights: vec![2.0, 5.0], ..TeacherEnsemble::default() },
    ] {
        let two = Trainer::new(config(method.clone(), 1, None), seeded(1, 16, 1, &device), &device)
            .unwrap()
            .with_teacher(seeded(99, 16, 2, &Device::flex()))
            .unwrap()
            .with_extra_teachers(vec![seeded(99, 16, 2, &Device::flex())])
            .unwrap()
            .with_ensemble(ensemble.clone())
            .fit(&data, None)
            .unwrap()
            .history[0]
            .extra["feature_loss"];
        assert!((one - two).abs() < 1e-5 * one.abs().max(1.0), "{ensemble:?}: {one} vs {two}");
    }
}
