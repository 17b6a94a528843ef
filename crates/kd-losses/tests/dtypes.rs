//! Inputs of any float dtype: every loss casts them to `f32` on entry and computes, accumulates
//! and returns in `f32`.
//!
//! Each check runs a loss twice on the same values: once with the inputs in `bf16`, `f16` or
//! `f64` (or a mix), once with those values cast to `f32`. Because the half-precision values are
//! exactly representable in `f32`, both runs do the same `f32` arithmetic, so
//! - the loss and per-row values agree to [`VALUE_REL`] (relative), and are `f32`;
//! - the student gradient is in the input's dtype and equals the `f32` gradient rounded to it:
//!   within one unit in the last place of that dtype at the `f32` value ([`Precision::ulp`];
//!   exact for `f64`).
//!
//! `ChunkedHeadLoss` runs its head matmuls in the inputs' dtype, so its half-precision gradients
//! are checked against the `f32` gradients with a rounding bound instead (see there).

mod common;

use burn::tensor::{DType, Device, FloatDType, Int, Tensor, TensorData};
use common::json::{floats, floats_f64, golden_dir, golden_file, host, ints, mask};
use common::rng::bell_f64;
use kd_losses::fused::fused_calls;
use kd_losses::{
    ChunkedHeadBatch, ChunkedHeadLoss, ChunkedTeacher, DeltaKdConfig, Divergence, KdBatch,
    KdOutput, LOSS_NAMES, LossConfig, MiniLlmBatch, MiniLlmConfig, Reduction, SparseKdBatch,
    TopKConvention, TopKKlConfig,
};
use serde_json::Value;

/// Relative agreement of values computed in `f32` from identical inputs.
const VALUE_REL: f64 = 1e-6;

/// A dtype the inputs come in, with its rounding step.
#[derive(Debug, Clone, Copy)]
struct Precision {
    float: FloatDType,
    /// Explicit mantissa bits (`None`: wider than `f32`, the gradient is exact).
    mantissa: Option<i32>,
    /// The smallest step of the dtype (its least subnormal).
    min_step: f64,
}

const F32: Precision = Precision { float: FloatDType::F32, mantissa: Some(23), min_step: 1.4e-45 };
const BF16: Precision = Precision { float: FloatDType::BF16, mantissa: Some(7), min_step: 9.2e-41 };
const F16: Precision = Precision { float: FloatDType::F16, mantissa: Some(10), min_step: 5.97e-8 };
const F64: Precision = Precision { float: FloatDType::F64, mantissa: None, min_step: 0.0 };

impl Precision {
    fn dtype(self) -> DType {
        self.float.into()
    }

    /// One unit in the last place at `x`: `2^(⌊log2 |x|⌋ − mantissa)`, at least the smallest
    /// step; `0` for a dtype wider than `f32`.
    fn ulp(self, x: f64) -> f64 {
        match self.mantissa {
            None => 0.0,
            Some(_) if x == 0.0 => self.min_step,
            Some(m) => (x.abs().log2().floor() - f64::from(m)).exp2().max(self.min_step),
        }
    }

    /// The unit roundoff, half an ulp at 1.
    fn unit_roundoff(self) -> f64 {
        self.mantissa.map_or(0.0, |m| (-f64::from(m) - 1.0).exp2())
    }

    fn supported(self, device: &Device) -> bool {
        device.supports_dtype(self.dtype())
    }
}

/// A golden input in `p` (from the exact values for `f64`, else rounded through `f32`), and
/// the same values in `f32`. Neither is tracked.
fn pair<const D: usize>(v: &Value, p: Precision, device: &Device) -> (Tensor<D>, Tensor<D>) {
    let x = if p.mantissa.is_none() { floats_f64::<D>(v, device) } else { floats::<D>(v, device) };
    let x = x.cast(p.float);
    let r = x.clone().cast(FloatDType::F32);
    (x, r)
}

fn assert_f32(what: &str, t: &Tensor<1>) {
    assert_eq!(t.dtype(), DType::F32, "{what}: output dtype");
}

/// `got` and `want` agree to [`VALUE_REL`] (plus `1e-9` absolute for values near 0).
fn assert_values(what: &str, got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let tol = VALUE_REL * w.abs() + 1e-9;
        assert!((g - w).abs() <= tol, "{what}[{i}]: {g:e} vs f32 {w:e} (tol {tol:e})");
    }
}

