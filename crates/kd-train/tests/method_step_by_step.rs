//! `step_by_step` end to end on tiny models: an exact resume mid-run, λ = 0 is SFT on the label
//! blocks (same records, same weights), and the rationale task changes what is learnt.

use std::path::{Path, PathBuf};

use burn::tensor::Device;
use kd_models::CausalLm;
use kd_train::data::{TokenDataset, instruction_block};
use kd_train::methods::step_by_step::{StepByStepConfig, pair_blocks};
use kd_train::params::param_values;
use kd_train::{MethodConfig, StepRecord, TrainError, Trainer};

use common::{SEQ, config, det, seeded};

mod common;

fn tmp(name: &str) -> PathBuf {
    common::tmp(&format!("sbs-{name}"))
}

const EOS: u32 = 2;
/// Token ids of the two task prefixes.
const LABEL: u32 = 5;
const RATIONALE: u32 = 6;

/// "Add" examples: `[label] a b` → `a + b` and `[rationale] a b` → `a b a+b` (the worked
/// step), as label and rationale blocks.
fn tasks() -> (Vec<kd_train::data::TokenBlock>, Vec<kd_train::data::TokenBlock>) {
    (0..40)
        .map(|i| {
            let (a, b) = (7 + i % 7, 7 + (i * 3) % 9);
            let sum = (a + b) % 16 + 7;
            let label = instruction_block(&[1, LABEL, a, b, 3], &[sum, EOS], SEQ, 0);
            let rationale = instruction_block(&[1, RATIONALE, a, b, 3], &[a, b, sum, EOS], SEQ, 0);
            (label, rationale)
        })
        .unzip()
}

fn pairs() -> TokenDataset {
    let (l, r) = tasks();
    pair_blocks(l, r).unwrap()
}

fn trainer(method: MethodConfig, out: Option<&Path>, seed: u64) -> Trainer<CausalLm> {
    let device = Device::flex().autodiff();
    let student = seeded(seed, 8, 1, &device);
    Trainer::new(config(method, out), student, &device).unwrap().with_special_tokens(vec![EOS], 0)
}

fn sbs(lambda: f64) -> MethodConfig {
    MethodConfig::StepByStep(StepByStepConfig {
        rationale_weight: lambda,
        ..StepByStepConfig::default()
    })
}

fn extra(r: &StepRecord, key: &str) -> f64 {
    r.extra.iter().find(|(k, _)| *k == key).map(|(_, v)| *v).unwrap()
}

/// 6 steps straight vs 3 + checkpoint + resume (from another initialisation) + 3: the same
/// records bit for bit and the same weights.
#[test]
fn step_by_step_resumes_exactly() {
    let data = pairs();
    let a_dir = tmp("a");
    let mut a = trainer(sbs(1.0), Some(&a_dir), 1);
    let ra = a.fit(&data, None).unwrap();
    assert_eq!(ra.history.len(), 6);
    let b_dir = tmp("b");
    let mut b = trainer(sbs(1.0), Some(&b_dir), 2);
    b.resume_from(&a_dir.join("checkpoint-000003")).unwrap();
    let rb = b.fit(&data, None).unwrap();
    let da: Vec<_> = ra.history.iter().map(det).collect();
    let db: Vec<_> = rb.history.iter().map(det).collect();
    assert_eq!(da, db, "step records differ after resume");
    assert_eq!(param_values(a.student()), param_values(b.student()), "weights differ");
    // The loss is the label loss plus λ times the rationale loss, and the tokens of both tasks
    // count (2 label targets + 4 rationale targets per example, 4 examples per step).
    for r in &ra.history {
        let (l, q) = (extra(r, "label_loss"), extra(r, "rationale_loss"));
        assert!((r.loss - (l + q)).abs() < 1e-5 * r.loss.abs().max(1.0), "{r:?}");
        assert_eq!(r.tokens, 4 * (2 + 4));
    }
    let _ = std::fs::remove_dir_all(&a_dir);
    let _ = std::fs::remove_dir_all(&b_dir);
}

/// λ = 0 is SFT on the label blocks alone: the same data order (the cursor runs over the label
/// blocks), the same records and weights; λ = 1 learns something else.
#[test]
fn lambda_zero_is_sft_on_the_labels() {
    let data = pairs();
    let (labels, _) = tasks();
    let labels = TokenDataset::new("labels", labels).unwrap();
    let mut s = trainer(MethodConfig::by_name("sft").unwrap(), None, 1);
    let rs = s.fit(&labels, None).unwrap();
    let mut z = trainer(sbs(0.0), None, 1);
    let rz = z.fit(&data, None).unwrap();
    let strip =
        |h: &[StepRecord]| h.iter().map(|r| (r.loss.to_bits(), r.tokens)).collect::<Vec<_>>();
    assert_eq!(strip(&rs.history), strip(&rz.history));
    assert_eq!(param_values(s.student()), param_values(z.student()));
    assert!(rz.history.iter().all(|r| r.extra.iter().all(|(k, _)| k != "rationale_loss")));
    let mut one = trainer(sbs(1.0), None, 1);
    one.fit(&data, None).unwrap();
    assert_ne!(param_values(s.student()), param_values(one.student()));
}

/// A set that is not made of pairs is refused with a message that says what was expected.
#[test]
fn unpaired_data_is_an_error() {
    let (labels, _) = tasks();
    let odd = TokenDataset::new("odd", labels[..3].to_vec()).unwrap();
    let err = trainer(sbs(1.0), None, 1).fit(&odd, None).unwrap_err();
    assert!(matches!(err, TrainError::InvalidConfig { .. }), "{err}");
    assert!(err.to_string().contains("pairs"), "{err}");
}
