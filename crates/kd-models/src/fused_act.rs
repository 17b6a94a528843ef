//! Fused feed-forward activations on flex: GELU (tanh approximation) and SiLU, forward and
//! backward, each one pass over memory.
//!
//! Both are `x · σ(z)` with the logistic `σ(z) = 1/(1 + e^−z)`:
//!
//! ```text
//! gelu_tanh(x) = ½ x (1 + tanh u) = x σ(2u),   u = √(2/π) (x + 0.044715 x³)
//!   d/dx       = σ(2u) + x σ(2u) (1 − σ(2u)) · 2√(2/π) (1 + 3·0.044715 x²)
//! silu(x)      = x σ(x)
//!   d/dx       = σ(x) (1 + x (1 − σ(x)))
//! ```
//!
//! burn composes the tanh GELU from eight element-wise tensor ops (a power, a `tanh`, sums and
//! products), each a pass over memory with a fresh buffer, and its backward from as many again;
//! here the forward is one pass and the backward one pass that recomputes `σ` from the saved
//! input. `e^x` is Cephes' single-precision polynomial (about 1 ulp), so the results agree with
//! the composed path to a few ulps (tested against it and against f64).
//!
//! The loops are plain Rust, compiled three times: for the build's baseline and, chosen at run
//! time, with AVX2+FMA and with AVX-512, where the compiler vectorises them. An autodiff input
//! becomes one burn autodiff op whose backward is the fused pass (the route `kd-losses` uses
//! for its fused losses). Any other backend or dtype takes burn's op-composed activation.

// Without flex only the dispatch's fallback (`None`) is compiled in use.
#![cfg_attr(not(feature = "flex"), allow(dead_code))]

use burn::tensor::{DType, Tensor};

/// Which activation a fused pass computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Act {
    /// `x σ(2u)`, the tanh-approximated GELU.
    GeluTanh,
    /// `x σ(x)`.
    Silu,
}

/// `√(2/π)`.
const SQRT_2_OVER_PI: f32 = 0.797_884_6;
/// The cubic coefficient of the tanh GELU.
const CUBIC: f32 = 0.044_715;

/// `e^x` (Cephes `expf`: Cody–Waite reduction, degree-6 polynomial; inputs clamped to
/// `[−87.3, 88]`, so the result is always finite and positive; NaN stays NaN).
#[inline(always)]
fn exp(x: f32) -> f32 {
    let xc = x.clamp(-87.336_55, 88.0);
    let n = (xc * std::f32::consts::LOG2_E + 0.5).floor();
    let r = n.mul_add(-0.693_359_4, xc);
    let r = n.mul_add(2.121_944_4e-4, r);
    let mut p = 1.987_569_1e-4f32;
    for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5] {
        p = p.mul_add(r, c);
    }
    let y = p.mul_add(r * r, r + 1.0);
    // 2^n through the exponent bits (n + 127 ∈ [1, 254]).
    let pow2 = f32::from_bits(((n as i32 + 127) as u32) << 23);
    if x.is_nan() { x } else { y * pow2 }
}

/// The argument `z` of `σ` and the factor `dz/dx` of the activation.
#[inline(always)]
fn gate(act: Act, x: f32) -> (f32, f32) {
    match act {
        Act::GeluTanh => {
            let x2 = x * x;
            let z = 2.0 * SQRT_2_OVER_PI * x * CUBIC.mul_add(x2, 1.0);
            (z, 2.0 * SQRT_2_OVER_PI * (3.0 * CUBIC).mul_add(x2, 1.0))
        }
        Act::Silu => (x, 1.0),
    }
}

/// `y = x σ(z)` element-wise.
#[inline(always)]
fn forward_loop(act: Act, x: &[f32], y: &mut [f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        let (z, _) = gate(act, x);
        *y = x / (1.0 + exp(-z));
    }
}