/// The gradient in `p` is the `f32` gradient rounded to `p`: within one ulp of `p` at it.
fn assert_rounded_grad(what: &str, got: &Tensor<2>, want: &[f64], p: Precision) {
    assert_eq!(got.dtype(), p.dtype(), "{what}: gradient dtype");
    let got = host(got.clone());
    assert_eq!(got.len(), want.len(), "{what}: gradient length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let tol = p.ulp(*w);
        assert!((g - w).abs() <= tol, "{what}: grad[{i}] {g:e} vs f32 {w:e} (1 ulp = {tol:e})");
    }
}

/// Loss, per-row values and student gradient (as `f64`) of one run, checking the output dtypes.
fn run_out(what: &str, out: KdOutput, student: &Tensor<2>) -> (Vec<f64>, Vec<f64>, Tensor<2>) {
    assert_f32(what, &out.loss);
    assert_f32(what, &out.per_row);
    let grads = out.loss.backward();
    let grad = student.grad(&grads).expect("student gradient");
    (host(out.loss), host(out.per_row), grad)
}

// ---------- dense losses on the golden cases ----------

/// Student and teacher of one golden case in the given precisions (plus the `f32` copies).
fn dense_output(
    loss: &str,
    case: &Value,
    student_p: Precision,
    teacher_p: Precision,
    device: &Device,
) -> [(KdOutput, Tensor<2>); 2] {
    let inputs = &case["inputs"];
    let (s, s32) = pair::<2>(&inputs["student_logits"], student_p, device);
    let (t, t32) = pair::<2>(&inputs["teacher_logits"], teacher_p, device);
    let (s, s32) = (s.require_grad(), s32.require_grad());
    let with_rows = |mut b: KdBatch| {
        if !inputs["labels"].is_null() {
            b = b.with_labels(ints::<1>(&inputs["labels"], device));
        }
        if !inputs["mask"].is_null() {
            b = b.with_mask(mask::<1>(&inputs["mask"], device));
        }
        b
    };
    let batch = with_rows(KdBatch::new(s.clone(), t));
    let batch32 = with_rows(KdBatch::new(s32.clone(), t32));
    let (out, out32) = if loss == "delta_kd" {
        let cfg: DeltaKdConfig = serde_json::from_value(case["config"].clone()).unwrap();
        let delta = cfg.init().unwrap();
        let (tb, tb32) = pair::<2>(&inputs["teacher_base_logits"], teacher_p, device);
        let (sb, sb32) = pair::<2>(&inputs["student_base_logits"], teacher_p, device);
        (
            delta.forward(batch, tb, sb, Reduction::Mean).unwrap(),
            delta.forward(batch32, tb32, sb32, Reduction::Mean).unwrap(),
        )
    } else {
        let mut config = case["config"].clone();
        config["loss"] = Value::String(loss.to_string());
        let cfg: LossConfig = serde_json::from_value(config).unwrap();
        let l = cfg.init().unwrap();
        (l.forward(batch, Reduction::Mean).unwrap(), l.forward(batch32, Reduction::Mean).unwrap())
    };
    [(out, s), (out32, s32)]
}

fn check_dense_case(
    loss: &str,
    case: &Value,
    student_p: Precision,
    teacher_p: Precision,
    device: &Device,
) {
    let name = case["name"].as_str().unwrap_or("?");
    let at = format!("{loss}: {name} ({student_p:?} student, {teacher_p:?} teacher)");
    let [(out, s), (out32, s32)] = dense_output(loss, case, student_p, teacher_p, device);
    let (loss_v, rows, grad) = run_out(&at, out, &s);
    let (loss32, rows32, grad32) = run_out(&at, out32, &s32);
    assert_values(&format!("{at}: loss"), &loss_v, &loss32);
    assert_values(&format!("{at}: per_row"), &rows, &rows32);
    assert_rounded_grad(&at, &grad, &host(grad32), student_p);
}

