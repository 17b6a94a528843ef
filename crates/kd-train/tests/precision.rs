//! Training in half precision against the `f32` path, f16 loss scaling (overflow, back-off,
//! exact resume), the teacher's own precision, and the chunked head at the trainer level.

use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::nn::{Embedding, EmbeddingConfig};
use burn::tensor::{DType, Device, Int, Tensor};
use kd_losses::LossConfig;
use kd_models::{CausalLm, LlamaConfig, ModelConfig};
use kd_train::data::{TokenDataset, pack_tokens};
use kd_train::methods::kd::KdConfig;
use kd_train::params::param_values;
use kd_train::{
    LanguageModel, LossScaleConfig, MethodConfig, Precision, StepRecord, TrainConfig, Trainer,
};

const VOCAB: usize = 24;
const SEQ: usize = 12;

fn tmp(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("kd-train-precision-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    p
}

/// burn's device RNG is global and parameters initialise lazily from it: every model of these
/// tests is built and materialised under this lock (the tests run in parallel threads).
fn rng_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Seeding and initialising under one lock (burn's device RNG is global), parameters
/// materialised before the lock is released.
fn seeded(seed: u64, hidden: usize, layers: usize, device: &Device) -> CausalLm {
    let _guard = rng_lock();
    device.seed(seed);
    let config = ModelConfig::Llama(LlamaConfig {
        vocab_size: VOCAB,
        hidden_size: hidden,
        intermediate_size: 2 * hidden,
        num_hidden_layers: layers,
        num_attention_heads: 2,
        num_key_value_heads: 2,
        head_dim: hidden / 2,
        max_position_embeddings: 32,
        ..Default::default()
    });
    let model = CausalLm::init(&config, device).unwrap();
    let _ = param_values(&model);
    model
}

fn data() -> TokenDataset {
    let tokens: Vec<u32> = (0..600).map(|i| (3 + (i * 7 + i / 5) % 21) as u32).collect();
    TokenDataset::new("cycle", pack_tokens(&tokens, SEQ)).unwrap()
}

fn kd() -> MethodConfig {
    MethodConfig::Kd(KdConfig {
        divergence: LossConfig::ForwardKl(Default::default()).into(),
        ..Default::default()
    })
}

fn config(method: MethodConfig, steps: u64, out: Option<&Path>) -> TrainConfig {
    TrainConfig {
        steps,
        batch_size: 4,
        lr: 5e-3,
        warmup_steps: 1,
        log_every: 0,
        eval_rouge_prompts: 0,
        checkpoint_every: 4,
        keep_checkpoints: 5,
        output_dir: out.map(Path::to_path_buf),
        seed: 3,
        method,
        ..Default::default()
    }
}

fn run(config: TrainConfig) -> (Vec<StepRecord>, CausalLm) {
    let device = Device::flex().autodiff();
    let student = seeded(1, 8, 1, &device);
    let teacher = seeded(2, 16, 2, &Device::flex());
    let mut t = Trainer::new(config, student, &device).unwrap().with_teacher(teacher).unwrap();
    let report = t.fit(&data(), None).unwrap();
    (report.history, t.into_student())
}

fn losses(h: &[StepRecord]) -> Vec<f64> {
    h.iter().map(|r| r.loss).collect()
}

/// bf16 and f16 compute over `f32` master weights follow the `f32` run: per-step losses within
/// 2% (measured 0.07% for bf16, 0.007% for f16), and the trained weights stay `f32`.
#[test]
fn half_precision_training_tracks_the_f32_run() {
    let (want, _) = run(config(kd(), 6, None));
    for dtype in [Precision::Bf16, Precision::F16] {
        let (got, student) = run(TrainConfig { dtype, ..config(kd(), 6, None) });
        for (g, w) in losses(&got).iter().zip(losses(&want)) {
            assert!(
                (g / w - 1.0).abs() < 0.02,
                "{dtype}: {:?} vs {:?}",
                losses(&got),
                losses(&want)
            );
        }
        assert_eq!(student.param_dtype(), DType::F32, "{dtype}: master weights stay f32");
        assert!(got.iter().all(|r| r.grad_norm.is_finite() && r.grad_norm > 0.0));
    }
}

/// The teacher alone in bf16: a loss close to the all-f32 one, but not bit-equal (the teacher's
/// parameters really were cast).
#[test]
fn the_teacher_runs_in_its_own_precision() {
    let (want, _) = run(config(kd(), 2, None));
    let (got, _) =
        run(TrainConfig { teacher_dtype: Some(Precision::Bf16), ..config(kd(), 2, None) });
    assert_ne!(got[0].loss, want[0].loss);
    assert!((got[0].loss / want[0].loss - 1.0).abs() < 0.02, "{} vs {}", got[0].loss, want[0].loss);
}

fn scaled(r: &StepRecord) -> (f64, bool) {
    (r.extra["loss_scale"], r.extra["overflow"] == 1.0)
}

/// f16 with a scale far too large: the first steps overflow, are skipped (weights unchanged) and
/// halve the scale; once it fits, steps are clean and train. A run stopped at a checkpoint and
/// resumed reproduces the uninterrupted one bit for bit, loss scale included.
#[test]
fn f16_loss_scaling_backs_off_on_overflow_and_resumes_exactly() {
    let f16 = |out: Option<&Path>| TrainConfig {
        dtype: Precision::F16,
        loss_scale: LossScaleConfig {
            init: 2f64.powi(24),
            growth_interval: 3,
            ..Default::default()
        },
        ..config(kd(), 16, out)
    };
    let (history, _) = run(f16(None));
    assert!(scaled(&history[0]).1, "2^24 overflows f16 on the first step");
    let mut expected = 2f64.powi(24);
    let mut clean_run = 0;
    for r in &history {
        let (scale, overflow) = scaled(r);
        assert_eq!(scale, expected, "step {}", r.step);
        if overflow {
            assert_eq!(r.grad_norm, 0.0);
            expected *= 0.5;
            clean_run = 0;
        } else {
            assert!(r.grad_norm.is_finite() && r.grad_norm > 0.0);
            clean_run += 1;
            if clean_run == 3 {
                expected *= 2.0;
                clean_run = 0;
            }
        }
    }
    let clean: Vec<&StepRecord> = history.iter().filter(|r| !scaled(r).1).collect();
    assert!(
        clean.len() >= 4,
        "the scale came down to a usable value: {:?}",
        history.iter().map(scaled).collect::<Vec<_>>()
    );
    assert!(clean.last().unwrap().loss < history[0].loss, "clean steps train");

    // Exact resume: 16 steps straight vs. stopped after the checkpoint at step 8.
    let dir = tmp("f16-resume");
    let (straight, _) = run(f16(Some(&dir)));
    let device = Device::flex().autodiff();
    let mut t = Trainer::new(f16(Some(&dir)), seeded(1, 8, 1, &device), &device)
        .unwrap()
        .with_teacher(seeded(2, 16, 2, &Device::flex()))
        .unwrap();
    t.resume_from(&dir.join(kd_train::trainer::checkpoint_name(8))).unwrap();
    let resumed = t.fit(&data(), None).unwrap().history;
    let bits = |h: &[StepRecord]| -> Vec<(u64, u64, u64)> {
        h.iter()
            .map(|r| (r.loss.to_bits(), r.grad_norm.to_bits(), r.extra["loss_scale"].to_bits()))
            .collect()
    };
    assert_eq!(bits(&resumed), bits(&straight));
    let _ = std::fs::remove_dir_all(&dir);
}

/// `chunked_head_rows` gives the dense kd loss without forming full logits (same first loss to
/// 1e-5 relative, later steps to 1e-4), and is refused by methods that cannot use it.
#[test]
fn chunked_head_rows_matches_the_dense_loss_and_is_refused_where_unsupported() {
    let (dense, _) = run(config(kd(), 4, None));
    let (chunked, _) = run(TrainConfig { chunked_head_rows: Some(5), ..config(kd(), 4, None) });
    for (i, (c, d)) in losses(&chunked).iter().zip(losses(&dense)).enumerate() {
        let tol = if i == 0 { 1e-5 } else { 1e-4 };
        assert!((c / d - 1.0).abs() < tol, "step {}: {c} vs {d}", i + 1);
    }
    let device = Device::flex().autodiff();
    let sft =
        TrainConfig { chunked_head_rows: Some(5), ..config(MethodConfig::default(), 2, None) };
    let e = Trainer::<CausalLm>::new(sft, seeded(1, 8, 1, &device), &device).unwrap_err();
    assert!(e.to_string().contains("chunked_head_rows"), "{e}");
}

/// A model without `LanguageModel::computing_in` cannot train in half precision: a config error,
/// not a silent f32 run.
#[test]
fn half_precision_needs_a_model_that_supports_it() {
    #[derive(Module, Debug)]
    struct Bigram {
        table: Embedding,
    }
    impl LanguageModel for Bigram {
        fn logits(&self, input_ids: Tensor<2, Int>) -> Tensor<3> {
            self.table.forward(input_ids)
        }
        fn vocab_size(&self) -> usize {
            self.table.weight.dims()[0]
        }
    }
    let device = Device::flex().autodiff();
    let model = {
        let _guard = rng_lock();
        let model = Bigram { table: EmbeddingConfig::new(VOCAB, VOCAB).init(&device) };
        let _ = param_values(&model);
        model
    };
    let config = TrainConfig { dtype: Precision::Bf16, ..config(MethodConfig::default(), 2, None) };
    let e = Trainer::<Bigram>::new(config, model, &device).unwrap_err().to_string();
    assert!(e.contains("dtype") && e.contains("bf16"), "{e}");
}

/// A student with a NaN in one norm weight makes every loss NaN (and so does a NaN teacher under
/// kd, through the fused kernel): `stop` (the default) ends the
/// run at step 1 with `NonFiniteLoss`; `skip` leaves the weights untouched, flags every step
/// `non_finite` with finite (0) loss and norm in the metrics, and counts them.
#[test]
fn non_finite_steps_stop_the_run_or_are_skipped_and_counted() {
    use kd_train::params::load_param_values;
    use kd_train::{NonFinitePolicy, TrainError};
    let device = Device::flex().autodiff();
    let poisoned = || {
        let student = seeded(1, 8, 1, &device);
        let mut values = param_values(&student);
        // One weight of a norm every position passes through.
        let (_, data) = values.iter_mut().find(|(k, _)| k.contains("norm")).unwrap();
        let mut v = data.try_to_vec::<f32>().unwrap();
        v[0] = f32::NAN;
        *data = burn::tensor::TensorData::new(v, data.shape().clone());
        load_param_values(student, &values).unwrap()
    };
    let sft = MethodConfig::default();
    let mut t =
        Trainer::<CausalLm>::new(config(sft.clone(), 3, None), poisoned(), &device).unwrap();
    match t.fit(&data(), None) {
        Err(TrainError::NonFiniteLoss { step: 1, .. }) => {}
        other => panic!("expected NonFiniteLoss at step 1, got {other:?}"),
    }

    let student = poisoned();
    let bits = |m: &CausalLm| -> Vec<(String, Vec<u32>)> {
        let values = param_values(m);
        let f = |d: &burn::tensor::TensorData| {
            d.try_to_vec::<f32>().unwrap().iter().map(|x| x.to_bits()).collect()
        };
        values.iter().map(|(k, d)| (k.clone(), f(d))).collect()
    };
    let before = bits(&student);
    let skip = TrainConfig { on_non_finite: NonFinitePolicy::Skip, ..config(sft, 3, None) };
    let mut t = Trainer::<CausalLm>::new(skip, student, &device).unwrap();
    let history = t.fit(&data(), None).unwrap().history;
    assert_eq!(history.len(), 3);
    for r in &history {
        assert_eq!(r.extra["non_finite"], 1.0);
        assert_eq!((r.loss, r.grad_norm), (0.0, 0.0));
    }
    assert_eq!(t.checkpoint().state.non_finite_steps, 3);
    assert_eq!(bits(&t.into_student()), before, "a skipped step leaves the weights as they were");

    // A NaN-poisoned teacher under kd (the fused forward-KL kernel on flex) stops the run too.
    let teacher = {
        let teacher = seeded(2, 16, 2, &Device::flex());
        let mut values = param_values(&teacher);
        let (_, data) = values.iter_mut().find(|(k, _)| k.contains("norm")).unwrap();
        let mut v = data.try_to_vec::<f32>().unwrap();
        v[0] = f32::NAN;
        *data = burn::tensor::TensorData::new(v, data.shape().clone());
        load_param_values(teacher, &values).unwrap()
    };
    let mut t = Trainer::new(config(kd(), 3, None), seeded(1, 8, 1, &device), &device)
        .unwrap()
        .with_teacher(teacher)
        .unwrap();
    match t.fit(&data(), None) {
        Err(TrainError::NonFiniteLoss { step: 1, .. }) => {}
        other => panic!("kd with a NaN teacher: expected NonFiniteLoss at step 1, got {other:?}"),
    }
}
