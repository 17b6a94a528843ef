//! A device whose default float dtype is `bf16`: the tensors a loss creates itself (masks as
//! floats, zeros, constants, the fused path's diagnostics) are still `f32`, so nothing mixes
//! dtypes and every loss gives the same values as on `f32` inputs.
//!
//! A device's default dtypes can be set once per process, before its first tensor, so this is
//! its own test binary with a single test.

mod common;

use burn::tensor::{DType, Device, FloatDType, Int, Tensor, TensorData};
use common::rng::uniform;
use kd_losses::{
    ChunkedHeadBatch, ChunkedHeadLoss, ChunkedTeacher, Divergence, KdBatch, LOSS_NAMES, LossConfig,
    MiniLlmBatch, MiniLlmConfig, Reduction, SparseKdBatch, TopKConvention, TopKKlConfig,
};

const ROWS: usize = 6;
const VOCAB: usize = 9;

/// A tensor of the values in the device's default dtype (`bf16`) and its `f32` copy.
fn pair<const D: usize>(shape: [usize; D], seed: u64, device: &Device) -> [Tensor<D>; 2] {
    let data = TensorData::new(uniform(shape.iter().product(), seed, 3.0), shape);
    let default = Tensor::<D>::from_data(data, device);
    assert_eq!(default.dtype(), DType::BF16, "the device default");
    let f32 = Tensor::from_data(default.to_data(), (device, DType::F32));
    [default, f32]
}

fn scalar(t: Tensor<1>) -> f64 {
    assert_eq!(t.dtype(), DType::F32, "loss dtype");
    t.into_data().convert::<f64>().try_into_vec::<f64>().unwrap()[0]
}

fn assert_same(what: &str, a: f64, b: f64) {
    assert!(a.is_finite() && (a - b).abs() <= 1e-6 * b.abs() + 1e-9, "{what}: {a} vs f32 {b}");
}

#[test]
fn losses_create_f32_tensors_on_a_bf16_default_device() {
    let mut device = Device::flex();
    device.configure(FloatDType::BF16).expect("flex takes a bf16 default");
    let device = device.autodiff();
    let labels = || Tensor::<1, Int>::from_ints([0, 3, 8, -100, 5, 1], &device);

    for name in LOSS_NAMES {
        let Ok(config) = LossConfig::by_name(name) else { continue };
        let loss = config.init().unwrap();
        let [s, s32] = pair([ROWS, VOCAB], 1, &device);
        let [t, t32] = pair([ROWS, VOCAB], 2, &device);
        let (s, s32) = (s.require_grad(), s32.require_grad());
        let out = loss.forward(KdBatch::new(s.clone(), t).with_labels(labels()), Reduction::Mean);
        let out = out.unwrap();
        let out32 = loss.forward(KdBatch::new(s32, t32).with_labels(labels()), Reduction::Mean);
        assert_eq!(s.grad(&out.loss.backward()).unwrap().dtype(), DType::BF16, "{name}");
        for e in &out.extras {
            assert_eq!(e.value.dtype(), DType::F32, "{name}: extra {}", e.name);
        }
        assert_same(name, scalar(out.loss), scalar(out32.unwrap().loss));
    }

    for convention in
        [TopKConvention::RenormTeacher, TopKConvention::RenormBoth, TopKConvention::TailBucket]
    {
        let loss = TopKKlConfig::new(convention).init().unwrap();
        let ids = || {
            let ids = [0i64, 4, 7].repeat(ROWS);
            Tensor::<2, Int>::from_data(TensorData::new(ids, [ROWS, 3]), &device)
        };
        // A peaked student puts its tail below 1e-3 on some rows (the exact-tail branch).
        let [s, s32] = pair([ROWS, VOCAB], 3, &device);
        let peak = Tensor::<2>::from_data(
            TensorData::new([12.0f32, 0.0, 0.0].repeat(ROWS), [ROWS, 3]),
            (&device, DType::F32),
        );
        let s = s.slice_assign([0..ROWS, 0..3], peak.clone().cast(FloatDType::BF16));
        let s32 = s32.slice_assign([0..ROWS, 0..3], peak);
        let lp = Tensor::<2>::from_data(
            TensorData::new([-0.2f32, -2.5, -3.0].repeat(ROWS), [ROWS, 3]),
            &device,
        ); // bf16, the device default
        let lp32 = Tensor::from_data(lp.to_data(), (&device, DType::F32));
        let batch = |student, logprobs| SparseKdBatch {
            student_logits: student,
            teacher_topk_ids: ids(),
            teacher_topk_logprobs: logprobs,
            labels: Some(labels()),
            mask: None,
        };
        let a = loss.forward(batch(s, lp), Reduction::Mean).unwrap();
        let b = loss.forward(batch(s32, lp32), Reduction::Mean).unwrap();
        assert_same(&format!("topk_kl {convention:?}"), scalar(a.loss), scalar(b.loss));
    }

    let mini = MiniLlmConfig::default().init().unwrap();
    let tokens = || Tensor::<2, Int>::from_ints([[0, 3, 8], [5, 1, 2]], &device);
    let keep = || Tensor::<2, Int>::from_ints([[1, 1, 1], [1, 1, 0]], &device).equal_elem(1);
    let [s, s32] = pair([2, 3, VOCAB], 4, &device);
    let [t, t32] = pair([2, 3, VOCAB], 5, &device);
    let batch = |student, teacher| MiniLlmBatch {
        student_logits: student,
        teacher_logits: teacher,
        tokens: tokens(),
        mask: keep(),
        old_student_logits: None,
        old_logprobs: None,
    };
    let a = mini.forward(batch(s, t)).unwrap();
    let b = mini.forward(batch(s32, t32)).unwrap();
    assert_same("minillm", scalar(a.loss), scalar(b.loss));

    let fkl = LossConfig::by_name("forward_kl").unwrap().init().unwrap();
    let [h, h32] = pair([ROWS, 4], 6, &device);
    let [w, w32] = pair([VOCAB, 4], 7, &device);
    let [t, t32] = pair([ROWS, VOCAB], 8, &device);
    let chunked = |h: Tensor<2>, w: Tensor<2>, t| {
        let batch =
            ChunkedHeadBatch::new(h.require_grad(), w.require_grad(), ChunkedTeacher::Logits(t));
        ChunkedHeadLoss::new(4).unwrap().forward(
            &*fkl,
            batch.with_labels(labels()),
            Reduction::Mean,
        )
    };
    let a = chunked(h, w, t).unwrap();
    // The head in f32 on the same values: equal up to the rounding of the bf16 logits.
    let b = chunked(h32, w32, t32).unwrap();
    let (a, b) = (scalar(a.loss), scalar(b.loss));
    assert!(a.is_finite() && (a - b).abs() <= 1e-2 * b.abs(), "chunked: {a} vs {b}");
}