/// The dense golden files (every loss on `KdBatch`, and Delta-KD's extra inputs).
fn dense_files() -> Vec<(String, Value)> {
    let mut names: Vec<String> = std::fs::read_dir(golden_dir())
        .unwrap()
        .filter_map(|e| e.ok()?.path().file_stem().map(|s| s.to_string_lossy().to_string()))
        .filter(|n| !["topk_kl", "minillm", "scaling_law", "README"].contains(&n.as_str()))
        .collect();
    names.sort();
    names.into_iter().map(|n| (n.clone(), golden_file(&n))).collect()
}

fn golden_dense_half_inputs(device: &Device) {
    if *device == Device::flex().autodiff() {
        assert!([BF16, F16, F64].iter().all(|p| p.supported(device)), "flex lacks a dtype");
    }
    let files = dense_files();
    assert!(files.len() >= 10, "dense golden files: {}", files.len());
    for p in [BF16, F16, F64].into_iter().filter(|p| p.supported(device)) {
        for (loss, doc) in &files {
            for case in doc["cases"].as_array().unwrap() {
                check_dense_case(loss, case, p, p, device);
            }
        }
    }
}

/// bf16 student with an f32 teacher, and f16 student with an f64 teacher.
fn golden_dense_mixed_inputs(device: &Device) {
    let files = dense_files();
    for (s, t) in [(BF16, F32), (F16, F64), (F32, BF16)] {
        if !(s.supported(device) && t.supported(device)) {
            continue;
        }
        for (loss, doc) in &files {
            for case in doc["cases"].as_array().unwrap() {
                check_dense_case(loss, case, s, t, device);
            }
        }
    }
}

/// Half inputs still take the fused kernel on flex (the cast happens before routing).
fn half_inputs_take_the_fused_path(device: &Device) {
    if *device != Device::flex().autodiff() {
        return;
    }
    let doc = golden_file("forward_kl");
    let case = &doc["cases"][0];
    for p in [BF16, F16, F64] {
        let before = fused_calls();
        check_dense_case("forward_kl", case, p, p, device);
        // One fused call for the run in `p` and one for its f32 copy.
        assert_eq!(fused_calls() - before, 2, "{p:?} inputs did not take the fused kernel");
    }
}

// ---------- top-k and MiniLLM on the golden cases ----------

fn golden_topk_half_inputs(device: &Device) {
    let doc = golden_file("topk_kl");
    let flex = *device == Device::flex().autodiff();
    for (sp, tp) in [(BF16, BF16), (F16, F16), (F64, F64), (BF16, F32)] {
        if !(sp.supported(device) && tp.supported(device)) {
            continue;
        }
        for case in doc["cases"].as_array().unwrap() {
            let name = case["name"].as_str().unwrap_or("?");
            let at = format!("topk_kl: {name} ({sp:?} student, {tp:?} log-probs)");
            let cfg: TopKKlConfig = serde_json::from_value(case["config"].clone()).unwrap();
            let loss = cfg.init().unwrap();
            let inputs = &case["inputs"];
            let (s, s32) = pair::<2>(&inputs["student_logits"], sp, device);
            let (lp, lp32) = pair::<2>(&inputs["teacher_topk_logprobs"], tp, device);
            let (s, s32) = (s.require_grad(), s32.require_grad());
            let batch = |student: Tensor<2>, logprobs: Tensor<2>| SparseKdBatch {
                student_logits: student,
                teacher_topk_ids: ints::<2>(&inputs["teacher_topk_ids"], device),
                teacher_topk_logprobs: logprobs,
                labels: (!inputs["labels"].is_null()).then(|| ints::<1>(&inputs["labels"], device)),
                mask: (!inputs["mask"].is_null()).then(|| mask::<1>(&inputs["mask"], device)),
            };
            let before = fused_calls();
            let out = loss.forward(batch(s.clone(), lp), Reduction::Mean).unwrap();
            if flex {
                assert_eq!(fused_calls() - before, 1, "{at}: not routed to the fused kernel");
            }
            let out32 = loss.forward(batch(s32.clone(), lp32), Reduction::Mean).unwrap();
            let (v, rows, grad) = run_out(&at, out, &s);
            let (v32, rows32, grad32) = run_out(&at, out32, &s32);
            assert_values(&format!("{at}: loss"), &v, &v32);
            assert_values(&format!("{at}: per_row"), &rows, &rows32);
            assert_rounded_grad(&at, &grad, &host(grad32), sp);
        }
    }
}

