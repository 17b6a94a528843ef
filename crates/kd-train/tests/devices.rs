//! The training loop on every enabled device: flex always; ndarray, wgpu and vulkan with their
//! cargo features (the wgpu CI lane runs this file on Mesa's CPU drivers). Each device trains a
//! tiny student by `kd` and by `sft` and must match the flex run, and a teacher on flex serves a
//! student on the device under test.

use burn::tensor::Device;
use kd_losses::LossConfig;
use kd_models::{CausalLm, LlamaConfig, ModelConfig};
use kd_train::data::{TokenDataset, pack_tokens};
use kd_train::methods::kd::KdConfig;
use kd_train::params::{load_param_values, param_values};
use kd_train::{MethodConfig, Precision, StepRecord, TrainConfig, Trainer};

const VOCAB: usize = 24;
const SEQ: usize = 10;

/// burn's device RNG is global and parameters initialise lazily from it: every model built in
/// these tests is built under this lock (the tests run in parallel threads).
static RNG_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn rng_lock() -> std::sync::MutexGuard<'static, ()> {
    RNG_LOCK.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// One pair of models, made on flex from fixed seeds.
fn models() -> (CausalLm, CausalLm) {
    let _guard = rng_lock();
    let device = Device::flex();
    let make = |seed: u64, hidden: usize| {
        device.seed(seed);
        let config = ModelConfig::Llama(LlamaConfig {
            vocab_size: VOCAB,
            hidden_size: hidden,
            intermediate_size: 2 * hidden,
            num_hidden_layers: 1,
            num_attention_heads: 2,
            num_key_value_heads: 1,
            head_dim: hidden / 2,
            max_position_embeddings: 16,
            ..Default::default()
        });
        let model = CausalLm::init(&config, &device).unwrap();
        let _ = param_values(&model);
        model
    };
    (make(1, 8), make(2, 16))
}

/// `model` with the same parameter values on `device`.
fn on(model: &CausalLm, device: &Device) -> CausalLm {
    let _guard = rng_lock(); // the fresh model's lazy initialisers draw from the global RNG
    let fresh = CausalLm::init(&model.config(), device).unwrap();
    let moved = load_param_values(fresh, &param_values(model)).unwrap();
    let _ = param_values(&moved);
    moved
}

fn data() -> TokenDataset {
    let tokens: Vec<u32> = (0..200).map(|i| (3 + (i * 5 + i / 7) % 21) as u32).collect();
    TokenDataset::new("cycle", pack_tokens(&tokens, SEQ)).unwrap()
}

fn config(method: MethodConfig) -> TrainConfig {
    TrainConfig {
        steps: 3,
        batch_size: 2,
        lr: 5e-3,
        warmup_steps: 1,
        log_every: 0,
        eval_rouge_prompts: 0,
        seed: 4,
        method,
        ..Default::default()
    }
}

fn kd() -> MethodConfig {
    MethodConfig::Kd(KdConfig {
        divergence: LossConfig::ForwardKl(Default::default()).into(),
        ..Default::default()
    })
}

/// Trains on `device` (the teacher on `teacher_device`) and returns the step losses.
fn losses(method: MethodConfig, device: &Device, teacher_device: &Device) -> Vec<f64> {
    let (student, teacher) = models();
    let student = on(&student, &device.clone().inner());
    let mut t = Trainer::new(config(method), student, &device.clone().autodiff()).unwrap();
    if t.uses_teacher() {
        t = t.with_teacher_on(on(&teacher, teacher_device), teacher_device).unwrap();
    }
    let report = t.fit(&data(), None).unwrap();
    report.history.iter().map(|r: &StepRecord| r.loss).collect()
}

fn assert_close(got: &[f64], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() <= 1e-4 * (1.0 + w.abs()), "{what}: {got:?} vs {want:?}");
    }
}

/// `kd` and `sft` on `device` match flex; a flex teacher serves a student on `device`.
fn matches_flex(device: &Device) {
    let flex = Device::flex();
    for method in [kd(), MethodConfig::default()] {
        let want = losses(method.clone(), &flex, &flex);
        let got = losses(method.clone(), device, device);
        assert_close(&got, &want, method.name());
    }
    let got = losses(kd(), device, &flex);
    assert_close(&got, &losses(kd(), &flex, &flex), "teacher on flex");
}

/// Half precision on `device` where it computes in it: bf16 if supported, else f16, else the
/// trainer must refuse both with a config error.
fn half_precision_or_a_clear_error(device: &Device) {
    let (student, teacher) = models();
    let plain = device.clone().inner();
    for dtype in [Precision::Bf16, Precision::F16] {
        let config = TrainConfig { dtype, ..config(kd()) };
        let made = Trainer::new(config, on(&student, &plain), &device.clone().autodiff());
        if !plain.supports_dtype(dtype.float_dtype()) {
            let e = made.unwrap_err().to_string();
            assert!(e.contains("dtype"), "{e}");
            continue;
        }
        let mut t = made.unwrap().with_teacher(on(&teacher, &plain)).unwrap();
        let history = t.fit(&data(), None).unwrap().history;
        assert!(history.iter().all(|r| r.loss.is_finite()), "{dtype}: {history:?}");
    }
}

macro_rules! on_every_device {
    ($($name:ident => $body:path;)*) => {
        $(
            mod $name {
                #[test]
                fn flex() {
                    $body(&burn::tensor::Device::flex());
                }
                #[cfg(feature = "ndarray")]
                #[test]
                #[allow(deprecated)]
                fn ndarray() {
                    $body(&burn::tensor::Device::ndarray());
                }
                #[cfg(feature = "wgpu")]
                #[test]
                fn wgpu() {
                    $body(&burn::tensor::Device::wgpu(burn::tensor::DeviceKind::default()));
                }
                #[cfg(feature = "vulkan")]
                #[test]
                fn vulkan() {
                    $body(&burn::tensor::Device::vulkan(burn::tensor::DeviceKind::default()));
                }
            }
        )*
    };
}

on_every_device! {
    training_matches_flex => super::matches_flex;
    half_precision => super::half_precision_or_a_clear_error;
}
