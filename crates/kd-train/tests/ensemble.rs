//! Multi-teacher distillation: the combinations against hand-computed values, two identical
//! teachers equal one (online at both levels, stored), routing every block to one teacher
//! equals that teacher alone, and bad ensembles are refused before any step.

use std::path::{Path, PathBuf};

use burn::tensor::{Device, Tensor, TensorData};
use kd_models::CausalLm;
use kd_train::data::{TokenDataset, pack_tokens};
use kd_train::ensemble::{Averaging, TeacherEnsemble, average_sparse, combine_logits};
use kd_train::methods::kd::{KdConfig, TopKTeacher};
use kd_train::offline::{
    PrecomputeConfig, RunIdentity, Shard, SparseBlock, TeacherIdentity, TeacherLogits,
    precompute_teacher,
};
use kd_train::params::param_values;
use kd_train::{MethodConfig, TrainReport, Trainer};

mod common;
use common::{SEQ, VOCAB, det, seeded};

fn data() -> TokenDataset {
    let tokens: Vec<u32> =
        (0..40 * SEQ as u32 + 1).map(|i| i.wrapping_mul(2_654_435_761) % VOCAB as u32).collect();
    TokenDataset::new("random", pack_tokens(&tokens, SEQ)).unwrap()
}

fn values(t: Tensor<3>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
}

#[test]
fn logit_and_probability_averages_match_hand_computed_values() {
    let dev = Device::flex();
    let a = [[1.0f32, 2.0, 0.5], [0.0, -1.0, 3.0]];
    let b = [[-2.0f32, 0.0, 4.0], [1.0, 1.0, 1.0]];
    let t = |x: [[f32; 3]; 2]| Tensor::<3>::from_data(TensorData::new(x.concat(), [2, 1, 3]), &dev);
    // Row 0 mixes 0.3 / 0.7, row 1 is routed to the second teacher.
    let w = vec![vec![0.3f32, 0.0], vec![0.7, 1.0]];
    let lsm = |z: &[f32]| {
        let m = z.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let s: f32 = z.iter().map(|v| (v - m).exp()).sum();
        z.iter().map(|v| v - m - s.ln()).collect::<Vec<f32>>()
    };
    let logits = values(combine_logits(vec![t(a), t(b)], &w, Averaging::Logits));
    let probs = values(combine_logits(vec![t(a), t(b)], &w, Averaging::Probs));
    for r in 0..2 {
        let (la, lb) = (lsm(&a[r]), lsm(&b[r]));
        for v in 0..3 {
            let want = w[0][r] * a[r][v] + w[1][r] * b[r][v];
            assert!((logits[r * 3 + v] - want).abs() < 1e-6);
            let mix = w[0][r] * la[v].exp() + w[1][r] * lb[v].exp();
            assert!((probs[r * 3 + v] - mix.ln()).abs() < 1e-5, "row {r} token {v}");
        }
    }
    // Far apart teachers: a weight-0 teacher never turns into ∞·0.
    let far = |x: f32| Tensor::<3>::from_data(TensorData::new(vec![x, 0.0, -x], [1, 1, 3]), &dev);
    let out = values(combine_logits(
        vec![far(200.0), far(-200.0)],
        &[vec![0.0], vec![1.0]],
        Averaging::Probs,
    ));
    assert!(out.iter().all(|v| v.is_finite()) && (out[2] - 0.0).abs() < 1e-3, "{out:?}");
}

#[test]
fn stored_blocks_average_over_the_union_of_their_ids() {
    let ln = |p: f64| p.ln() as f32;
    // One position, k = 2: teacher A {1: 0.6, 4: 0.3}, teacher B {4: 0.5, 7: 0.4}.
    let a = SparseBlock { ids: vec![1, 4], logprobs: vec![ln(0.6), ln(0.3)], tails: vec![0.1] };
    let b = SparseBlock { ids: vec![4, 7], logprobs: vec![ln(0.5), ln(0.4)], tails: vec![0.1] };
    let m = average_sparse(&[&a, &b], &[0.5, 0.5], 2);
    // Mixture: 1 → 0.3, 4 → 0.4, 7 → 0.2; the top 2 are 4 and 1, the rest is tail.
    assert_eq!(m.ids, [1, 4]);
    assert!((m.logprobs[0] - ln(0.3)).abs() < 1e-6 && (m.logprobs[1] - ln(0.4)).abs() < 1e-6);
    assert!((m.tails[0] - 0.3).abs() < 1e-6);
    assert_eq!(average_sparse(&[&a, &b], &[0.0, 1.0], 2), b);
}

fn kd(top_k: Option<usize>) -> MethodConfig {
    MethodConfig::Kd(KdConfig {
        teacher_top_k: top_k.map(|k| TopKTeacher { k, loss: Default::default() }),
        ..KdConfig::default()
    })
}

fn fit(t: Trainer<CausalLm>) -> (TrainReport, Trainer<CausalLm>) {
    let mut t = t;
    let r = t.fit(&data(), None).unwrap();
    (r, t)
}

fn trainer(method: MethodConfig) -> Trainer<CausalLm> {
    let dev = Device::flex();
    Trainer::new(common::config(method, None), seeded(9, 8, 1, &dev), &dev.autodiff()).unwrap()
}