fn golden_minillm_half_inputs(device: &Device) {
    let doc = golden_file("minillm");
    for p in [BF16, F16, F64].into_iter().filter(|p| p.supported(device)) {
        for case in doc["cases"].as_array().unwrap() {
            let name = case["name"].as_str().unwrap_or("?");
            let at = format!("minillm: {name} ({p:?})");
            let cfg: MiniLlmConfig = serde_json::from_value(case["config"].clone()).unwrap();
            let loss = cfg.init().unwrap();
            let inputs = &case["inputs"];
            let (s, s32) = pair::<3>(&inputs["student_logits"], p, device);
            let (t, t32) = pair::<3>(&inputs["teacher_logits"], p, device);
            let old = inputs.get("old_student_logits").map(|v| pair::<3>(v, p, device));
            let (s, s32) = (s.require_grad(), s32.require_grad());
            let batch =
                |student: Tensor<3>, teacher: Tensor<3>, old: Option<Tensor<3>>| MiniLlmBatch {
                    student_logits: student,
                    teacher_logits: teacher,
                    tokens: ints::<2>(&inputs["tokens"], device),
                    mask: mask::<2>(&inputs["mask"], device),
                    old_student_logits: old,
                    old_logprobs: None,
                };
            let (old, old32) = old.map_or((None, None), |(a, b)| (Some(a), Some(b)));
            let out = loss.forward(batch(s.clone(), t, old)).unwrap();
            let out32 = loss.forward(batch(s32.clone(), t32, old32)).unwrap();
            for (what, t) in [("loss", &out.loss), ("per_row", &out.per_row)] {
                assert_f32(&format!("{at}: {what}"), t);
            }
            let grad = s.grad(&out.loss.backward()).unwrap().flatten::<2>(0, 1);
            let grad32 = s32.grad(&out32.loss.backward()).unwrap();
            assert_values(&format!("{at}: loss"), &host(out.loss), &host(out32.loss));
            assert_values(&format!("{at}: per_row"), &host(out.per_row), &host(out32.per_row));
            assert_rounded_grad(&at, &grad, &host(grad32), p);

            // The old policy as stored per-token log-probabilities, in `p` too.
            let logq_old = out32.per_token.iter().find(|(n, _)| *n == "logq_old").unwrap();
            let lp = logq_old.1.clone().cast(p.float);
            let lp32 = lp.clone().cast(FloatDType::F32);
            let (s, s32) = (s.clone().detach().require_grad(), s32.clone().detach().require_grad());
            let (t, t32) = pair::<3>(&inputs["teacher_logits"], p, device);
            let mut b = batch(s.clone(), t, None);
            b.old_logprobs = Some(lp);
            let mut b32 = batch(s32.clone(), t32, None);
            b32.old_logprobs = Some(lp32);
            let (out, out32) = (loss.forward(b).unwrap(), loss.forward(b32).unwrap());
            let at = format!("{at} (old_logprobs)");
            let grad = s.grad(&out.loss.backward()).unwrap().flatten::<2>(0, 1);
            let grad32 = s32.grad(&out32.loss.backward()).unwrap();
            assert_values(&format!("{at}: loss"), &host(out.loss), &host(out32.loss));
            assert_rounded_grad(&at, &grad, &host(grad32), p);
        }
    }
}

// ---------- the chunked head ----------

const ROWS: usize = 7;
const HIDDEN: usize = 5;
const VOCAB: usize = 11;

/// A random tensor in `p`, untracked.
fn random_in<const D: usize>(
    shape: [usize; D],
    seed: u64,
    std: f64,
    p: Precision,
    device: &Device,
) -> Tensor<D> {
    let n = shape.iter().product();
    let data = TensorData::new(bell_f64(n, seed, std), shape);
    Tensor::<D>::from_data(data, (device, DType::F64)).cast(p.float)
}

/// The values of `t` as a new untracked `f32` tensor.
fn f32_copy<const D: usize>(t: &Tensor<D>) -> Tensor<D> {
    Tensor::from_data(t.to_data(), (&t.device(), DType::F32))
}