/// `dx = dy · (σ + x σ (1 − σ) dz/dx)` element-wise.
#[inline(always)]
fn backward_loop(act: Act, x: &[f32], dy: &[f32], dx: &mut [f32]) {
    for ((dx, &x), &dy) in dx.iter_mut().zip(x).zip(dy) {
        let (z, dz) = gate(act, x);
        let s = 1.0 / (1.0 + exp(-z));
        *dx = dy * (x * s * (1.0 - s)).mul_add(dz, s);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
fn forward_avx512(act: Act, x: &[f32], y: &mut [f32]) {
    forward_loop(act, x, y)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn forward_avx2(act: Act, x: &[f32], y: &mut [f32]) {
    forward_loop(act, x, y)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
fn backward_avx512(act: Act, x: &[f32], dy: &[f32], dx: &mut [f32]) {
    backward_loop(act, x, dy, dx)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn backward_avx2(act: Act, x: &[f32], dy: &[f32], dx: &mut [f32]) {
    backward_loop(act, x, dy, dx)
}

/// The widest instruction set the loops can use here: 2 = AVX-512, 1 = AVX2+FMA, 0 = baseline.
fn level() -> u8 {
    use std::sync::OnceLock;
    static LEVEL: OnceLock<u8> = OnceLock::new();
    *LEVEL.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
            if avx2 && is_x86_feature_detected!("avx512f") {
                return 2;
            }
            if avx2 {
                return 1;
            }
        }
        0
    })
}

/// Elements per parallel chunk.
const CHUNK: usize = 1 << 14;

/// The forward pass over a slice, in parallel chunks, on the widest instruction set.
pub(crate) fn forward_slice(act: Act, x: &[f32], y: &mut [f32]) {
    use rayon::prelude::*;
    let lvl = level();
    y.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(y, x)| match lvl {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512 F, AVX2 and FMA were detected (`level`).
        2 => unsafe { forward_avx512(act, x, y) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2 and FMA were detected (`level`).
        1 => unsafe { forward_avx2(act, x, y) },
        _ => forward_loop(act, x, y),
    });
}

/// The backward pass over a slice, in parallel chunks, on the widest instruction set.
pub(crate) fn backward_slice(act: Act, x: &[f32], dy: &[f32], dx: &mut [f32]) {
    use rayon::prelude::*;
    let lvl = level();
    dx.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).zip(dy.par_chunks(CHUNK)).for_each(
        |((dx, x), dy)| match lvl {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: AVX-512 F, AVX2 and FMA were detected (`level`).
            2 => unsafe { backward_avx512(act, x, dy, dx) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: AVX2 and FMA were detected (`level`).
            1 => unsafe { backward_avx2(act, x, dy, dx) },
            _ => backward_loop(act, x, dy, dx),
        },
    );
}

/// `act(x)` through the fused pass when `x` is an `f32` flex tensor (with or without autodiff),
/// else `None` (the caller composes it).
pub(crate) fn try_fused<const D: usize>(act: Act, x: &Tensor<D>) -> Option<Tensor<D>> {
    if x.dtype() != DType::F32 {
        return None;
    }
    #[cfg(feature = "flex")]
    {
        flex::apply(act, x)
    }
    #[cfg(not(feature = "flex"))]
    {
        let _ = (act, x);
        None
    }
}

#[cfg(feature = "flex")]
mod flex {
    use burn::backend::Flex;
    use burn::backend::flex::FlexTensor;
    use burn::tensor::{DType, Tensor};

    use super::{Act, backward_slice, forward_slice};
    use crate::flex_view::{tensor, values};

    /// `act` of a flex tensor, as a new contiguous flex tensor of the same shape.
    pub(super) fn forward(act: Act, x: &FlexTensor) -> FlexTensor {
        let xs = values(x);
        let mut y = vec![0f32; xs.len()];
        forward_slice(act, &xs, &mut y);
        tensor(y, x.layout().shape().clone())
    }

    /// `dy ⊙ act'(x)`.
    pub(super) fn backward(act: Act, x: &FlexTensor, dy: &FlexTensor) -> FlexTensor {
        let (xs, dys) = (values(x), values(dy));
        let mut dx = vec![0f32; xs.len()];
        backward_slice(act, &xs, &dys, &mut dx);
        tensor(dx, x.layout().shape().clone())
    }

    pub(super) fn apply<const D: usize>(act: Act, x: &Tensor<D>) -> Option<Tensor<D>> {
        if x.is_autodiff() {
            #[cfg(feature = "autodiff")]
            {
                use burn::backend::autodiff::checkpoint::strategy::{
                    BalancedCheckpointing, NoCheckpointing,
                };
                return autodiff::apply::<NoCheckpointing, D>(act, x)
                    .or_else(|| autodiff::apply::<BalancedCheckpointing, D>(act, x));
            }
            #[cfg(not(feature = "autodiff"))]
            return None;
        }
        let prim = x.clone().try_into_primitive::<Flex>().ok()?;
        if prim.dtype() != DType::F32 {
            return None;
        }
        Some(Tensor::from_primitive::<Flex>(forward(act, &prim)))
    }

    #[cfg(feature = "autodiff")]
    mod autodiff {
        use burn::backend::autodiff::Autodiff;
        use burn::backend::autodiff::checkpoint::base::Checkpointer;
        use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
        use burn::backend::autodiff::grads::Gradients;
        use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
        use burn::backend::flex::FlexTensor;
        use burn::backend::{DispatchKindConversion, Flex};
        use burn::tensor::{DType, DispatchTensor, Tensor};

        use super::{Act, backward, forward};

        /// The backward of a fused activation: the saved input, recomputing `σ`.
        #[derive(Debug)]
        struct ActBackward(Act);

        impl Backward<Flex, 1> for ActBackward {
            type State = FlexTensor;

            fn backward(
                self,
                ops: Ops<FlexTensor, 1>,
                grads: &mut Gradients,
                _: &mut Checkpointer,
            ) {
                let x = ops.state;
                let act = self.0;
                unary::<Flex, _>(ops.parents, ops.node, grads, |dy: FlexTensor| {
                    backward(act, &x, &dy)
                });
            }
        }

        /// The fused op on an autodiff flex tensor with checkpointing strategy `C`.
        pub(in super::super) fn apply<C: CheckpointStrategy, const D: usize>(
            act: Act,
            x: &Tensor<D>,
        ) -> Option<Tensor<D>>
        where
            DispatchTensor: DispatchKindConversion<Autodiff<Flex, C>>,
        {
            let ad = x.clone().try_into_primitive::<Autodiff<Flex, C>>().ok()?;
            let input = ad.primitive().clone();
            if input.dtype() != DType::F32 {
                return None;
            }
            let out = forward(act, &input);
            let result = match ActBackward(act).prepare::<C>([ad.node()]).compute_bound().stateful()
            {
                OpsKind::Tracked(prep) => prep.finish(input, out),
                OpsKind::UnTracked(prep) => prep.finish(out),
            };
            Some(Tensor::from_primitive::<Autodiff<Flex, C>>(result))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::activation;
    use burn::tensor::{Device, TensorData};

    fn f64_act(act: Act, x: f64) -> (f64, f64) {
        let (z, dz) = match act {
            Act::GeluTanh => {
                let c = (2.0 / std::f64::consts::PI).sqrt();
                (2.0 * c * (x + 0.044715 * x.powi(3)), 2.0 * c * (1.0 + 3.0 * 0.044715 * x * x))
            }
            Act::Silu => (x, 1.0),
        };
        let s = 1.0 / (1.0 + (-z).exp());
        (x * s, s + x * s * (1.0 - s) * dz)
    }

    fn inputs() -> Vec<f32> {
        // Odd length (vector tails), both signs, tiny to saturated values.
        let mut x: Vec<f32> = (0..1001).map(|i| (i as f32 - 500.0) * 0.023).collect();
        x.extend([1e-30, -1e-30, 0.0, -0.0, 50.0, -50.0, 1e4, -1e4]);
        x
    }

    #[test]
    fn slices_match_f64_on_every_instruction_set() {
        for act in [Act::GeluTanh, Act::Silu] {
            let x = inputs();
            let dy: Vec<f32> = (0..x.len()).map(|i| 1.0 + (i % 7) as f32 * 0.25).collect();
            let (mut y, mut dx) = (vec![0f32; x.len()], vec![0f32; x.len()]);
            // All variants this machine has (the dispatch picks the widest; the others here).
            let mut variants: Vec<(&str, Vec<f32>, Vec<f32>)> = Vec::new();
            forward_slice(act, &x, &mut y);
            backward_slice(act, &x, &dy, &mut dx);
            variants.push(("dispatched", y.clone(), dx.clone()));
            forward_loop(act, &x, &mut y);
            backward_loop(act, &x, &dy, &mut dx);
            variants.push(("baseline", y.clone(), dx.clone()));
            #[cfg(target_arch = "x86_64")]
            if level() >= 1 {
                // SAFETY: AVX2 and FMA were detected.
                unsafe {
                    forward_avx2(act, &x, &mut y);
                    backward_avx2(act, &x, &dy, &mut dx);
                }
                variants.push(("avx2", y.clone(), dx.clone()));
            }
            for (name, y, dx) in variants {
                for i in 0..x.len() {
                    let (want_y, want_d) = f64_act(act, x[i] as f64);
                    let want_d = want_d * dy[i] as f64;
                    let ey = (y[i] as f64 - want_y).abs() / (1e-30 + want_y.abs()).max(1e-6);
                    // Near its zero the derivative is a difference of O(0.1) terms: relative to 0.05.
                    let ed = (dx[i] as f64 - want_d).abs() / want_d.abs().max(0.05);
                    assert!(ey < 2e-6, "{name} {act:?} y({}) = {} vs {want_y}", x[i], y[i]);
                    assert!(ed < 2e-6, "{name} {act:?} y'({}) = {} vs {want_d}", x[i], dx[i]);
                }
            }
        }
    }

    #[test]
    fn nan_propagates() {
        let x = [f32::NAN, 1.0];
        let mut y = [0f32; 2];
        forward_loop(Act::GeluTanh, &x, &mut y);
        assert!(y[0].is_nan() && y[1].is_finite());
    }

    #[test]
    fn fused_tensors_match_the_composed_activation_value_and_gradient() {
        let device = Device::flex().autodiff();
        let vals: Vec<f32> = (0..6 * 37).map(|i| ((i * 7919) % 211) as f32 / 20.0 - 5.0).collect();
        for act in [Act::GeluTanh, Act::Silu] {
            let composed = |x: Tensor<2>| match act {
                Act::GeluTanh => activation::gelu_approximate(x),
                Act::Silu => activation::silu(x),
            };
            let x1 = Tensor::<2>::from_data(TensorData::new(vals.clone(), [6, 37]), &device)
                .require_grad();
            let x2 = Tensor::<2>::from_data(TensorData::new(vals.clone(), [6, 37]), &device)
                .require_grad();
            let w = Tensor::<2>::from_data(
                TensorData::new((0..6 * 37).map(|i| (i % 5) as f32 - 2.0).collect(), [6, 37]),
                &device,
            );
            let y1 = try_fused(act, &x1).expect("flex f32 takes the fused path");
            let y2 = composed(x2.clone());
            let g1 = y1.clone().mul(w.clone()).sum().backward();
            let g2 = y2.clone().mul(w).sum().backward();
            let close = |a: Vec<f32>, b: Vec<f32>, what: &str| {
                for (a, b) in a.iter().zip(&b) {
                    assert!((a - b).abs() <= 2e-6 * (1.0 + b.abs()), "{act:?} {what}: {a} vs {b}");
                }
            };
            let v = |t: Tensor<2>| t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
            close(v(y1.inner()), v(y2.inner()), "value");
            close(v(x1.grad(&g1).unwrap()), v(x2.grad(&g2).unwrap()), "gradient");
            // Without autodiff (a teacher's forward): the same values.
            let plain =
                Tensor::<2>::from_data(TensorData::new(vals.clone(), [6, 37]), &Device::flex());
            let y3 = try_fused(act, &plain).expect("flex f32");
            close(v(y3), v(composed(plain)), "inference value");
        }
    }
}