fn assert_same(
    a: &(TrainReport, Trainer<CausalLm>),
    b: &(TrainReport, Trainer<CausalLm>),
    rel: f64,
) {
    for (x, y) in a.0.history.iter().zip(&b.0.history) {
        let d = (x.loss - y.loss).abs() / x.loss.abs();
        assert!(d <= rel, "step {}: {} vs {}", x.step, x.loss, y.loss);
    }
    if rel == 0.0 {
        let (da, db): (Vec<_>, Vec<_>) =
            (a.0.history.iter().map(det).collect(), b.0.history.iter().map(det).collect());
        assert_eq!(da, db);
        assert_eq!(param_values(a.1.student()), param_values(b.1.student()));
    }
}

#[test]
fn two_identical_teachers_equal_one_and_routing_selects_a_teacher() {
    let dev = Device::flex();
    let (ta, tb) = (seeded(3, 16, 2, &dev), seeded(4, 16, 2, &dev));
    let one = |t: &CausalLm, m: MethodConfig| fit(trainer(m).with_teacher(t.clone()).unwrap());
    let two = |x: &CausalLm, y: &CausalLm, m: MethodConfig, e: TeacherEnsemble| {
        fit(trainer(m)
            .with_teacher(x.clone())
            .unwrap()
            .with_extra_teachers(vec![y.clone()])
            .unwrap()
            .with_ensemble(e))
    };
    let logits = TeacherEnsemble::default();
    let probs = TeacherEnsemble { averaging: Averaging::Probs, ..Default::default() };
    let single = one(&ta, kd(None));
    assert_same(&single, &two(&ta, &ta, kd(None), logits.clone()), 0.0);
    assert_same(&single, &two(&ta, &ta, kd(None), probs.clone()), 1e-5);
    let single_top = one(&ta, kd(Some(5)));
    assert_same(&single_top, &two(&ta, &ta, kd(Some(5)), probs), 1e-5);
    // Every block routed to the second teacher: that teacher alone, bit for bit.
    let routes = TeacherEnsemble { routes: Some(vec![1; 40]), ..Default::default() };
    assert_same(&one(&tb, kd(None)), &two(&ta, &tb, kd(None), routes), 0.0);
    // Two different teachers at equal weights: neither one.
    let mixed = two(&ta, &tb, kd(None), logits);
    assert_ne!(mixed.0.history[0].loss, single.0.history[0].loss);
}

fn precompute(teacher: &CausalLm, dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let identity = RunIdentity {
        teacher: TeacherIdentity { name: "t".into(), fingerprint: "sha256:0".into() },
        tokenizer: "sha256:1".into(),
    };
    let config = PrecomputeConfig { k: 6, ..Default::default() };
    let path = dir.join(Shard::WHOLE.file_name());
    precompute_teacher(teacher, &Device::flex(), &data(), &identity, &config, &path, |_, _| {})
        .unwrap();
    dir.to_path_buf()
}

#[test]
fn two_identical_stored_teachers_equal_one_and_bad_ensembles_are_refused() {
    let dev = Device::flex();
    let (ta, tb) = (seeded(3, 16, 2, &dev), seeded(4, 16, 2, &dev));
    let (da, db) = (common::tmp("ensemble-a"), common::tmp("ensemble-b"));
    precompute(&ta, &da);
    precompute(&tb, &db);
    let open = |d: &Path| TeacherLogits::open(d).unwrap();
    let single = fit(trainer(kd(Some(6))).with_teacher_logits(open(&da)).unwrap());
    let twice = fit(trainer(kd(Some(6)))
        .with_teacher_logits(open(&da))
        .unwrap()
        .with_extra_teacher_logits(vec![open(&da)])
        .unwrap()
        .with_ensemble(TeacherEnsemble { averaging: Averaging::Probs, ..Default::default() }));
    assert_same(&single, &twice, 1e-5);
    let routed = fit(trainer(kd(Some(6)))
        .with_teacher_logits(open(&da))
        .unwrap()
        .with_extra_teacher_logits(vec![open(&db)])
        .unwrap()
        .with_ensemble(TeacherEnsemble { routes: Some(vec![1; 40]), ..Default::default() }));
    let b_alone = fit(trainer(kd(Some(6))).with_teacher_logits(open(&db)).unwrap());
    assert_same(&b_alone, &routed, 0.0);

    // Refused before any step: wrong weight count, a route beyond the teachers, a method that
    // takes one teacher, extra teachers without a first.
    let bad = |e: TeacherEnsemble, m: MethodConfig| {
        let mut t = trainer(m)
            .with_teacher(ta.clone())
            .unwrap()
            .with_extra_teachers(vec![tb.clone()])
            .unwrap()
            .with_ensemble(e);
        let err = t.fit(&data(), None).unwrap_err().to_string();
        assert_eq!(t.step(), 0);
        err
    };
    let e = bad(TeacherEnsemble { weights: vec![1.0], ..Default::default() }, kd(None));
    assert!(e.contains("ensemble.weights") && e.contains("1 weights for 2 teachers"), "{e}");
    let mut routes = vec![0; 40];
    routes[17] = 2;
    let e = bad(TeacherEnsemble { routes: Some(routes), ..Default::default() }, kd(None));
    assert!(e.contains("block 17 routed to teacher 2 of 2"), "{e}");
    let gkd = MethodConfig::by_name("gkd").unwrap();
    let e = bad(TeacherEnsemble::default(), gkd);
    assert!(e.contains("2 teachers for gkd"), "{e}");
    let e = trainer(kd(None)).with_extra_teachers(vec![tb.clone()]).unwrap_err().to_string();
    assert!(e.contains("first teacher"), "{e}");
    for d in [da, db] {
        let _ = std::fs::remove_dir_all(d);
    }
}