fn labels_and_mask(device: &Device) -> (Tensor<1, Int>, Tensor<1, burn::tensor::Bool>) {
    let labels = Tensor::<1, Int>::from_ints([3, 0, -100, 10, 4, 7, 1], device);
    let keep = TensorData::from([true, true, true, true, false, true, true]);
    (labels, Tensor::from_bool(keep, device))
}

/// `|got − want| ≤ 4u·(|want| + bound) + slack` element-wise, with `u` the unit roundoff of `p`.
fn assert_bounded(what: &str, got: &Tensor<2>, want: &Tensor<2>, bound: &Tensor<2>, p: Precision) {
    assert_eq!(got.dtype(), p.dtype(), "{what}: gradient dtype");
    let (got, want, bound) = (host(got.clone()), host(want.clone()), host(bound.clone()));
    let u = 4.0 * p.unit_roundoff();
    for (i, ((g, w), b)) in got.iter().zip(&want).zip(&bound).enumerate() {
        let tol = u * (w.abs() + b) + 4.0 * p.min_step + 1e-7;
        assert!((g - w).abs() <= tol, "{what}[{i}]: {g:e} vs f32 {w:e} (tol {tol:e})");
    }
}

/// Hidden states, head, bias and teacher logits all in `p`: the value is the `f32` loss of the
/// chunk logits as the head in `p` computes them, to [`VALUE_REL`]; the gradients are the `f32`
/// gradients of those logits through the head, `G·W`, `Gᵀ·h`, `Σ G`, up to the rounding of the
/// matmuls in `p` (`|error| ≤ 4u·(|exact| + |G|·|W|)` for `G·W`, and likewise).
fn chunked_half_inputs(device: &Device) {
    for p in [BF16, F16].into_iter().filter(|p| p.supported(device)) {
        for name in ["forward_kl", "hinton_kd", "gkd_jsd", "akl"] {
            let at = format!("chunked {name} ({p:?})");
            let loss = LossConfig::by_name(name).unwrap().init().unwrap();
            let (labels, keep) = labels_and_mask(device);
            let h = random_in([ROWS, HIDDEN], 1, 1.0, p, device).require_grad();
            let w = random_in([VOCAB, HIDDEN], 2, 1.0, p, device).require_grad();
            let b = random_in([VOCAB], 3, 0.5, p, device).require_grad();
            let teacher = random_in([ROWS, VOCAB], 4, 2.0, p, device);
            let batch = ChunkedHeadBatch::new(
                h.clone(),
                w.clone(),
                ChunkedTeacher::Logits(teacher.clone()),
            )
            .with_bias(b.clone())
            .with_labels(labels.clone())
            .with_mask(keep.clone());
            let out = ChunkedHeadLoss::new(3).unwrap().forward(&*loss, batch, Reduction::Mean);
            let out = out.unwrap();
            assert_f32(&at, &out.loss);
            assert_f32(&at, &out.per_row);
            let grads = out.loss.backward();

            // Reference: the logits as the head computes them in `p`, then everything in f32.
            let (hp, wp, bp) = (h.clone().detach(), w.clone().detach(), b.clone().detach());
            let logits = hp.matmul(wp.transpose()).add(bp.unsqueeze_dim::<2>(0));
            let z = f32_copy(&logits).require_grad();
            let dense = loss
                .forward(
                    KdBatch::new(z.clone(), f32_copy(&teacher)).with_labels(labels).with_mask(keep),
                    Reduction::Mean,
                )
                .unwrap();
            assert_values(&format!("{at}: loss"), &host(out.loss), &host(dense.loss.clone()));
            let g = z.grad(&dense.loss.backward()).unwrap(); // [rows, vocab], f32
            let (h32, w32) = (f32_copy(&h), f32_copy(&w));
            let ga = g.clone().abs();
            assert_bounded(
                &format!("{at}: grad hidden"),
                &h.grad(&grads).unwrap(),
                &g.clone().matmul(w32.clone()),
                &ga.clone().matmul(w32.abs()),
                p,
            );
            assert_bounded(
                &format!("{at}: grad weight"),
                &w.grad(&grads).unwrap(),
                &g.clone().transpose().matmul(h32.clone()),
                &ga.clone().transpose().matmul(h32.abs()),
                p,
            );
            let gb = b.grad(&grads).unwrap().unsqueeze_dim::<2>(0);
            let gb_want = g.sum_dim(0);
            assert_bounded(&format!("{at}: grad bias"), &gb, &gb_want, &ga.sum_dim(0), p);
        }
    }
}

/// bf16 hidden states with an f32 head (the head matmuls then run in f32), and a teacher given
/// as bf16 hidden states with an f64 head: the same values as the f32 computation, the hidden
/// gradient its rounding to bf16, the head gradient f32.
fn chunked_mixed_inputs(device: &Device) {
    if !(BF16.supported(device) && F64.supported(device)) {
        return;
    }
    let at = "chunked forward_kl (bf16 hidden, f32 head)";
    let loss = LossConfig::by_name("forward_kl").unwrap().init().unwrap();
    let h = random_in([ROWS, HIDDEN], 1, 1.0, BF16, device).require_grad();
    let w = random_in([VOCAB, HIDDEN], 2, 1.0, F32, device).require_grad();
    let th = random_in([ROWS, 4], 5, 1.0, BF16, device);
    let tw = random_in([VOCAB, 4], 6, 1.0, F64, device);
    let teacher = ChunkedTeacher::Hidden { hidden: th.clone(), weight: tw.clone(), bias: None };
    let batch = ChunkedHeadBatch::new(h.clone(), w.clone(), teacher);
    let out = ChunkedHeadLoss::new(3).unwrap().forward(&*loss, batch, Reduction::Mean).unwrap();
    assert_f32(at, &out.loss);
    let grads = out.loss.backward();

    let (h32, w32) = (f32_copy(&h).require_grad(), f32_copy(&w).require_grad());
    let t32 = f32_copy(&th).matmul(f32_copy(&tw).transpose());
    let dense = loss
        .forward(KdBatch::new(h32.clone().matmul(w32.clone().transpose()), t32), Reduction::Mean)
        .unwrap();
    assert_values(&format!("{at}: loss"), &host(out.loss), &host(dense.loss.clone()));
    let dense_grads = dense.loss.backward();
    let (gh32, gw32) = (h32.grad(&dense_grads).unwrap(), w32.grad(&dense_grads).unwrap());
    // f32 rounding of the chunked sums on top of the bf16 rounding: 1 ulp + 1e-6·max.
    let gh = host(h.grad(&grads).unwrap());
    assert_eq!(h.grad(&grads).unwrap().dtype(), DType::BF16, "{at}: hidden gradient dtype");
    let gh32 = host(gh32);
    let scale = gh32.iter().fold(0f64, |m, x| m.max(x.abs()));
    for (i, (g, w)) in gh.iter().zip(&gh32).enumerate() {
        let tol = BF16.ulp(*w) + 1e-6 * scale;
        assert!((g - w).abs() <= tol, "{at}: grad hidden[{i}] {g:e} vs {w:e}");
    }
    let gw = w.grad(&grads).unwrap();
    assert_eq!(gw.dtype(), DType::F32, "{at}: head gradient dtype");
    let (gw, gw32) = (host(gw), host(gw32));
    let scale = gw32.iter().fold(0f64, |m, x| m.max(x.abs()));
    for (i, (g, w)) in gw.iter().zip(&gw32).enumerate() {
        let tol = 1e-5 * w.abs() + 1e-6 * scale;
        assert!((g - w).abs() <= tol, "{at}: grad weight[{i}] {g:e} vs {w:e}");
    }
}

// ---------- large logits and masked vocabulary entries ----------

/// Logits of magnitude up to 1e4 (where a half-precision softmax would overflow or lose every
/// digit) with one vocabulary column at `-inf` in both models (a masked or padded entry no label
/// points at), in `f32`, `bf16` and `f16`: every dense loss, top-k and MiniLLM give finite
/// values and gradients.
fn large_logits_stay_finite(device: &Device) {
    for p in [F32, BF16, F16] {
        if p.supported(device) {
            large_logits_stay_finite_in(p, device);
        }
    }
}

fn large_logits_stay_finite_in(p: Precision, device: &Device) {
    const MASKED: usize = 6;
    let (rows, vocab) = (6, 9);
    let levels = [-1e4, -5e3, -10.0, 0.0, 3.0, 5e3, 1e4];
    let pick = |seed: u64| -> Vec<f64> {
        bell_f64(rows * vocab, seed, 1.0)
            .into_iter()
            .enumerate()
            .map(|(i, x)| match i % vocab {
                MASKED => f64::NEG_INFINITY,
                _ => levels[((x.abs() * 997.0) as usize) % levels.len()],
            })
            .collect()
    };
    let logits = |seed: u64| {
        Tensor::<2>::from_data(TensorData::new(pick(seed), [rows, vocab]), (device, DType::F64))
            .cast(p.float)
    };
    let labels = || Tensor::<1, Int>::from_ints([0, 3, 8, -100, 5, 1], device);
    let finite = |what: &str, loss: Tensor<1>, grad: Tensor<2>| {
        let what = format!("{what} in {:?}", p.float);
        assert_eq!(loss.dtype(), DType::F32, "{what}: loss dtype");
        assert_eq!(grad.dtype(), p.dtype(), "{what}: gradient dtype");
        let (l, g) = (host(loss), host(grad));
        assert!(l.iter().all(|x| x.is_finite()), "{what}: loss {l:?}");
        assert!(g.iter().all(|x| x.is_finite()), "{what}: gradient {g:?}");
    };
    for name in LOSS_NAMES {
        let Ok(config) = LossConfig::by_name(name) else { continue };
        let loss = config.init().unwrap();
        let s = logits(11).require_grad();
        let batch = KdBatch::new(s.clone(), logits(12)).with_labels(labels());
        let out = loss.forward(batch, Reduction::Mean).unwrap();
        let grad = s.grad(&out.loss.clone().backward()).unwrap();
        finite(name, out.loss, grad);
    }
    for convention in
        [TopKConvention::RenormTeacher, TopKConvention::RenormBoth, TopKConvention::TailBucket]
    {
        let s = logits(13).require_grad();
        // The teacher's top-3 of large logits: log-probs 0 and far below.
        let lp = Tensor::<2>::from_data(
            TensorData::new([0.0f32, -1e4, -2e4].repeat(rows), [rows, 3]),
            device,
        )
        .cast(p.float);
        let ids = Tensor::<2, Int>::from_data(
            TensorData::new([0i64, 4, 7].repeat(rows), [rows, 3]),
            device,
        );
        let batch = SparseKdBatch {
            student_logits: s.clone(),
            teacher_topk_ids: ids,
            teacher_topk_logprobs: lp,
            labels: Some(labels()),
            mask: None,
        };
        let out = TopKKlConfig::new(convention).init().unwrap().forward(batch, Reduction::Mean);
        let out = out.unwrap();
        let grad = s.grad(&out.loss.clone().backward()).unwrap();
        finite(&format!("topk_kl {convention:?}"), out.loss, grad);
    }
    let s = logits(14).reshape([2, 3, vocab]).require_grad();
    let tokens = Tensor::<2, Int>::from_ints([[0, 3, 8], [5, 1, 2]], device);
    let keep = Tensor::<2, Int>::from_ints([[1, 1, 1], [1, 1, 0]], device).equal_elem(1);
    let batch = MiniLlmBatch {
        student_logits: s.clone(),
        teacher_logits: logits(15).reshape([2, 3, vocab]),
        tokens,
        mask: keep,
        old_student_logits: None,
        old_logprobs: None,
    };
    let out = MiniLlmConfig::default().init().unwrap().forward(batch).unwrap();
    let grad = s.grad(&out.loss.clone().backward()).unwrap().flatten::<2>(0, 1);
    finite("minillm", out.loss, grad);
}

backend_tests! {
    golden_dense_half => crate::golden_dense_half_inputs;
    golden_dense_mixed => crate::golden_dense_mixed_inputs;
    fused_path_half => crate::half_inputs_take_the_fused_path;
    golden_topk_half => crate::golden_topk_half_inputs;
    golden_minillm_half => crate::golden_minillm_half_inputs;
    chunked_half => crate::chunked_half_inputs;
    chunked_mixed => crate::chunked_mixed_inputs;
    large_finite => crate::large_logits_stay_finite;
}
